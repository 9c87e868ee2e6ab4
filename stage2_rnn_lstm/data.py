"""Stage 2 data: a text corpus as one long stream of token ids, cut into parallel streams for truncated BPTT.

    file on disk (or a download) -> text -> tokens (characters or words) -> ids -> (B, N) streams -> (x, y) windows

A language model predicts each token from the ones before it, so the "labels" are the inputs shifted by one.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import torch

from scripts.common import UserError

# ----------------------------------------------------------------------------- the data sets

# Tiny Shakespeare is one file; nanoGPT's split (first 90 % train, last 10 % val) makes val losses comparable
# with nanoGPT's. WikiText-2 comes split into train/valid/test files: the tokenised v1 files, where rare words
# are already <unk> and every line ends with an <eos> token (PyTorch's word_language_model convention).
DATASETS = {
    "tiny_shakespeare": {
        "folder": "tiny_shakespeare", "files": {"all": "input.txt.gz"}, "splits": ["train", "val"],
        "vocab_type": "char",
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    },
    "wikitext2": {
        "folder": "wikitext-2", "splits": ["train", "val", "test"], "vocab_type": "word",
        "files": {"train": "wiki.train.tokens.gz", "val": "wiki.valid.tokens.gz", "test": "wiki.test.tokens.gz"},
        "hub": ("Salesforce/wikitext", "wikitext-2-v1"),
        "hub_splits": {"train": "train", "val": "validation", "test": "test"},
    },
}
TRAIN_FRACTION = 0.9  # Tiny Shakespeare: nanoGPT's split


def dataset_info(name: str) -> dict:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_text(name: str, data_dir: str | Path, split: str) -> str:
    """The raw text of one split, downloading the data set first if its files are missing."""
    info = dataset_info(name)
    if split not in info["splits"]:
        raise UserError(f"{name} has no {split!r} split; it has: {', '.join(info['splits'])}")
    folder = Path(data_dir) / info["folder"]
    path = folder / info["files"]["all" if "all" in info["files"] else split]
    if not path.is_file():
        download(name, data_dir)
    try:
        text = gzip.open(path, "rt", encoding="utf-8", newline="").read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another "
                        f"format? see {folder / 'SOURCE.md'} for the expected one)") from None
    if "all" in info["files"]:  # one file, split by position
        cut = int(len(text) * TRAIN_FRACTION)
        text = text[:cut] if split == "train" else text[cut:]
    return text


# ----------------------------------------------------------------------------- download when missing

def download(name: str, data_dir: str | Path) -> None:
    """Fetch a data set from its original source and store it in the same format as the offline copy."""
    info = dataset_info(name)
    folder = Path(data_dir) / info["folder"]
    expected = ", ".join(info["files"].values())
    source = info.get("url") or info["hub"][0]
    print(f"data set {name!r} not found in {folder}; downloading it from {source} ...", file=sys.stderr)
    try:
        if "url" in info:
            with urllib.request.urlopen(info["url"], timeout=60) as response:
                texts = {"all": response.read().decode("utf-8")}
        else:
            import datasets
            import huggingface_hub
            datasets.logging.set_verbosity_error()
            huggingface_hub.logging.set_verbosity_error()
            hub = datasets.load_dataset(*info["hub"])
            # each hub row is one line of the original file, newline included; blank lines became ""
            texts = {split: "".join(r["text"] or " \n" for r in hub[hub_split])
                     for split, hub_split in info["hub_splits"].items()}
    except Exception as e:  # no internet, hub down, datasets missing: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"data set {name!r} not found in {folder} (expected {expected}), and downloading {source} failed "
            f"({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run with internet access."
        ) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, text in texts.items():
            path = folder / info["files"][split]
            tmp = path.with_name(path.name + ".part")
            with gzip.open(tmp, "wt", encoding="utf-8", newline="") as f:
                f.write(text)
            tmp.replace(path)
    except OSError as e:
        raise UserError(f"downloaded {source} but cannot write it to {folder}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- tokens and the vocabulary

EOS, UNK = "<eos>", "<unk>"


def tokenize(text: str, vocab_type: str) -> list[str]:
    """Characters, or whitespace-separated words with <eos> closing each line (the WikiText convention)."""
    if vocab_type == "char":
        return list(text)
    return [tok for line in text.splitlines() for tok in line.split() + [EOS]]


class Vocab:
    """token <-> id, built on the training split only, stored as JSON (never pickle).

    Character vocabularies are sorted, as nanoGPT's are. A word vocabulary keeps every training word
    (WikiText-2 already replaced rare words by <unk>), most frequent first: the adaptive softmax puts the
    lowest ids in its head cluster. A token outside the vocabulary maps to <unk> when the vocabulary has one;
    otherwise `encode` says which.
    """

    def __init__(self, itos: list[str], vocab_type: str):
        self.itos = itos
        self.vocab_type = vocab_type
        self.stoi = {s: i for i, s in enumerate(itos)}

    @classmethod
    def build(cls, text: str, vocab_type: str) -> "Vocab":
        tokens = tokenize(text, vocab_type)
        if vocab_type == "char":
            itos = sorted(set(tokens))
        else:  # by frequency; Counter keeps first-appearance order among equal counts
            itos = [t for t, _ in Counter(tokens).most_common()]
        return cls(itos, vocab_type)

    def __len__(self) -> int:
        return len(self.itos)

    def unknown(self, text: str) -> list[str]:
        """The distinct tokens of `text` the vocabulary does not hold, sorted."""
        return sorted({t for t in tokenize(text, self.vocab_type) if t not in self.stoi})

    def encode(self, text: str) -> list[int]:
        unk = self.stoi.get(UNK)
        unknown = self.unknown(text) if unk is None else []
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise UserError(f"{len(unknown)} {self.vocab_type}(s) not in the vocabulary: {shown}")
        return [self.stoi.get(t, unk) for t in tokenize(text, self.vocab_type)]

    def decode(self, ids: list[int]) -> str:
        if self.vocab_type == "char":
            return "".join(self.itos[i] for i in ids)
        lines, words = [], []
        for i in ids:  # words joined by spaces; <eos> ends a line
            if self.itos[i] == EOS:
                lines.append(" ".join(words) + "\n")
                words = []
            else:
                words.append(self.itos[i])
        return "".join(lines) + " ".join(words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"vocab_type": self.vocab_type, "itos": self.itos}, ensure_ascii=False),
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(obj["itos"], obj["vocab_type"])
        except FileNotFoundError:
            raise UserError(f"vocabulary not found: {path} (train.py writes it next to the checkpoint)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read vocabulary {path}: {type(e).__name__}: {e}") from None

    def fingerprint(self) -> str:
        """A short hash a checkpoint keeps, so a vocabulary from another run is caught before it gives nonsense."""
        return hashlib.sha256(("\n".join(self.itos) + self.vocab_type).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- streams and BPTT windows

def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut one long stream (N,) into `batch_size` parallel streams (B, N // B), dropping the remainder.

    Row b is a contiguous piece of the text, so the hidden state left after one window of row b is the
    right starting state for the next window of row b: that is what lets truncated BPTT carry state.
    """
    n = ids.numel() // batch_size
    if n < 2:
        raise UserError(f"{ids.numel()} tokens are too few for batch size {batch_size}")
    return ids[: n * batch_size].view(batch_size, n)  # (B, N)


def get_window(streams: torch.Tensor, start: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x = streams[:, start:start+T] and targets y = the same shifted by one token; T <= bptt."""
    T = min(bptt, streams.shape[1] - 1 - start)
    return streams[:, start:start + T], streams[:, start + 1:start + 1 + T]  # (B, T), (B, T)
