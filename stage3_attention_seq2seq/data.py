"""Stage 3 data: parallel sentences -> reversible tokens -> ids -> padded, length-bucketed batches.

    files on disk (or a download) -> (source, target) sentence pairs -> tokens -> ids -> (B, S) / (B, T) batches

BLEU is computed on plain text against the raw references, so the tokeniser must be undone exactly:
`detokenize(tokenize(x)) == normalize(x)`. Each token remembers whether a space came before it (a leading
"▁", as SentencePiece marks it), so spacing around punctuation survives the round trip in every language.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import sys
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import torch

from scripts.common import UserError

# ----------------------------------------------------------------------------- the data sets

# Multi30k task 1: Flickr30k image captions in English with German and French translations, one sentence
# per line, line i of every language file is the same caption. test2016 is the standard test set.
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}.gz"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr", "test2017": "test_2017_flickr"}
# Tatoeba (manythings.org fra-eng, the d2l.ai copy): one "English<TAB>French" pair per line, no official split.
TATOEBA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"

DATASETS = {
    "multi30k": {"folder": "multi30k", "langs": ("en", "de", "fr"), "splits": list(MULTI30K_SPLITS),
                 "test_splits": ["test2016", "test2017"]},
    "tatoeba": {"folder": "tatoeba_eng_fra", "langs": ("en", "fr"), "splits": ["train", "val", "test"],
                "test_splits": ["test"]},
}


def dataset_info(name: str) -> dict:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def check_pair(name: str, src: str, tgt: str) -> None:
    langs = dataset_info(name)["langs"]
    if src not in langs or tgt not in langs or src == tgt:
        raise UserError(f"{name} needs two different languages from {', '.join(langs)} (got --src {src} --tgt {tgt})")


def read_gz_lines(path: Path) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            return f.read().split("\n")[:-1]  # every file ends with a newline
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another "
                        f"format? see {path.parent / 'SOURCE.md'} for the expected one)") from None


def load_pairs(name: str, data_dir: str | Path, split: str, src: str, tgt: str) -> list[tuple[str, str]]:
    """Raw (source, target) sentence pairs of one split, downloading the data set first if it is missing."""
    info = dataset_info(name)
    check_pair(name, src, tgt)
    if split not in info["splits"]:
        raise UserError(f"{name} has no {split!r} split; it has: {', '.join(info['splits'])}")
    folder = Path(data_dir) / info["folder"]
    if name == "multi30k":
        paths = {lang: folder / f"{MULTI30K_SPLITS[split]}.{lang}.gz" for lang in (src, tgt)}
        if not all(p.is_file() for p in paths.values()):
            download_multi30k(folder)
        lines = {lang: read_gz_lines(p) for lang, p in paths.items()}
        if len(lines[src]) != len(lines[tgt]):
            raise UserError(f"{paths[src]} and {paths[tgt]} have different numbers of lines "
                            f"({len(lines[src])} and {len(lines[tgt])}): they must be line-aligned translations")
        return list(zip(lines[src], lines[tgt]))
    path = folder / "fra.txt.gz"
    if not path.is_file():
        download_tatoeba(folder)
    pairs = []
    for i, line in enumerate(read_gz_lines(path), 1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserError(f"{path}, line {i}: expected 'English<TAB>French', got {line[:60]!r}")
        if tatoeba_split(fields[0]) == split:
            pairs.append((fields[0], fields[1]) if src == "en" else (fields[1], fields[0]))
    return pairs


def tatoeba_split(english: str) -> str:
    """Tatoeba has no official split: about 1 % of English sentences go to val and 1 % to test, chosen by a
    hash of the sentence, so every translation of one English sentence lands in the same split (no leak)."""
    bucket = int(hashlib.md5(english.encode("utf-8")).hexdigest(), 16) % 100
    return "val" if bucket == 0 else "test" if bucket == 1 else "train"


# ----------------------------------------------------------------------------- download when missing

def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def download_multi30k(folder: Path) -> None:
    """The original raw Multi30k files (gzip, as the official repo stores them), all splits and languages."""
    print(f"Multi30k not found in {folder}; downloading it from github.com/multi30k/dataset ...", file=sys.stderr)
    names = [f"{split}.{lang}" for split in MULTI30K_SPLITS.values() for lang in DATASETS["multi30k"]["langs"]]
    try:
        blobs = {name: fetch(MULTI30K_URL.format(name=name)) for name in names}
    except Exception as e:  # no internet, 404, timeout: all end the same way for the user
        _download_failed("multi30k", folder, "train.en.gz, val.fr.gz, test_2016_flickr.de.gz, ...", e)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in blobs.items():
            _write_atomic(folder / f"{name}.gz", data)
    except OSError as e:
        raise UserError(f"downloaded Multi30k but cannot write it to {folder}: {e.strerror or e}") from None


def download_tatoeba(folder: Path) -> None:
    """The d2l.ai zip of manythings' fra-eng; stored as fra.txt.gz, the offline format."""
    print(f"Tatoeba eng-fra not found in {folder}; downloading it from {TATOEBA_URL} ...", file=sys.stderr)
    try:
        with zipfile.ZipFile(io.BytesIO(fetch(TATOEBA_URL))) as z:
            member = next(n for n in z.namelist() if n.endswith("fra.txt") and not n.startswith("__MACOSX"))
            text = z.read(member)
    except Exception as e:
        _download_failed("tatoeba", folder, "fra.txt.gz", e)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / "fra.txt.gz", gzip.compress(text, mtime=0))
    except OSError as e:
        raise UserError(f"downloaded Tatoeba but cannot write it to {folder}: {e.strerror or e}") from None


def _download_failed(name: str, folder: Path, expected: str, e: Exception):
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f"data set {name!r} not found in {folder} (expected {expected}), and the download failed "
                    f"({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run with internet "
                    f"access.") from None


# ----------------------------------------------------------------------------- reversible tokens

SPACE = "\u2581"  # "▁": this token had a space (or the start of the sentence) before it
TOKEN_RE = re.compile(r"(\s*)(\w+|[^\w\s])")  # a word, or one punctuation mark, with the spaces before it


def normalize(text: str) -> str:
    """One ASCII space between words, none at the ends. str.split() also treats the no-break spaces French
    typography puts before '?' and '!' as spaces, so they all become one kind."""
    return " ".join(text.replace(SPACE, " ").split())


def tokenize(text: str) -> list[str]:
    """'Un homme, assis.' -> ['▁Un', '▁homme', ',', '▁assis', '.']: words and single punctuation marks."""
    return [(SPACE if spaces or i == 0 else "") + piece
            for i, (spaces, piece) in enumerate(TOKEN_RE.findall(normalize(text)))]


def detokenize(tokens: list[str]) -> str:
    """The exact inverse of `tokenize` on normalized text."""
    return "".join(tokens).replace(SPACE, " ").strip()


PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]  # ids 0, 1, 2, 3 in every vocabulary
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocab:
    """token <-> id for one language, built on the training split only, stored as JSON (never pickle).

    Tokens seen fewer than `min_freq` times become <unk>: rare words cost softmax time and the model
    cannot learn them from one or two examples anyway.
    """

    def __init__(self, itos: list[str], lang: str):
        if itos[:4] != SPECIALS:
            raise UserError(f"a vocabulary must start with {SPECIALS}")
        self.itos, self.lang = itos, lang
        self.stoi = {s: i for i, s in enumerate(itos)}

    @classmethod
    def build(cls, sentences: list[str], lang: str, min_freq: int = 2) -> "Vocab":
        counts = Counter(t for s in sentences for t in tokenize(s))
        return cls(SPECIALS + [t for t, c in counts.most_common() if c >= min_freq], lang)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokenize(text)] + ([EOS_ID] if add_eos else [])

    def unknown(self, text: str) -> list[str]:
        """The tokens of `text` this vocabulary maps to <unk>, as the user typed them."""
        return [t.lstrip(SPACE) for t in tokenize(text) if t not in self.stoi]

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, stopping at <eos>; <pad>/<bos> are dropped, <unk> is kept visible."""
        tokens = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                tokens.append(self.itos[i] if i != UNK_ID else SPACE + UNK)
        return detokenize(tokens)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"lang": self.lang, "itos": self.itos}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(obj["itos"], obj["lang"])
        except FileNotFoundError:
            raise UserError(f"vocabulary not found: {path} (train.py writes it next to the checkpoint)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read vocabulary {path}: {type(e).__name__}: {e}") from None

    def fingerprint(self) -> str:
        return hashlib.sha256(("\n".join(self.itos) + self.lang).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- batches

def pad(seqs: list[list[int]]) -> torch.Tensor:
    """Right-pad id lists with <pad> into one (B, L) tensor."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def make_batch(src: list[list[int]], tgt: list[list[int]] | None = None) -> dict:
    """src (B, S) with lengths; tgt_in = <bos> y1 .. yn (B, T) and tgt_out = y1 .. yn <eos> (B, T)."""
    batch = {"src": pad(src), "src_len": torch.tensor([len(s) for s in src])}
    if tgt is not None:  # target id lists end with <eos> already
        batch["tgt_in"] = pad([[BOS_ID] + t[:-1] for t in tgt])
        batch["tgt_out"] = pad(tgt)
    return batch


def batch_order(lengths: list[int], batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Example indices grouped into batches of similar source length, so little compute goes to padding.

    Shuffle, sort within pools of 50 batches by length, cut, shuffle the batches. The order depends only on
    `seed` (train.py passes seed + epoch), which is what lets --resume replay an epoch exactly.
    """
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(idx)
    pool = batch_size * 50
    batches = []
    for p in range(0, len(idx), pool):
        chunk = sorted(idx[p:p + pool], key=lambda i: lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches
