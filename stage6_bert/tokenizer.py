"""WordPiece, BERT's tokeniser, written from scratch: normalisation, pre-tokenisation, training, encode/decode, JSON.

    python stage6_bert/tokenizer.py train --vocab-size 8000                 # WikiText-2 train -> runs/stage6_bert/...
    python stage6_bert/tokenizer.py train --vocab-size 8000 --imdb-unsup 20000 --out tok.json --vocab-txt vocab.txt
    python stage6_bert/tokenizer.py train --corpus notes.txt more.txt.gz --vocab-size 2000 --out my_wp.json
    python stage6_bert/tokenizer.py encode --tokenizer tok.json "The unaffable fox." --pair "A second sentence."

Why normalise first. BERT (uncased) sees text through a fixed cleaning step, the same as Hugging Face's BertNormalizer:
control characters, "\\x00" and "\\ufffd" are dropped and every kind of whitespace becomes " "; each Chinese character
gets a space on both sides (so it is a word of its own); accents are stripped (NFD splits "é" into "e" + a combining
accent, category Mn, which is dropped) and the text is lower-cased: "Héllo\\tWÖRLD" -> "hello world".

Why split on punctuation. The normalised text is cut at spaces and around every punctuation character (Unicode category
P*, plus the ASCII symbols $ + < = > ^ ` | ~, as BERT's _is_punctuation): "don't!" -> ["don", "'", "t", "!"]. Words are
then encoded one by one, so a token never spans two words and each distinct word is encoded once (a cache).

Why WordPiece. A word is cut greedily into the longest vocabulary entries, left to right; a piece that continues a word
is written with "##": "unaffable" -> ["un", "##aff", "##able"]. A word with a piece that matches nothing, or longer than
100 characters, becomes one [UNK]. BERT never sees bytes: what is not in the alphabet is unknown.

How the vocabulary is learned, honestly. Schuster & Nakajima (2012) add the pair of pieces that most raises the
likelihood of the training text. Google never released BERT's trainer; Hugging Face's WordPieceTrainer is byte pair
encoding with a "##" prefix: start from single characters and repeatedly merge the most frequent neighbouring pair. We
do exactly that (frequency, not likelihood); only the greedy longest-match encoding makes it WordPiece. The alphabet is
the `limit_alphabet` most frequent characters, as "c", and as "##c" if they occur inside a word; words with any other
character are left out of training (they encode to [UNK] anyway). Merging stops at `vocab_size`, or when the best pair
occurs fewer than `min_frequency` times. It is fast for the same reason as Stage 5's BPE: each distinct word is stored
once with its count, pair counts change only in the words a merge touches, and a heap with lazy deletion finds the most
frequent pair (ties: the pair of smaller ids, so training is deterministic).

Ids: a vocabulary trained here is 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK]; then the alphabet ("c" forms, then
"##c" forms, by code point); then one token per merge, in the order learned. The vocabulary is a list of strings and an
id is a position in it.

Real vocabularies. The same class reads BERT's own files: a vocab.txt (one token per line, line number = id) or a
Hugging Face tokenizer.json (its WordPiece vocabulary and BertNormalizer settings), see `load`. There the special
tokens sit elsewhere: bert-base-uncased has [PAD] 0, then [unused0] .. [unused98], then [UNK] 100, [CLS] 101, [SEP] 102,
[MASK] 103. So the special ids are read from the vocabulary, never assumed: `tok.pad_id`, `tok.unk_id`, `tok.cls_id`,
`tok.sep_id`, `tok.mask_id`, and `tok.special_ids` for all five. Every Stage 6 script uses them.
"""
from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

if __package__ in (None, ""):  # run as `python stage6_bert/tokenizer.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import UserError, atomic_write_text, positive_int, resolve_data_dir, run_cli
from stage6_bert.documents import load_documents, split_documents, vocabulary_texts

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # BERT's five; a vocabulary needs them all, anywhere
# Their ids in a vocabulary trained here (train() puts them first). Code that may meet a real vocabulary reads
# tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id and tok.mask_id instead.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
PREFIX = "##"  # marks a piece that continues a word
FORMAT, VERSION = "my_llm-wordpiece", 1
# CJK ideograph blocks, as in Hugging Face's BertNormalizer (Google's BERT also pads 0x2B820-0x2B91F)
CJK = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
       (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]


class CharTable(dict):
    """A table for str.translate that fills itself: `fn` runs once per distinct character, then it is a dict lookup.
    This is what makes normalising 10 MB of text take well under a second in plain Python."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __missing__(self, code: int) -> str:
        value = self[code] = self.fn(chr(code))
        return value


def clean_char(c: str, pad_chinese: bool) -> str:
    # drop \x00, \ufffd and control/format characters (Cc, Cf, Co, Cs), but keep \t \n \r: they are whitespace
    if c in "\x00\ufffd" or (unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") and c not in "\t\n\r"):
        return ""
    if c.isspace():
        return " "  # "\t", "\n", "\u00a0", "\u3000", ... -> " "
    if pad_chinese and any(lo <= ord(c) <= hi for lo, hi in CJK):
        return f" {c} "  # "中文" -> " 中  文 "
    return c


def is_punctuation(c: str) -> bool:
    cp = ord(c)  # the ASCII symbols that are not P* in Unicode ($ + < = > ^ ` | ~) count too, as in BERT
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(c)[0] == "P"


CLEAN = {pad: CharTable(lambda c, pad=pad: clean_char(c, pad)) for pad in (False, True)}
DROP_MARKS = CharTable(lambda c: "" if unicodedata.category(c) == "Mn" else c)  # "e\u0301" -> "e"
LOWER = CharTable(str.lower)  # one character at a time, as Hugging Face: "Σ" is always "σ", never the final "ς"
SPACE_PUNCT = CharTable(lambda c: f" {c} " if is_punctuation(c) else c)  # "don't!" -> "don ' t ! "


def merge_pair(ids: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every (a, b) in `ids` by new_id, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class WordPieceTokenizer:
    """An ordered vocabulary (id = position) and the normalisation settings; encode/decode need nothing else.
    The five special tokens may sit anywhere in it: their ids are attributes (pad_id, unk_id, cls_id, sep_id,
    mask_id), read from the vocabulary."""

    def __init__(self, vocab: list[str], lowercase: bool = True, strip_accents: bool | None = None,
                 handle_chinese_chars: bool = True, max_input_chars_per_word: int = 100):
        if not all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in vocab):
            raise ValueError("every token must be a non-empty string without whitespace")
        self.vocab = list(vocab)
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        if len(self.ids) != len(self.vocab):
            raise ValueError("the vocabulary holds a token twice")
        missing = [t for t in SPECIAL_TOKENS if t not in self.ids]
        if missing:
            raise ValueError(f"the vocabulary has no {', '.join(missing)} (a BERT vocabulary needs "
                             f"{', '.join(SPECIAL_TOKENS)}, anywhere in it)")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.ids[t] for t in SPECIAL_TOKENS)
        self.special_ids = sorted(self.ids[t] for t in SPECIAL_TOKENS)  # what masking never chooses, decode skips
        if not (isinstance(lowercase, bool) and isinstance(handle_chinese_chars, bool)
                and (strip_accents is None or isinstance(strip_accents, bool))):
            raise ValueError("lowercase, strip_accents and handle_chinese_chars must be true or false")
        if not isinstance(max_input_chars_per_word, int) or max_input_chars_per_word < 1:
            raise ValueError("max_input_chars_per_word must be a positive whole number")
        self.lowercase, self.handle_chinese_chars = lowercase, handle_chinese_chars
        self.strip_accents = lowercase if strip_accents is None else strip_accents  # BERT: strip when lower-casing
        self.max_input_chars_per_word = max_input_chars_per_word
        self.longest = max(len(t) for t in self.vocab)  # no piece is longer: the match loop starts there
        self.cache: dict[str, list[int]] = {}  # word -> ids

    def settings(self) -> dict:
        return {"lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "handle_chinese_chars": self.handle_chinese_chars,
                "max_input_chars_per_word": self.max_input_chars_per_word}

    # ------------------------------------------------------------------------- text -> words -> ids

    def normalize(self, text: str) -> str:
        text = text.translate(CLEAN[self.handle_chinese_chars])
        if self.strip_accents:
            text = unicodedata.normalize("NFD", text).translate(DROP_MARKS)
        return text.translate(LOWER) if self.lowercase else text

    def pre_tokenize(self, text: str) -> list[str]:
        """Normalised text -> words: split at whitespace and around each punctuation character."""
        return text.translate(SPACE_PUNCT).split()

    def encode_word(self, word: str) -> list[int]:
        """Greedy longest match first: at each position take the longest piece in the vocabulary ("unaffable" -> un,
        ##aff, ##able). Never a search over all splits: a dead end makes the word [UNK], even if another split fits."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            for end in range(min(len(word), start + self.longest), start, -1):  # longest candidate first
                piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                if piece in self.ids:
                    ids.append(self.ids[piece])
                    break
            else:
                return [self.unk_id]  # nothing matches here: the whole word is unknown, not just this piece
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """Text -> ids, no [CLS]/[SEP]. "[MASK]" in the text is plain text ("[", "mask", "]"), never a special id."""
        ids = []
        for word in self.pre_tokenize(self.normalize(text)):
            cached = self.cache.get(word)
            if cached is None:
                cached = self.cache[word] = self.encode_word(word)
            ids.extend(cached)
        return ids

    def tokenize(self, text: str) -> list[str]:
        return [self.vocab[i] for i in self.encode(text)]

    def encode_single(self, text: str, max_len: int | None = None) -> tuple[list[int], list[int]]:
        """[CLS] text [SEP], cut to max_len tokens; returns (ids, segment ids), the segment ids all 0."""
        ids = self.encode(text)
        if max_len is not None:
            if max_len < 2:
                raise ValueError(f"max_len {max_len} leaves no room for [CLS] and [SEP]")
            ids = ids[:max_len - 2]
        return [self.cls_id, *ids, self.sep_id], [0] * (len(ids) + 2)

    def encode_pair(self, a: str, b: str, max_len: int | None = None) -> tuple[list[int], list[int]]:
        """[CLS] a [SEP] b [SEP] with segment ids 0 for "[CLS] a [SEP]" and 1 for "b [SEP]".

        Truncation is longest first, as BERT's _truncate_seq_pair: while too long, drop the last token of the longer
        sequence (of b on a tie). A long passage loses tokens before a short question does. (Hugging Face's
        tokenizers drop a's token on a tie; that is the only difference, tests/test_stage6_pretrained.py checks it.)"""
        ids_a, ids_b = self.encode(a), self.encode(b)
        if max_len is not None:
            if max_len < 3:
                raise ValueError(f"max_len {max_len} leaves no room for [CLS], [SEP] and [SEP]")
            while len(ids_a) + len(ids_b) > max_len - 3:
                (ids_a if len(ids_a) > len(ids_b) else ids_b).pop()
        return [self.cls_id, *ids_a, self.sep_id, *ids_b, self.sep_id], [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Ids -> words separated by spaces, "##" pieces glued to the word before: the normalised text, with a space
        around each punctuation mark ("Don't!" -> "don ' t !"). [UNK] shows only with skip_special_tokens=False, which
        skips the five special tokens by their ids (wherever the vocabulary has them), nothing else."""
        words, special = [], set(self.special_ids) if skip_special_tokens else set()
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"unknown token id {i} (this tokenizer has {len(self.vocab)} tokens)")
            if i in special:
                continue
            token = self.vocab[i]
            if token.startswith(PREFIX) and words:
                words[-1] += token[len(PREFIX):]
            else:
                words.append(token)
        return " ".join(words)

    def __len__(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------------- training

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, limit_alphabet: int = 1000, min_frequency: int = 2,
              **settings) -> "WordPieceTokenizer":
        """Learn a vocabulary of `vocab_size` tokens (fewer if no pair occurs `min_frequency` times any more).
        `settings` are the normalisation settings of __init__ (lowercase, strip_accents, ...)."""
        blank = cls(SPECIAL_TOKENS, **settings)  # normalises and pre-tokenises exactly as the result will
        word_counts = Counter()  # distinct word -> how often it occurs
        for text in [texts] if isinstance(texts, str) else texts:
            word_counts.update(blank.pre_tokenize(blank.normalize(text)))
        char_counts = Counter()
        for word, n in word_counts.items():
            for c in word:
                char_counts[c] += n
        alphabet = sorted(sorted(char_counts, key=lambda c: (-char_counts[c], c))[:limit_alphabet])
        known = set(alphabet)
        kept = {w: n for w, n in word_counts.items()  # the words that can be encoded at all
                if len(w) <= blank.max_input_chars_per_word and known.issuperset(w)}
        inner = sorted({c for w in kept for c in w[1:]})  # "##c" only for what occurs inside a word: never "##."
        tokens = SPECIAL_TOKENS + alphabet + [PREFIX + c for c in inner]  # id -> token string
        if vocab_size < len(tokens):
            raise UserError(f"vocab size {vocab_size} is too small: the 5 special tokens and {len(alphabet)} "
                            f"characters (+ {len(inner)} as ##c) need {len(tokens)}; raise --vocab-size or lower "
                            f"--limit-alphabet")
        token_ids = {t: i for i, t in enumerate(tokens)}
        words = [[token_ids[w[0]]] + [token_ids[PREFIX + c] for c in w[1:]] for w in kept]  # "the" -> t ##h ##e
        freqs = list(kept.values())

        pair_counts = defaultdict(int)  # (a, b) -> occurrences in the corpus
        where = defaultdict(set)        # (a, b) -> indices of the words that contain it
        for w, word in enumerate(words):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freqs[w]
                where[pair].add(w)
        heap = [(-count, pair) for pair, count in pair_counts.items()]  # max-heap by count, then smallest pair
        heapq.heapify(heap)
        while len(tokens) < vocab_size and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair) != -neg_count:
                continue  # stale: this pair's count changed after the entry was pushed (a fresher entry exists)
            if -neg_count < min_frequency:
                break
            a, b = pair
            merged = tokens[a] + tokens[b][len(PREFIX):]  # b is never word-initial: "un" + "##aff" -> "unaff"
            new_id = token_ids.get(merged)
            if new_id is None:  # (the same string can come from two different merges; it keeps one id)
                new_id = token_ids[merged] = len(tokens)
                tokens.append(merged)
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
        return cls(tokens, **blank.settings())

    # ------------------------------------------------------------------------- files, and the Hugging Face twin

    def save(self, path: str | Path) -> None:
        """JSON, never pickle: the vocabulary in id order and the settings that decide how text is split."""
        data = {"format": FORMAT, "version": VERSION, **self.settings(), "vocab": self.vocab}
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=0) + "\n")

    def save_vocab_txt(self, path: str | Path) -> None:
        """BERT's vocab.txt: one token per line, line number = id (what BertTokenizer(vocab_file=...) reads)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(t + "\n" for t in self.vocab), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, **settings) -> "WordPieceTokenizer":
        """A tokenizer file in any of three formats, told apart by their content:
            the course's JSON (`save`: "format": "my_llm-wordpiece"),
            Hugging Face's tokenizer.json of a BERT (`from_hf_json`),
            BERT's vocab.txt, a file ending in .txt (`from_vocab_txt`; it holds no settings: `settings` gives them,
            default BERT uncased's).
        Anything wrong is one line (UserError) naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = None if path.suffix == ".txt" else json.loads(text)
        except FileNotFoundError:
            raise UserError(f"tokenizer file not found: {path} (stage6_bert/tokenizer.py train writes one)") from None
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read tokenizer {path}: {type(e).__name__}: {e}") from None
        try:
            if data is None:
                return cls.from_vocab_txt(text, **settings)
            if isinstance(data, dict) and "format" not in data and isinstance(data.get("model"), dict):
                return cls.from_hf_json(data)
            if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
                raise UserError(f"{path} is not a {FORMAT} version {VERSION} tokenizer file (nor a Hugging Face "
                                f"tokenizer.json)")
            return cls(data["vocab"], data["lowercase"], data["strip_accents"], data["handle_chinese_chars"],
                       data["max_input_chars_per_word"])
        except UserError as e:
            raise UserError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"tokenizer file {path} is corrupt: {type(e).__name__}: {e}") from None

    @classmethod
    def from_vocab_txt(cls, text: str, **settings) -> "WordPieceTokenizer":
        """BERT's vocab.txt (its text): one token per line, line number = id; trailing whitespace is not part of a
        token (as Hugging Face reads it). The file says nothing about normalisation: `settings` (default: lower-case,
        strip accents, split Chinese characters, as bert-base-uncased)."""
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline after the last token
        return cls([line.rstrip() for line in lines], **settings)

    @classmethod
    def from_hf_json(cls, data: dict) -> "WordPieceTokenizer":
        """Hugging Face's tokenizer.json (parsed) of a BERT: the WordPiece vocabulary ("model": token -> id) and the
        settings of its BertNormalizer and WordPiece model. A tokenizer this class would not reproduce exactly
        (another model type, normaliser, pre-tokeniser or word-piece prefix) is an error naming what differs, never
        an approximation. Its "truncation", "padding" and "post_processor" sections are not read: encode_single and
        encode_pair add [CLS]/[SEP] and truncate, glue.make_batch pads."""
        model, norm, pre = (data.get(k) or {} for k in ("model", "normalizer", "pre_tokenizer"))
        problems = []
        if model.get("type") != "WordPiece":
            problems.append(f"model {model.get('type')!r}, not WordPiece")
        elif model.get("continuing_subword_prefix", PREFIX) != PREFIX or model.get("unk_token", "[UNK]") != "[UNK]":
            problems.append(f"pieces marked {model.get('continuing_subword_prefix')!r} and unknown words "
                            f"{model.get('unk_token')!r}, not {PREFIX!r} and '[UNK]'")
        if norm.get("type") != "BertNormalizer" or norm.get("clean_text") is False:
            unclean = " without clean_text" if norm.get("clean_text") is False else ""
            problems.append(f"normalizer {norm.get('type')!r}{unclean}, not BertNormalizer")
        if pre.get("type") != "BertPreTokenizer":
            problems.append(f"pre_tokenizer {pre.get('type')!r}, not BertPreTokenizer")
        if problems:
            raise UserError(f"a tokenizer.json that WordPieceTokenizer cannot reproduce: {'; '.join(problems)}")
        by_id = sorted((i, t) for t, i in model["vocab"].items())   # token -> id, as a list in id order
        if [i for i, _ in by_id] != list(range(len(by_id))):
            raise ValueError("the vocabulary ids are not 0, 1, 2, ... without gaps")
        vocab = [t for _, t in by_id]
        for added in data.get("added_tokens") or []:   # [CLS] etc. are "added tokens" too: at their vocabulary ids
            if not (0 <= added["id"] < len(vocab) and vocab[added["id"]] == added["content"]):
                raise ValueError(f"added token {added['content']!r} (id {added['id']}) is not in the vocabulary")
        return cls(vocab, lowercase=norm.get("lowercase", True), strip_accents=norm.get("strip_accents"),
                   handle_chinese_chars=norm.get("handle_chinese_chars", True),
                   max_input_chars_per_word=model.get("max_input_chars_per_word", 100))

    def to_hf_tokenizer(self):
        """The same tokeniser as a Hugging Face `tokenizers.Tokenizer`, built from our vocabulary and settings alone:
        the reference the tests compare ids with. Its post-processor adds [CLS]/[SEP] like encode_pair (without
        truncation). The special tokens are not registered as "added tokens", so, as in encode, "[MASK]" in raw text
        is plain text."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # optional
        hf = Tokenizer(models.WordPiece({t: i for i, t in enumerate(self.vocab)}, unk_token="[UNK]",
                                        continuing_subword_prefix=PREFIX,
                                        max_input_chars_per_word=self.max_input_chars_per_word))
        hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=self.handle_chinese_chars,
                                                   strip_accents=self.strip_accents, lowercase=self.lowercase)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.post_processor = processors.BertProcessing(("[SEP]", self.sep_id), ("[CLS]", self.cls_id))
        hf.decoder = decoders.WordPiece(prefix=PREFIX, cleanup=False)
        return hf


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a WordPiece (BERT) tokenizer, or encode text with one.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="learn a vocabulary and save it as JSON")
    t.add_argument("--vocab-size", type=positive_int, default=8000, help="tokens in all, special ones included")
    t.add_argument("--corpus", nargs="+", help="text files to train on (UTF-8, or .gz; blank lines between "
                                                "documents; default: WikiText-2 train)")
    t.add_argument("--imdb-unsup", type=positive_int, default=None, metavar="N",
                   help="also train on the first N unlabelled IMDb reviews (imdb/unsup.csv.gz; ignored with --corpus)")
    t.add_argument("--data-dir", default=None, help="folder with the data sets (default: $MY_LLM_DATA, "
                                                     "else ~/.cache/my_llm/data)")
    t.add_argument("--limit-alphabet", type=positive_int, default=1000, help="keep the N most frequent characters")
    t.add_argument("--min-frequency", type=positive_int, default=2, help="stop when the best pair is rarer")
    t.add_argument("--cased", action="store_true", help="keep upper case and accents (BERT cased)")
    t.add_argument("--out", default=None, help="JSON file to write (default: runs/stage6_bert/wordpiece<size>.json)")
    t.add_argument("--vocab-txt", default=None, help="also write BERT's vocab.txt (one token per line) here")
    e = sub.add_parser("encode", help="show the tokens and ids of a text (or a pair of texts)")
    e.add_argument("--tokenizer", required=True, help="a JSON file written by `train`, a Hugging Face tokenizer.json "
                                                       "or BERT's vocab.txt (uncased)")
    e.add_argument("text")
    e.add_argument("--pair", default=None, help="a second text: show [CLS] text [SEP] pair [SEP]")
    e.add_argument("--max-len", type=positive_int, default=None, help="truncate to this many tokens")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "encode":
        tok = WordPieceTokenizer.load(args.tokenizer)
        try:
            if args.pair is not None:
                ids, segments = tok.encode_pair(args.text, args.pair, args.max_len)
            elif args.max_len is not None:
                ids, segments = tok.encode_single(args.text, args.max_len)
            else:
                ids, segments = tok.encode(args.text), None
        except ValueError as err:  # a --max-len too small for [CLS] and [SEP]
            raise UserError(str(err)) from None
        print("tokens:  ", [tok.vocab[i] for i in ids])
        print("ids:     ", ids)
        if segments is not None:
            print("segments:", segments)
        return

    # The same text pretrain.py trains its vocabulary on: the documents of documents.py (downloaded when missing), minus the
    # held-out validation documents, with WikiText's <unk> markers removed. `train --imdb-unsup 50000` therefore
    # writes exactly the tokenizer.json of a default pre-training run.
    documents = load_documents(resolve_data_dir(args.data_dir), args.corpus, args.imdb_unsup or 0)
    # a corpus too small to hold documents out (pre-training refuses it) still gives a vocabulary, from all of it
    train_docs = split_documents(len(documents))[0] if len(documents) >= 4 else range(len(documents))
    texts = list(vocabulary_texts(documents, train_docs))
    out = Path(args.out or f"runs/stage6_bert/wordpiece{args.vocab_size}.json")

    start = time.perf_counter()
    tok = WordPieceTokenizer.train(texts, args.vocab_size, args.limit_alphabet, args.min_frequency,
                                   lowercase=not args.cased)
    seconds = time.perf_counter() - start
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"trained {len(tok)} tokens on {mb:.1f} MB in {seconds:.1f} s")
    tok.save(out)
    print(f"wrote {out}")
    if args.vocab_txt:
        tok.save_vocab_txt(args.vocab_txt)
        print(f"wrote {args.vocab_txt}")
    example = "The unaffable professor's 12 lectures, ranked #1 in Zürich!"
    print(f"example: {example!r}\n     -> {tok.tokenize(example)}")


if __name__ == "__main__":
    run_cli(main)
