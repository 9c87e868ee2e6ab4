"""Stage 5 data: a corpus becomes one long array of token ids on disk, and batches are random windows of it.

    text file (or a download) -> tokenizer (characters, or our byte-level BPE) -> ids -> {train,val,test}.bin
    training:   random windows  x = ids[i : i+T],  y = ids[i+1 : i+T+1]                  (B, T) each
    evaluation: every token of a split once, in consecutive windows                       -> exact loss, perplexity

The ids are written once as raw uint16 files and read back with `np.memmap`: the operating system pages in only the
windows a batch touches, so the same code trains on a corpus larger than memory (nanoGPT does the same with
OpenWebText's 9B tokens).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from scripts.common import UserError, atomic_write, atomic_write_text
from stage5_gpt.corpus import DATASETS, dataset_info, load_text  # noqa: F401  (DATASETS: re-exported for callers)
from stage5_gpt.chat_template import SPECIAL_TOKENS
from stage5_gpt.tokenizer import EOT, BPETokenizer, read_json

def count_words(text: str) -> int:
    """Words as Stage 2 counts them: whitespace-separated tokens plus one <eos> per line (WikiText's convention).

    A per-word perplexity divides the total loss over all BPE tokens by this count, so it does not depend on how
    finely a tokenizer cuts the text, and it compares with Stage 2's word-level models.
    """
    return sum(len(line.split()) + 1 for line in text.splitlines())


# ----------------------------------------------------------------------------- character tokenizer

class CharTokenizer:
    """One id per character of the training text, sorted as nanoGPT's (65 for Tiny Shakespeare); same interface as
    BPETokenizer, so the rest of the stage does not care which one it holds."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def encode(self, text: str, allowed_special=()) -> list[int]:
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise UserError(f"{len(missing)} character(s) not in the vocabulary: {shown}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False), encoding="utf-8")


def load_tokenizer(path: str | Path):
    """A CharTokenizer or a BPETokenizer, whichever the JSON file holds."""
    obj = read_json(path)
    if isinstance(obj, dict) and obj.get("type") == "char":
        return CharTokenizer(obj["chars"])
    return BPETokenizer.from_dict(obj, path)


def tokenizer_fingerprint(path: str | Path) -> str:
    """A short hash of the tokenizer file: a checkpoint keeps it, so a tokenizer from another run is caught."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- ids on disk

def prepare(name: str, data_dir: str | Path, out_dir: str | Path, vocab_size: int, log=print,
            tokenizer_file: str | Path | None = None, max_chars: int | None = None) -> dict:
    """Tokenize every split once into <out_dir>/<split>.bin (uint16) and describe them in <out_dir>/data.json.

    BPE is trained on the training split only (or read from `tokenizer_file`); characters come from every split. Each split starts with
    <|endoftext|> when the tokenizer has it, so the first real token is predicted too. A second call finds the files
    and reuses them. `max_chars` keeps the first characters of each split (smoke runs).
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / "data.json"
    key = {"dataset": name, "vocab_size": vocab_size, "tokenizer_file": str(tokenizer_file or ""), "max_chars": max_chars}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and all((out_dir / f"{s}.bin").is_file() for s in meta["splits"]):
            return meta
    info = dataset_info(name)
    texts = {s: load_text(name, data_dir, s) for s in info["splits"]}
    if max_chars:
        texts = {s: t[:max_chars] for s, t in texts.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_file:
        tok = load_tokenizer(tokenizer_file)
    elif info["tokenizer"] == "char":  # nanoGPT's character set: the whole file's (65 characters), not train's only
        tok = CharTokenizer.train("".join(texts.values()))
    else:
        specials = SPECIAL_TOKENS if info.get("chat") else (EOT,)  # a corpus for chat models: the template's too
        log(f"training a byte-level BPE tokenizer ({vocab_size:,} tokens) on {name} train ...")
        tok = BPETokenizer.train(texts["train"], vocab_size, specials)
    tok.save(out_dir / "tokenizer.json")
    if len(tok) > 2 ** 16:
        raise UserError(f"vocabulary of {len(tok):,} does not fit the uint16 token files (at most 65,536)")
    meta = {"key": key, "dataset": name, "splits": info["splits"], "vocab_size": len(tok),
            "tokenizer": "char" if isinstance(tok, CharTokenizer) else "bpe",
            "fingerprint": tokenizer_fingerprint(out_dir / "tokenizer.json"), "tokens": {}, "chars": {}, "words": {}}
    for split, text in texts.items():
        ids = np.array(encode_split(tok, text, documents=info.get("documents", False)), dtype=np.uint16)
        atomic_write(out_dir / f"{split}.bin", lambda f, ids=ids: f.write(ids.tobytes()))
        meta["tokens"][split], meta["chars"][split], meta["words"][split] = len(ids), len(text), count_words(text)
        log(f"{name} {split}: {len(text):,} characters -> {len(ids):,} tokens "
            f"({len(text.encode('utf-8')) / max(len(ids), 1):.2f} bytes per token)")
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return meta


def encode_split(tok, text: str, documents: bool = False) -> list[int]:
    """A whole split as ids, led by <|endoftext|> when the tokenizer has it (so its first real token is predicted).
    A corpus of documents (course_mix) separates them with <|endoftext|> (corpus.DOC_SEP), which becomes its id."""
    bos = [tok.token_to_id(EOT)] if isinstance(tok, BPETokenizer) else []
    return bos + (tok.encode(text, allowed_special=EOT) if documents else tok.encode(text))


def load_split(out_dir: str | Path, split: str) -> np.memmap:
    """The ids of one split, (N,) uint16, mapped from disk rather than read into memory."""
    path = Path(out_dir) / f"{split}.bin"
    if not path.is_file():
        raise UserError(f"token file not found: {path} (train.py writes it when it prepares the data)")
    return np.memmap(path, dtype=np.uint16, mode="r")


# ----------------------------------------------------------------------------- batches

def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
              rank: int = 0, world_size: int = 1):
    """Random windows for one step: x (b, T) and y (b, T) = x shifted by one token.

    The whole batch of `batch_size` windows is drawn from one generator that every process seeds alike, and process
    `rank` keeps its own slice of it. Two processes therefore see exactly the windows one process would see in the
    same step, which is what makes distributed training reproduce single-process losses.
    """
    if len(data) <= block_size + 1:
        raise UserError(f"the split has {len(data):,} tokens, too few for windows of {block_size} (+1)")
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)  # (B,)
    per_rank = batch_size // world_size
    starts = starts[rank * per_rank:(rank + 1) * per_rank]                                      # (b,)
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in starts.tolist()])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in starts.tolist()])
    return x, y  # (b, T), (b, T)


def eval_windows(data: np.ndarray, block_size: int, batch_size: int, every: int = 1):
    """Consecutive windows that predict every token of the split after the first exactly once.

    Yields (x, y) batches of shape (b, T); the last window may be shorter and comes alone. Each token sees the context
    from the start of its window (on average T/2 tokens), which is also what nanoGPT's random evaluation windows give.
    every > 1 keeps one window in `every`, spread over the whole split (a sample of a corpus too large to score whole).
    """
    n = len(data) - 1  # targets to predict
    starts = list(range(0, n, block_size))
    full = [s for s in starts[::every] if s + block_size <= n]
    if every > 1:
        starts = full   # a sample: no short remainder
    for i in range(0, len(full), batch_size):
        chunk = full[i:i + batch_size]
        x = torch.stack([torch.from_numpy(data[s:s + block_size].astype(np.int64)) for s in chunk])
        y = torch.stack([torch.from_numpy(data[s + 1:s + 1 + block_size].astype(np.int64)) for s in chunk])
        yield x, y
    if len(full) < len(starts):  # the remainder
        s = starts[-1]
        yield (torch.from_numpy(data[s:n].astype(np.int64))[None],
               torch.from_numpy(data[s + 1:n + 1].astype(np.int64))[None])


# ----------------------------------------------------------------------------- SST-2, for fine-tuning

SST2 = {"folder": "glue/sst2", "files": {"train": "train.tsv.gz", "dev": "dev.tsv.gz"},
        "hub": ("nyu-mll/glue", "sst2"), "hub_splits": {"train": "train", "dev": "validation"}}


def load_sst2(data_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """SST-2 sentences and labels (0 negative, 1 positive) of `train` or `dev`, downloaded first when missing.

    The GLUE files are TSV with a header `sentence<TAB>label`; sentences hold bare quotes, so CSV quoting must be off.
    """
    if split not in SST2["files"]:
        raise UserError(f"SST-2 has no {split!r} split here; it has: {', '.join(SST2['files'])}")
    folder = Path(data_dir) / SST2["folder"]
    path = folder / SST2["files"][split]
    if not path.is_file():
        download_sst2(folder)
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]
    except (OSError, EOFError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (expected a gzipped TSV with the header "
                        f"sentence<TAB>label; see {folder / 'SOURCE.md'})") from None


def download_sst2(folder: Path) -> None:
    hub_id, config = SST2["hub"]
    print(f"SST-2 not found in {folder}; downloading {hub_id} ({config}) from the Hugging Face hub ...", file=sys.stderr)
    try:
        import datasets
        datasets.logging.set_verbosity_error()
        hub = datasets.load_dataset(hub_id, config)
    except Exception as e:  # no internet, hub down, datasets missing: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"SST-2 not found in {folder} (expected {', '.join(SST2['files'].values())}), and downloading "
                        f"{hub_id} failed ({reason}). Set --data-dir or MY_LLM_DATA, or run with internet access.") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, hub_split in SST2["hub_splits"].items():
            rows = "".join(f"{r['sentence']}\t{int(r['label'])}\n" for r in hub[hub_split])
            atomic_write(folder / SST2["files"][split],
                         lambda f, rows=rows: f.write(gzip.compress(("sentence\tlabel\n" + rows).encode("utf-8"))))
    except OSError as e:
        raise UserError(f"downloaded {hub_id} but cannot write it to {folder}: {e.strerror or e}") from None


def pad_id_of(tok) -> int:
    """The id that pads a batch of sentences: <|endoftext|> for BPE, 0 for characters (never read: see make_batch)."""
    return 0 if isinstance(tok, CharTokenizer) else tok.token_to_id(EOT)


def encode_sentences(tok, sentences: list[str], max_len: int) -> list[list[int]]:
    """Each sentence as ids, cut to its first max_len tokens; characters a char tokenizer lacks are dropped."""
    if isinstance(tok, CharTokenizer):
        return [tok.encode("".join(c for c in s if c in tok.stoi))[:max_len] or [0] for s in sentences]
    return [tok.encode(s)[:max_len] or [tok.token_to_id(EOT)] for s in sentences]


def sentence_split(texts: list[str], n_val: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train rows, val rows) for SST-2's train set, which holds every phrase of its sentences. Validation takes n_val
    whole sentences (rows no other row contains, in a random order); train keeps every other row except the phrases
    inside a validation sentence, whose labels would give its answer away."""
    words = [t.split() for t in texts]
    padded = [f" {' '.join(w)} " for w in words]  # spaces around: "art" is not inside "party"
    having: dict[str, list[int]] = {}             # word -> the rows that hold it
    for i, w in enumerate(words):
        for word in set(w):
            having.setdefault(word, []).append(i)

    def whole(i: int) -> bool:  # only the rows with its rarest word can contain row i
        rarest = min(set(words[i]), key=lambda word: len(having[word]), default=None)
        return rarest is not None and not any(j != i and padded[i] in padded[j] for j in having[rarest])

    order = list(range(len(texts)))
    rng.shuffle(order)
    val = []
    for i in order:
        if len(val) == n_val:
            break
        if whole(i):
            val.append(i)
    if len(val) < n_val:
        raise UserError(f"--val-size asks for {n_val} whole sentences, but the training set has only {len(val)}")
    inside = {" ".join(words[i][a:b]) for i in val for a in range(len(words[i])) for b in range(a + 1, len(words[i]) + 1)}
    held = set(val)
    return [i for i in range(len(texts)) if i not in held and padded[i][1:-1] not in inside], val


def make_batch(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences of ids, right-padded with pad_id into one tensor, and their lengths (the classifier reads the last
    real token of each)."""
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids.to(device), lengths.to(device)  # (B, T), (B,)


def length_batches(seqs: list[list[int]], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """One epoch's batches, each of sentences of similar length. make_batch pads a batch to its longest sentence, and
    SST-2 mixes 3-token phrases with 60-token sentences, so random batches would spend much of their time on padding.
    Shuffle, sort each pool of `pool` batches by length, cut it into batches, shuffle the batches: every sentence once
    per epoch, a new order each epoch, and the same rng state gives the same batches (what an exact --resume needs)."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    size = pool * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: len(seqs[i]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
