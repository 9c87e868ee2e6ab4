"""The raw text of Stage 5's corpora: where each data set lives, how it is downloaded when missing, how it is split.

    load_text("wikitext2", data_dir, "train")  ->  str   (the tokenizer's command line and data.py both start here)
    load_multi30k(data_dir, "test2016", "fr")   ->  list[str], one caption per line   (instructions.py, course_mix)
    load_imdb(data_dir, "train")                ->  (reviews, labels)                   (course_mix)

`course_mix` is the text of the course's own data sets in one corpus, for a GPT that will later be instructed
(sft.py): the articles of WikiText-2 train, the IMDb reviews of train and of the unlabelled set, and the English,
French and German captions of Multi30k train. Only training splits go in, and every 100th document of each source is
held out as its val split: nothing the course reports or selects on (IMDb test, Multi30k val and test, WikiText-2
valid and test, SST-2 and GLUE dev) is ever read, so the fine-tuned model's scores on them stay honest.

Kept apart from data.py so that tokenizer.py's command line (`--dataset`) can read a corpus without importing data.py,
which imports the tokenizer: the stage's imports then run one way only.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
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
    # documents of several data sets, separated by <|endoftext|>; its BPE also gets the chat template's tokens
    "course_mix": {"splits": ["train", "val"], "tokenizer": "bpe", "documents": True, "chat": True,
                   "sources": ["wikitext2 train articles", "imdb train + unsup reviews",
                               "multi30k train captions (en, fr, de)"]},
}
TRAIN_FRACTION = 0.9  # Tiny Shakespeare: nanoGPT's split
DOC_SEP = "<|endoftext|>"  # tokenizer.EOT, between two documents of a corpus (a test checks they agree)
HELD_OUT_EVERY = 100       # course_mix: every 100th document of each source is val
CAPTIONS_PER_DOCUMENT = 50  # Multi30k captions are one sentence each: 50 in a row make one document

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}.gz"
MULTI30K_FILES = {"train": "train", "val": "val", "test2016": "test_2016_flickr", "test2017": "test_2017_flickr"}
MULTI30K_LANGS = ("en", "de", "fr")
IMDB_FILES = {"train": "train.csv.gz", "test": "test.csv.gz", "unsup": "unsup.csv.gz"}
IMDB_HUB = ("stanfordnlp/imdb", {"train": "train", "test": "test", "unsup": "unsupervised"})


def dataset_info(name: str) -> dict:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_text(name: str, data_dir: str | Path, split: str) -> str:
    """The raw text of one split, downloading the data set first if its files are missing."""
    info = dataset_info(name)
    if split not in info["splits"]:
        raise UserError(f"{name} has no {split!r} split; it has: {', '.join(info['splits'])}")
    if info.get("documents"):
        return DOC_SEP.join(course_mix_documents(data_dir, split))
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


# ----------------------------------------------------------------------------- the course's own text (course_mix)

def course_mix_documents(data_dir: str | Path, split: str) -> list[str]:
    """The documents of course_mix's train or val split, source by source (data.get_batch draws random windows, so
    their order does not matter). Every HELD_OUT_EVERY-th document of each source is val, the rest train."""
    wiki = re.split(r"\n(?= = [^=].* = \n)", load_text("wikitext2", data_dir, "train"))  # at each article's title
    reviews = load_imdb(data_dir, "train")[0] + load_imdb(data_dir, "unsup")[0]
    captions = [load_multi30k(data_dir, "train", lang) for lang in MULTI30K_LANGS]
    blocks = [["\n".join(lines[i:i + CAPTIONS_PER_DOCUMENT]) for i in range(0, len(lines), CAPTIONS_PER_DOCUMENT)]
              for lines in captions]
    docs = []
    for source in [wiki, [r.replace("<br />", "\n") for r in reviews], *blocks]:
        keep = [d.replace(DOC_SEP, "").strip() for i, d in enumerate(source)
                if (i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == (split == "val")]
        docs += [d for d in keep if d]
    return docs


def load_multi30k(data_dir: str | Path, split: str, lang: str) -> list[str]:
    """One Multi30k split in one language (train, val, test2016, test2017; en, de, fr): a caption per line, the
    lines of the three languages aligned. Downloaded from the official repository when missing."""
    if split not in MULTI30K_FILES or lang not in MULTI30K_LANGS:
        raise UserError(f"Multi30k has splits {', '.join(MULTI30K_FILES)} and languages {', '.join(MULTI30K_LANGS)}; "
                        f"got {split!r}, {lang!r}")
    folder = Path(data_dir) / "multi30k"
    path = folder / f"{MULTI30K_FILES[split]}.{lang}.gz"
    if not path.is_file():
        names = [f"{f}.{x}" for f in MULTI30K_FILES.values() for x in MULTI30K_LANGS]
        fetch_files("multi30k", folder, {f"{n}.gz": MULTI30K_URL.format(name=n) for n in names})
    return read_gz(path).split("\n")[:-1]  # every file ends with a newline


def load_imdb(data_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """IMDb reviews of one split (train, test, unsup) and their labels (0 negative, 1 positive, -1 unlabelled), read
    from the course's CSV files (text,label,id,rating); downloaded with Hugging Face `datasets` when missing."""
    folder = Path(data_dir) / "imdb"
    path = folder / IMDB_FILES[split]
    if not path.is_file():
        download_imdb(folder)
    rows = list(csv.DictReader(io.StringIO(read_gz(path), newline="")))
    try:
        return [r["text"] for r in rows], [int(r["label"]) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot read {path}: expected the columns text,label,id,rating ({type(e).__name__}: {e}); "
                        f"see {folder / 'SOURCE.md'}") from None


def read_gz(path: Path) -> str:
    try:
        return gzip.open(path, "rt", encoding="utf-8", newline="").read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another "
                        f"format? see {path.parent / 'SOURCE.md'} for the expected one)") from None


def fetch_files(name: str, folder: Path, urls: dict[str, str]) -> None:
    """Download every file of a data set (file name -> URL) into `folder`, each written atomically, or none."""
    print(f"data set {name!r} not found in {folder}; downloading it ...", file=sys.stderr)
    try:
        blobs = {}
        for file, url in urls.items():
            with urllib.request.urlopen(url, timeout=60) as response:
                blobs[file] = response.read()
    except Exception as e:  # no internet, 404, timeout: all end the same way for the user
        failed(name, folder, ", ".join(list(urls)[:3]) + ", ...", e)
    write_files(name, folder, blobs)


def download_imdb(folder: Path) -> None:
    """IMDb from the Hugging Face hub, stored in the offline CSV format (the hub has no review id or star rating:
    the row number and an empty rating stand in)."""
    print(f"data set 'imdb' not found in {folder}; downloading {IMDB_HUB[0]} from the Hugging Face hub ...",
          file=sys.stderr)
    try:
        import datasets
        datasets.logging.set_verbosity_error()
        hub = datasets.load_dataset(IMDB_HUB[0])
        blobs = {}
        for split, hub_split in IMDB_HUB[1].items():
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["text", "label", "id", "rating"])
            writer.writerows([r["text"], -1 if split == "unsup" else int(r["label"]), i, ""]
                             for i, r in enumerate(hub[hub_split]))
            blobs[IMDB_FILES[split]] = gzip.compress(buffer.getvalue().encode("utf-8"), mtime=0)
    except Exception as e:
        failed("imdb", folder, ", ".join(IMDB_FILES.values()), e)
    write_files("imdb", folder, blobs)


def failed(name: str, folder: Path, expected: str, e: Exception):
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f"data set {name!r} not found in {folder} (expected {expected}), and the download failed "
                    f"({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run with internet "
                    f"access.") from None


def write_files(name: str, folder: Path, blobs: dict[str, bytes]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for file, data in blobs.items():
            atomic_write(folder / file, lambda f, data=data: f.write(data))
    except OSError as e:
        raise UserError(f"downloaded {name} but cannot write it to {folder}: {e.strerror or e}") from None
