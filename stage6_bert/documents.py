"""Stage 6 pre-training text: the data sets (downloaded when missing) -> documents -> sentences.

    WikiText-2 train + IMDb unlabelled reviews (or the --corpus files)
      -> documents (a Wikipedia article, a review, a block of lines), each a list of sentences
      -> the training documents and the held-out validation ones (split_documents)

Both pretrain.py (through data.py) and the tokenizer's command line (`tokenizer.py train`) read their text here, so a
vocabulary trained on its own learns from exactly the documents pre-training does. This module knows nothing of
tokens: data.py turns the documents into ids, examples and masked batches.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

from scripts.common import UserError, atomic_write

UNKNOWN_WORD = "<unk>"    # WikiText's mark for a rare word it replaced
VAL_EVERY = 100           # one document in 100 is held out for validation

# ----------------------------------------------------------------------------- the data sets (downloaded when missing)

WIKITEXT = {"folder": "wikitext-2", "hub": ("Salesforce/wikitext", "wikitext-2-v1"),
            "files": {"train": "wiki.train.tokens.gz", "validation": "wiki.valid.tokens.gz",
                      "test": "wiki.test.tokens.gz"}}  # hub split -> file
IMDB_UNSUP = {"folder": "imdb", "file": "unsup.csv.gz", "hub": ("stanfordnlp/imdb", None), "hub_split": "unsupervised"}


def read_gzip_text(path: Path) -> str:
    try:
        return gzip.open(path, "rt", encoding="utf-8", newline="").read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another "
                        f"format? see {path.parent / 'SOURCE.md'} for the expected one)") from None


def load_wikitext_train(data_dir: str | Path, max_chars: int | None = None) -> str:
    """WikiText-2 train (the tokenised v1 text), downloaded first if the file is missing."""
    folder = Path(data_dir) / WIKITEXT["folder"]
    path = folder / WIKITEXT["files"]["train"]
    if not path.is_file():
        download_wikitext(folder)
    text = read_gzip_text(path)
    return text[:max_chars] if max_chars else text


def load_imdb_unsup(data_dir: str | Path, n: int) -> list[str]:
    """The first n unlabelled IMDb reviews, with their HTML line breaks ("<br />") made spaces."""
    folder = Path(data_dir) / IMDB_UNSUP["folder"]
    path = folder / IMDB_UNSUP["file"]
    if not path.is_file():
        download_imdb_unsup(folder)
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            rows = csv.DictReader(f)  # header: text,label,id,rating
            return [row["text"].replace("<br />", " ") for _, row in zip(range(n), rows)]
    except (OSError, EOFError, UnicodeDecodeError, KeyError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (expected a gzipped CSV with the header "
                        f"text,label,id,rating; see {folder / 'SOURCE.md'})") from None


def fetch_from_hub(name: str, hub: tuple[str, str | None], folder: Path, expected: str):
    """datasets.load_dataset(*hub); any failure (no internet, hub down, no `datasets`) is one line for the user."""
    print(f"data set {name!r} not found in {folder}; downloading {hub[0]} from the Hugging Face hub ...",
          file=sys.stderr)
    try:
        import datasets
        datasets.logging.set_verbosity_error()  # the one-line error below says what went wrong
        return datasets.load_dataset(*hub)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"data set {name!r} not found in {folder} (expected {expected}), and downloading {hub[0]} "
                        f"failed ({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run with "
                        f"internet access.") from None


def write_gzip_text(path: Path, text: str) -> None:
    """gzip'd UTF-8, written atomically: an interrupted download never leaves half a file."""
    def write(f) -> None:
        with gzip.GzipFile(fileobj=f, mode="wb") as gz:
            gz.write(text.encode("utf-8"))
    try:
        atomic_write(path, write)
    except OSError as e:
        raise UserError(f"downloaded the data but cannot write {path}: {e.strerror or e}") from None


def download_wikitext(folder: Path) -> None:
    """All three splits, in the offline format: the hub has one row per line, newline included, and blank lines
    became "" (they are " \\n" in the files)."""
    hub = fetch_from_hub("wikitext-2", WIKITEXT["hub"], folder, ", ".join(WIKITEXT["files"].values()))
    for hub_split, file in WIKITEXT["files"].items():
        write_gzip_text(folder / file, "".join(r["text"] or " \n" for r in hub[hub_split]))


def download_imdb_unsup(folder: Path) -> None:
    """The 50,000 unlabelled reviews, as imdb/unsup.csv.gz (text,label,id,rating with label -1 and rating 0; the hub
    has no review ids, so id is the row number)."""
    hub = fetch_from_hub("imdb", IMDB_UNSUP["hub"], folder, IMDB_UNSUP["file"])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["text", "label", "id", "rating"])
    w.writerows([r["text"], -1, i, 0] for i, r in enumerate(hub[IMDB_UNSUP["hub_split"]]))
    write_gzip_text(folder / IMDB_UNSUP["file"], out.getvalue())


# ----------------------------------------------------------------------------- text -> documents -> sentences

HEADING = re.compile(r"^ = [^=].* = $")          # " = Valkyria Chronicles III = " starts an article; " = = Plot = = " not
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")      # a space after . ! or ?


def split_sentences(text: str) -> list[str]:
    """Cut after ".", "!" or "?" and a space. Crude ("Mr. Smith" is cut too), but NSP only needs sentence-like pieces."""
    return [s for s in SENTENCE_END.split(text.strip()) if s]


def wikitext_documents(text: str) -> list[list[str]]:
    """WikiText -> one document per article (an article starts at a top-level heading). A section heading becomes a
    sentence of its own, without its "=" marks."""
    docs: list[list[str]] = []
    for line in text.split("\n"):
        if HEADING.match(line) or not docs:
            docs.append([])
        if line.lstrip().startswith("="):
            line = line.strip(" =")
        docs[-1].extend(split_sentences(line))
    return [d for d in docs if d]


def text_documents(text: str) -> list[list[str]]:
    """A plain text file -> documents. BERT's own input format: a blank line between documents (and, there, one sentence
    per line). A file without a blank line is taken as one document per line (one review per line, say)."""
    lines = text.splitlines()
    if any(not line.strip() for line in lines):
        blocks = re.split(r"\n[ \t\r]*\n", text)
        docs = [[s for line in block.splitlines() for s in split_sentences(line)] for block in blocks]
    else:
        docs = [split_sentences(line) for line in lines]
    return [d for d in docs if d]


def load_documents(data_dir: str | Path, corpus: list[str] | None = None, imdb_unsup: int = 50_000,
                   max_chars: int | None = None) -> list[list[str]]:
    """The pre-training documents, each a list of sentences: the --corpus files if given, else the articles of
    WikiText-2 train followed by the first `imdb_unsup` unlabelled IMDb reviews (one document each).
    `max_chars` keeps the first characters of each text file (smoke runs)."""
    if corpus:
        docs = []
        for name in corpus:
            text = read_corpus_file(Path(name))
            docs += text_documents(text[:max_chars] if max_chars else text)
        return docs
    docs = wikitext_documents(load_wikitext_train(data_dir, max_chars))
    if imdb_unsup:
        docs += [split_sentences(review) for review in load_imdb_unsup(data_dir, imdb_unsup)]
    return [d for d in docs if d]


def split_documents(n_docs: int) -> tuple[list[int], list[int]]:
    """(train, validation) document indices: every 100th document is held out (1%), spread over the whole corpus so that
    both sources are in it. A small corpus holds out more, never fewer than 2 documents (NSP's random B comes from
    another document), and keeps at least half for training."""
    if n_docs < 4:
        raise UserError(f"the corpus has {n_docs} document(s); pre-training needs at least 4 (2 or more are held "
                        f"out for validation). Separate documents with blank lines")
    step = min(VAL_EVERY, n_docs // 2)
    val = set(range(step // 2, n_docs, step))
    return [d for d in range(n_docs) if d not in val], sorted(val)


def read_corpus_file(path: Path) -> str:
    """A UTF-8 text file, gzip-compressed if its name ends in .gz."""
    if not path.is_file():
        raise UserError(f"corpus file not found: {path}")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            return f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (expected UTF-8 text, or gzip of it)") from None


def vocabulary_texts(documents: list[list[str]], docs: Iterable[int]) -> Iterator[str]:
    """The sentences a WordPiece vocabulary learns from: those of `docs` (the training documents, never the held-out
    ones), with WikiText's "<unk>" markers made spaces, since each becomes one [UNK] in the ids (encode_sentence)."""
    return (s.replace(UNKNOWN_WORD, " ") for d in docs for s in documents[d])
