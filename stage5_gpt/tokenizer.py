"""Byte-level BPE, GPT-2's tokeniser, written from scratch: training, encode/decode, special tokens, JSON files.

    python stage5_gpt/tokenizer.py --dataset wikitext2 --vocab-size 8000   # -> runs/stage5_gpt/wikitext2_bpe8000.json
    python stage5_gpt/tokenizer.py --input notes.txt more.txt.gz --vocab-size 2000 --out my_bpe.json
    python stage5_gpt/tokenizer.py --dataset wikitext2 --compare-hf        # ids checked against HF `tokenizers`

Each run also writes its figures (training time, bytes per token, the comparison) beside the tokenizer, in
<out>.result.json; the reference run's figures are published with `python scripts/publish.py <that file>`.

Why bytes. Text is turned into its UTF-8 bytes, so the starting alphabet is the 256 byte values: any string at all
(accents, emoji, Chinese, a stray control character) is a sequence of known symbols, and there is never an unknown
token. Byte pair encoding (Sennrich et al. 2016, on bytes as in GPT-2) then learns merges: the most frequent pair of
neighbouring symbols becomes a new symbol, again and again, until the vocabulary has the size asked for. Frequent words
end up as one token, rare words as a few pieces, and anything never seen as single bytes.

Why a regex first. Text is cut into pre-tokens by GPT-2's pattern (a word with the space before it, a number, a run of
punctuation, whitespace), and merges are learned and applied inside a pre-token only. A merge never crosses a word or
punctuation boundary, so "dog." and "dog!" share the token " dog" instead of each wasting a token of its own, and every
pre-token is encoded on its own: encoding a corpus means encoding each distinct pre-token once (a cache).

Why the odd characters in the files. GPT-2 writes tokens as strings, one printable character per byte (bytes_to_unicode:
a space is "Ġ", a newline "Ċ"), so the vocabulary and the merges are readable JSON that Hugging Face `tokenizers`
loads as they are; the tests check that it then gives identical ids.

How training stays fast. A full recount of every pair after every merge costs a pass over the corpus per merge.
Instead we count each distinct pre-token once, with its frequency, and keep (1) the count of every neighbouring pair,
weighted by frequency, and (2) an index pair -> the pre-tokens that contain it. A merge rewrites only the pre-tokens
that contain the merged pair and adjusts the counts of the pairs they lose and gain. A heap finds the most frequent
pair; an entry whose count has changed since it was pushed is stale and skipped when it comes up (lazy deletion).

Ids: 0..255 are the single bytes (id = byte value), then one id per new token in the order training found it, then the
special tokens (<|endoftext|> separates documents; it is never produced from ordinary text unless encode allows it).
"""
from __future__ import annotations

import argparse
import gzip
import heapq
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

if __package__ in (None, ""):  # run as `python stage5_gpt/tokenizer.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import regex  # the third-party `regex` module: unlike `re`, it knows \p{L} (any letter) and \p{N} (any digit)
from tqdm import tqdm

from scripts.common import (UserError, command_line, git_commit, portable, positive_int, reference_command,
                            reference_run_name, resolve_data_dir, resolved_config, run_cli, write_json)
from stage5_gpt.corpus import load_text
from stage5_gpt.reference_runs import REFERENCE_RUNS

# GPT-2's pre-tokeniser: English contractions, an optional space + letters, an optional space + digits, an optional
# space + other symbols, whitespace not followed by a non-space (so " dog" keeps its space), any other whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
FORMAT, VERSION = "my_llm-byte-bpe", 1


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character. The 188 printable bytes stand for themselves; the other 68 (space,
    newline, control codes, ...) become the characters 256, 257, ... so no token string holds whitespace."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def merge_pair(ids: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every (a, b) in `ids` by new_id, left to right ("aaa" with (a, a) -> ["aa", "a"])."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """vocab (token string -> id), merges (pairs of token strings, in the order learned) and special tokens."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special_tokens: dict[str, int],
                 pattern: str = GPT2_PATTERN):
        self.vocab, self.merges, self.special_tokens = dict(vocab), list(merges), dict(special_tokens)
        self.pattern = pattern
        self.id_to_str = {i: t for t, i in {**self.vocab, **self.special_tokens}.items()}
        if len(self.id_to_str) != len(self.vocab) + len(self.special_tokens):
            raise ValueError("two tokens share an id")
        missing = [c for c in CHAR_TO_BYTE if c not in self.vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} of the 256 single bytes")
        self.byte_ids = [self.vocab[BYTE_TO_CHAR[b]] for b in range(256)]  # byte value -> its id
        self.ranks = {}  # (left id, right id) -> (rank, id of the merged token); rank 0 = learned first
        for rank, (a, b) in enumerate(self.merges):
            if a + b not in self.vocab or a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge {a!r} + {b!r} uses a token that is not in the vocabulary")
            self.ranks[(self.vocab[a], self.vocab[b])] = (rank, self.vocab[a + b])  # a pair twice: the last wins (HF)
        # id -> bytes, for decode: a special token is its own text, any other token the bytes its characters stand for
        self.id_bytes = {i: s.encode("utf-8") if s in self.special_tokens else bytes(CHAR_TO_BYTE[c] for c in s)
                         for i, s in self.id_to_str.items()}
        self.regex = regex.compile(pattern)
        self.cache: dict[str, list[int]] = {}  # pre-token -> ids (WikiText-2 train has 33,010 distinct pre-tokens)

    # ------------------------------------------------------------------------- training

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (EOT,),
              pattern: str = GPT2_PATTERN, progress: bool = True) -> "BPETokenizer":
        """Learn merges until the vocabulary (256 bytes + new tokens + special tokens) has `vocab_size` entries.

        Fewer if the texts run out of pairs. Ties between equally frequent pairs go to the pair with the smaller ids
        (older tokens first), so training is deterministic.
        """
        specials = list(dict.fromkeys(special_tokens))  # unique, order kept
        if not all(isinstance(s, str) and s for s in specials):
            raise UserError(f"special tokens must be non-empty strings, got {specials}")
        if vocab_size < 256 + len(specials):
            raise UserError(f"vocab size {vocab_size} is too small: it needs at least 256 (one per byte) + "
                            f"{len(specials)} special token(s) = {256 + len(specials)}")
        split = regex.compile(pattern)
        word_counts = Counter()  # distinct pre-token -> how often it occurs
        for text in [texts] if isinstance(texts, str) else texts:
            for piece in split_on(text, specials)[::2]:  # special tokens never take part in merges
                word_counts.update(split.findall(piece))
        words = [list(w.encode("utf-8")) for w in word_counts]  # each pre-token as a list of ids (bytes at first)
        freqs = list(word_counts.values())

        pair_counts = defaultdict(int)  # (a, b) -> occurrences in the corpus
        where = defaultdict(set)        # (a, b) -> indices of the words that contain it
        for w, word in enumerate(words):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freqs[w]
                where[pair].add(w)
        heap = [(-count, pair) for pair, count in pair_counts.items()]  # max-heap by count, then smallest pair
        heapq.heapify(heap)

        tokens = [BYTE_TO_CHAR[b] for b in range(256)]  # id -> token string
        token_ids = {t: i for i, t in enumerate(tokens)}
        merges = []
        target = vocab_size - len(specials)
        bar = tqdm(total=target - 256, desc="BPE merges", unit="merge", disable=None if progress else True)
        while len(tokens) < target and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair) != -neg_count:
                continue  # stale: this pair's count changed after the entry was pushed (a fresher entry exists)
            a, b = pair
            merges.append((tokens[a], tokens[b]))
            new_id = token_ids.get(tokens[a] + tokens[b])
            if new_id is None:  # (the same string can come from two different merges; it keeps one id)
                new_id = len(tokens)
                tokens.append(tokens[a] + tokens[b])
                token_ids[tokens[-1]] = new_id
                bar.update()
            changes = defaultdict(int)  # pair -> change of its count
            for w in where.pop(pair):
                old = words[w]
                new = words[w] = merge_pair(old, a, b, new_id)
                old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
                for p in old_pairs:
                    changes[p] -= freqs[w]
                for p in new_pairs:
                    changes[p] += freqs[w]
                for p in set(new_pairs) - set(old_pairs):
                    where[p].add(w)
                for p in set(old_pairs) - set(new_pairs) - {pair}:
                    where[p].discard(w)
            for p, change in changes.items():
                if change == 0:
                    continue
                count = pair_counts[p] + change
                if count > 0:
                    pair_counts[p] = count
                    heapq.heappush(heap, (-count, p))
                else:  # the pair is gone (the merged pair itself always ends here)
                    del pair_counts[p]
        bar.close()
        vocab = {t: i for i, t in enumerate(tokens)}
        return cls(vocab, merges, {s: len(tokens) + k for k, s in enumerate(specials)}, pattern)

    # ------------------------------------------------------------------------- encode / decode

    def pre_tokenize(self, text: str) -> list[str]:
        return self.regex.findall(text)  # the pieces always join back to `text`: the last two branches take any rest

    def encode(self, text: str, allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Text -> ids. Special tokens in the text become their single id only if allowed ("all" or a set of them);
        otherwise they are plain text, so a document that happens to contain "<|endoftext|>" cannot end itself early."""
        if isinstance(allowed_special, str):  # "all", or the name of one special token
            allowed_special = self.special_tokens if allowed_special == "all" else [allowed_special]
        allowed = list(allowed_special)
        unknown = [s for s in allowed if s not in self.special_tokens]
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {unknown} (it has {list(self.special_tokens)})")
        ids = []
        for k, piece in enumerate(split_on(text, allowed)):
            if k % 2:  # odd pieces are the special tokens themselves
                ids.append(self.special_tokens[piece])
                continue
            for word in self.regex.findall(piece):
                cached = self.cache.get(word)
                if cached is None:
                    cached = self.cache[word] = self.bpe(word)
                ids.extend(cached)
        return ids

    def bpe(self, word: str) -> list[int]:
        """One pre-token -> ids: start from its bytes and apply the lowest-ranked (earliest learned) merge among the
        neighbouring pairs, the leftmost one if it occurs twice, until no pair has a merge. This is exactly the order of
        Hugging Face's BPE model, which is why the ids match."""
        ids = [self.byte_ids[b] for b in word.encode("utf-8")]
        while len(ids) > 1:
            candidates = [(self.ranks[p][0], i) for i, p in enumerate(zip(ids, ids[1:])) if p in self.ranks]
            if not candidates:
                break
            _, i = min(candidates)  # lowest rank, then leftmost
            ids[i:i + 2] = [self.ranks[(ids[i], ids[i + 1])][1]]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Bytes that do not form valid UTF-8 (a token stream cut inside a character) show as "�"."""
        try:
            data = b"".join(self.id_bytes[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"unknown token id {e.args[0]} (this tokenizer has {len(self)} tokens)") from None
        return data.decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return len(self.id_to_str)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def token_to_id(self, token: str) -> int:
        return self.special_tokens[token] if token in self.special_tokens else self.vocab[token]

    def id_to_token(self, i: int) -> str:
        return self.id_to_str[i]

    # ------------------------------------------------------------------------- files, and the Hugging Face twin

    def save(self, path: str | Path) -> None:
        """JSON, never pickle: readable, and loadable by other tools (see to_hf)."""
        data = {"format": FORMAT, "version": VERSION, "pattern": self.pattern, "special_tokens": self.special_tokens,
                "vocab": self.vocab, "merges": [list(m) for m in self.merges]}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls, data, path: str | Path = "<dict>") -> "BPETokenizer":
        """The tokenizer a saved file holds, from its parsed JSON (`path` only names it in errors)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise UserError(f"{path} is not a {FORMAT} version {VERSION} tokenizer file")
        try:
            return cls(data["vocab"], [tuple(m) for m in data["merges"]], data["special_tokens"], data["pattern"])
        except (KeyError, TypeError, ValueError, regex.error) as e:
            raise UserError(f"tokenizer file {path} is corrupt: {type(e).__name__}: {e}") from None

    def to_hf(self):
        """The same tokeniser as a Hugging Face `tokenizers.Tokenizer` (BPE model + byte-level pre-tokeniser and
        decoder), built from our vocabulary and merges alone: the reference the tests compare ids with."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # optional: only this method needs it
        if self.pattern != GPT2_PATTERN:
            raise ValueError("Hugging Face's byte-level pre-tokeniser only knows GPT-2's pattern")
        hf = Tokenizer(models.BPE(vocab={**self.vocab, **self.special_tokens}, merges=self.merges))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens(list(self.special_tokens))  # they are in the vocabulary, so they keep our ids
        return hf


def read_json(path: str | Path):
    """A tokenizer file's parsed JSON; a missing or unreadable file is a one-line UserError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"tokenizer file not found: {path} (stage5_gpt/train.py writes one next to each checkpoint, "
                        f"stage5_gpt/tokenizer.py on request)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read tokenizer {path}: {type(e).__name__}: {e}") from None


def split_on(text: str, specials: list[str]) -> list[str]:
    """[text, special, text, special, ..., text]: the even pieces are ordinary text (maybe empty)."""
    if not specials:
        return [text]
    alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))  # longest match first
    return regex.split(f"({alternatives})", text)


# ----------------------------------------------------------------------------- command line

DATASETS = {"wikitext2": "test", "tiny_shakespeare": "val"}  # data set -> the split the CLI reports on


def read_text(path: Path) -> str:
    """A UTF-8 text file, gzip-compressed if its name ends in .gz; line endings are kept as they are."""
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8", newline="") as f:
            return f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (expected UTF-8 text, or gzip of it)") from None


def dataset_texts(name: str, data_dir: Path) -> tuple[str, str]:
    """(training text, held-out text) of a data set, read by corpus.py (which downloads it when missing)."""
    return load_text(name, data_dir, "train"), load_text(name, data_dir, DATASETS[name])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer and save it as JSON.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="text files to train on (plain UTF-8, or .gz)")
    source.add_argument("--dataset", choices=list(DATASETS), help="train on this data set's training split")
    p.add_argument("--data-dir", default=None, help="folder with the data sets (default: $MY_LLM_DATA, "
                                                     "else ~/.cache/my_llm/data)")
    p.add_argument("--vocab-size", type=positive_int, default=8000,
                   help="256 bytes + new tokens + special tokens (default: 8000)")
    p.add_argument("--special-tokens", nargs="*", default=[EOT], help=f"tokens with an id of their own (default: {EOT})")
    p.add_argument("--out", default=None, help="JSON file to write (default: runs/stage5_gpt/<data>_bpe<size>.json)")
    p.add_argument("--compare-hf", action="store_true",
                   help="also encode the held-out text with Hugging Face `tokenizers` and check the ids are identical")
    p.add_argument("--json", default=None, help="where the figures (training time, bytes per token, the comparison) go "
                                                "(default: <out>.result.json; publish the reference run's with "
                                                "`python scripts/publish.py <that file>`)")
    return p.parse_args(argv)


def default_out(args: argparse.Namespace) -> Path:
    return Path(args.out or f"runs/stage5_gpt/{args.dataset or 'custom'}_bpe{args.vocab_size}.json")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.input:
        texts = [read_text(Path(p)) for p in args.input]
        held_out, held_out_name = "".join(texts), "the training text"
    else:
        train_text, held_out = dataset_texts(args.dataset, resolve_data_dir(args.data_dir))
        texts, held_out_name = [train_text], f"{args.dataset} {DATASETS[args.dataset]}"
    out = default_out(args)

    start = time.perf_counter()
    tok = BPETokenizer.train(texts, args.vocab_size, args.special_tokens)
    seconds = train_seconds = time.perf_counter() - start
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"trained {len(tok)} tokens ({len(tok.merges)} merges) on {mb:.1f} MB in {seconds:.1f} s "
          f"({len(tok.merges) / max(seconds, 1e-9):.0f} merges/s)")
    tok.save(out)
    print(f"wrote {out}")

    start = time.perf_counter()
    ids = tok.encode(held_out)
    seconds = time.perf_counter() - start
    n_bytes = len(held_out.encode("utf-8"))
    print(f"{held_out_name}: {n_bytes:,} bytes -> {len(ids):,} tokens = {n_bytes / max(len(ids), 1):.2f} bytes/token "
          f"(encoded in {seconds:.1f} s, {n_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    if tok.decode(ids) != held_out:
        raise UserError("decode(encode(text)) differs from the text: this is a bug, please report it")
    example = next((line for line in held_out.splitlines() if len(line.strip()) > 30), held_out)[:100]
    print(f"example: {example!r}\n     -> {[tok.decode([i]) for i in tok.encode(example)]}")
    if args.compare_hf:
        try:
            hf = tok.to_hf()
        except ImportError:
            raise UserError("--compare-hf needs Hugging Face tokenizers: pip install tokenizers") from None
        same = hf.encode(held_out).ids == ids
        print(f"ids identical to Hugging Face tokenizers on {held_out_name}: {'yes' if same else 'NO'}")
        if not same:
            raise UserError("Hugging Face tokenizers gives different ids: this is a bug, please report it")
    # a side file beside the tokenizer: no headline metric, so not a row of the results table
    run = reference_run_name(REFERENCE_RUNS, "stage5_gpt/tokenizer.py", parse_args, args, ignore=("out",))
    figures = {"stage": "stage5_gpt"} | ({"run": run} if run else {})
    figures |= {"data": args.dataset or [portable(p) for p in args.input], "vocab_size": len(tok),
                "merges": len(tok.merges), "train_mb": round(mb, 2), "train_seconds": round(train_seconds, 1),
                "tokenizer": portable(str(out)), "held_out": held_out_name,
                "held_out_bytes_per_token": round(n_bytes / max(len(ids), 1), 3), "held_out_tokens": len(ids),
                "encode_mb_per_second": round(n_bytes / 1e6 / max(seconds, 1e-9), 2), "round_trip": True,
                "identical_to_hf": same if args.compare_hf else None,
                "config": resolved_config(args, ignore=("out", "input")),
                "command": portable(reference_command(REFERENCE_RUNS[run]) if run
                                    else command_line("stage5_gpt/tokenizer.py", argv)),
                "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = Path(args.json) if args.json else out.with_suffix(".result.json")
    write_json(path, figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
