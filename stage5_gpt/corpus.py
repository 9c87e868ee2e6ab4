"""The raw text of Stage 5's corpora: where each data set lives, how it is downloaded when missing, how it is split.

    load_text("wikitext2", data_dir, "train")  ->  str   (the tokenizer's command line and data.py both start here)

Kept apart from data.py so that tokenizer.py's command line (`--dataset`) can read a corpus without importing data.py,
which imports the tokenizer: the stage's imports then run one way only.
"""
from __future__ import annotations

import gzip
import sys
import urllib.request
from pathlib import Path

from scripts.common import UserError, atomic_write

# ----------------------------------------------------------------------------- the data sets

# Tiny Shakespeare is one file; nanoGPT's split (first 90 % train, last 10 % val) makes val losses comparable with
# nanoGPT's. WikiText-2: the tokenised v1 files (rare words already <unk>), the split Stage 2 uses, so per-word
# perplexities compare.
DATASETS = {
    "tiny_shakespeare": {
        "folder": "tiny_shakespeare", "files": {"all": "input.txt.gz"}, "splits": ["train", "val"],
        "tokenizer": "char",
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    },
    "wikitext2": {
        "folder": "wikitext-2", "splits": ["train", "val", "test"], "tokenizer": "bpe",
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
            datasets.logging.set_verbosity_error()
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
            atomic_write(path, lambda f, text=text: f.write(gzip.compress(text.encode("utf-8"))))
    except OSError as e:
        raise UserError(f"downloaded {source} but cannot write it to {folder}: {e.strerror or e}") from None
