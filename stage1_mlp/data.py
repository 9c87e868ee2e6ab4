"""Stage 1 data: read a labelled text data set, turn each text into a bag of word n-grams, batch the bags.

    files on disk (or a download) -> texts + labels -> tokens -> unigrams + bigrams -> ids -> batches

The model never sees word order beyond the bigrams, so a text becomes one flat list of ids:
the same layout (ids + offsets) that `nn.EmbeddingBag` takes.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from scripts.common import UserError

# ----------------------------------------------------------------------------- the data sets

# Each entry says where the files live under the data directory, what they hold, and where a
# missing copy comes from. `eval_split` is the split the final accuracy is reported on: test
# where it has labels, GLUE's dev set for SST-2 (GLUE test labels are private).
DATASETS = {
    "imdb": {
        "folder": "imdb", "files": {"train": "train.csv.gz", "test": "test.csv.gz"},
        "classes": ["neg", "pos"], "eval_split": "test",
        "hub": ("stanfordnlp/imdb", None), "hub_splits": {"train": "train", "test": "test"},
    },
    "sst2": {
        "folder": "glue/sst2", "files": {"train": "train.tsv.gz", "dev": "dev.tsv.gz"},
        "classes": ["negative", "positive"], "eval_split": "dev", "phrases": True,
        "hub": ("nyu-mll/glue", "sst2"), "hub_splits": {"train": "train", "dev": "validation"},
    },
    "ag_news": {
        "folder": "ag_news", "files": {"train": "train.csv.gz", "test": "test.csv.gz"},
        "classes": ["World", "Sports", "Business", "Sci/Tech"], "eval_split": "test",
        "hub": ("fancyzhx/ag_news", None), "hub_splits": {"train": "train", "test": "test"},
    },
}


def dataset_info(name: str) -> dict:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def _read_imdb(path: Path) -> tuple[list[str], list[int]]:
    # header: text,label,id,rating   (label 0 = neg, 1 = pos)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def _read_sst2(path: Path) -> tuple[list[str], list[int]]:
    # header: sentence<TAB>label. Bare quotes occur in sentences, so quoting must be off.
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def _read_ag_news(path: Path) -> tuple[list[str], list[int]]:
    # no header: "class_index","title","description" with class_index 1..4; text = title + " " + description
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return [f"{title} {desc}".strip() for _, title, desc in rows], [int(c) - 1 for c, _, _ in rows]


READERS = {"imdb": _read_imdb, "sst2": _read_sst2, "ag_news": _read_ag_news}


def load_split(name: str, data_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """Texts and integer labels of one split, downloading the data set first if its files are missing."""
    info = dataset_info(name)
    folder = Path(data_dir) / info["folder"]
    path = folder / info["files"][split]
    if not path.is_file():
        download(name, data_dir)
    try:
        return READERS[name](path)
    except (OSError, EOFError, ValueError, KeyError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another "
                        f"format? see {folder / 'SOURCE.md'} for the expected one)") from None


# ----------------------------------------------------------------------------- download when missing

def download(name: str, data_dir: str | Path) -> None:
    """Fetch a data set with Hugging Face `datasets` and store it in the same format as the offline copy."""
    info = dataset_info(name)
    folder = Path(data_dir) / info["folder"]
    expected = ", ".join(info["files"].values())
    hub_id, config = info["hub"]
    print(f"data set {name!r} not found in {folder}; downloading {hub_id} from the Hugging Face hub ...",
          file=sys.stderr)
    try:
        import datasets
        import huggingface_hub
        datasets.logging.set_verbosity_error()       # keep failed retries from filling the screen:
        huggingface_hub.logging.set_verbosity_error()  # the one-line error below says what went wrong
        hub = datasets.load_dataset(hub_id, config)
    except Exception as e:  # no internet, hub down, datasets missing: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"data set {name!r} not found in {folder} (expected {expected}), and downloading {hub_id} failed "
            f"({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run with internet access."
        ) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, hub_split in info["hub_splits"].items():
            rows = [(r["text" if name != "sst2" else "sentence"], int(r["label"])) for r in hub[hub_split]]
            _write_split(name, folder / info["files"][split], rows)
    except OSError as e:
        raise UserError(f"downloaded {hub_id} but cannot write it to {folder}: {e.strerror or e}") from None


def _write_split(name: str, path: Path, rows: list[tuple[str, int]]) -> None:
    """Write (text, label) rows in the offline format of `name`, atomically."""
    tmp = path.with_name(path.name + ".part")
    with gzip.open(tmp, "wt", encoding="utf-8", newline="") as f:
        if name == "imdb":  # the hub has no review id or star rating: id = row number, rating left empty
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label", "id", "rating"])
            w.writerows([text, label, i, ""] for i, (text, label) in enumerate(rows))
        elif name == "sst2":
            f.write("sentence\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in rows)
        else:  # ag_news: the hub joined title and description into one text, so the title column stays empty
            w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
            w.writerows([label + 1, "", text] for text, label in rows)
    tmp.replace(path)


# ----------------------------------------------------------------------------- tokens and n-grams

_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)  # IMDb reviews keep their <br /> tags
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")     # words (with inner apostrophes), or one punctuation mark


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: "Great film!<br />10/10" -> great film ! 10 / 10."""
    return _TOKEN.findall(_HTML_BREAK.sub(" ", text.lower()))


def ngrams(tokens: list[str], n: int = 2) -> list[str]:
    """The tokens themselves plus every run of 2..n adjacent tokens, joined by a space."""
    grams = list(tokens)
    for k in range(2, n + 1):
        grams += [" ".join(tokens[i:i + k]) for i in range(len(tokens) - k + 1)]
    return grams


# ----------------------------------------------------------------------------- vocabulary

UNK = "<unk>"


class Vocab:
    """n-gram <-> id. Built on the training split only, stored as JSON (never pickle).

    Unknown single words map to <unk> (id 0), so a text of unseen words still has something in its bag;
    unknown bigrams are dropped, since most bigrams are rare and would all collapse into <unk>.
    """

    def __init__(self, itos: list[str], ngram: int):
        self.itos = itos
        self.ngram = ngram
        self.stoi = {s: i for i, s in enumerate(itos)}

    @classmethod
    def build(cls, texts: list[str], ngram: int = 2, min_freq: int = 2, max_size: int | None = None) -> "Vocab":
        counts = Counter()
        for text in texts:
            counts.update(set(ngrams(tokenize(text), ngram)))  # document frequency: a spam word counts once a text
        kept = sorted((g for g, c in counts.items() if c >= min_freq), key=lambda g: (-counts[g], g))
        return cls([UNK] + kept[:max_size], ngram)  # sorted before the cut: ties never depend on the order of a set

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """The ids of the distinct n-grams of `text`, in order of first appearance.

        Each n-gram counts once per text (a binary bag, as in NBSVM): "bad bad bad" says little more
        than one "bad", and without repeats long reviews cannot drown their rarer, telling n-grams.
        """
        ids = {}
        for g in ngrams(tokenize(text), self.ngram):
            i = self.stoi.get(g)
            if i is not None:
                ids[i] = None
            elif " " not in g:
                ids[0] = None
        return list(ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"ngram": self.ngram, "itos": self.itos}, ensure_ascii=False),
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(obj["itos"], obj["ngram"])
        except FileNotFoundError:
            raise UserError(f"vocabulary not found: {path} (train.py writes it next to the checkpoint)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read vocabulary {path}: {type(e).__name__}: {e}") from None

    def fingerprint(self) -> str:
        """A short hash a checkpoint keeps, so a vocabulary from another run is caught before it gives nonsense."""
        return hashlib.sha256("\n".join(self.itos).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- bags and batches

@dataclass
class Bags:
    """A whole split as bags of ids, stored flat: the ids of text i are ids[starts[i]:starts[i+1]]."""
    ids: torch.Tensor     # (total n-grams,) int64
    starts: torch.Tensor  # (N + 1,) int64
    labels: torch.Tensor  # (N,) int64

    @classmethod
    def from_texts(cls, texts: list[str], labels: list[int], vocab: Vocab) -> "Bags":
        encoded = [vocab.encode(t) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        starts = torch.zeros(len(encoded) + 1, dtype=torch.long)
        starts[1:] = torch.cumsum(lengths, 0)
        ids = torch.tensor([i for e in encoded for i in e], dtype=torch.long)
        return cls(ids, starts, torch.tensor(labels, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, offsets, labels) for the texts at `index`: the EmbeddingBag input format."""
        begin, end = self.starts[index], self.starts[index + 1]
        ids = torch.cat([self.ids[b:e] for b, e in zip(begin.tolist(), end.tolist())])  # (sum of lengths,)
        offsets = torch.zeros(len(index), dtype=torch.long)                              # (B,)
        offsets[1:] = torch.cumsum(end - begin, 0)[:-1]
        return ids, offsets, self.labels[index]


def train_val_split(n: int, val_fraction: float, seed: int,
                    groups: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a validation set out of train with a fixed seed; the test split stays untouched until the end.

    With `groups`, whole groups go to one side or the other (see `phrase_groups` for why).
    """
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        perm = torch.randperm(n, generator=gen)
        n_val = max(1, int(round(n * val_fraction)))
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    group = torch.tensor(groups)                                     # (n,) group id of each row
    unique = group.unique()
    shuffled = unique[torch.randperm(len(unique), generator=gen)]
    is_val = torch.isin(group, shuffled[:max(1, int(round(len(unique) * val_fraction)))])
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)


def phrase_groups(texts: list[str]) -> list[int]:
    """Group id per row: the row of the longest training text that contains it as a run of tokens.

    SST-2's training set holds every sentence *and* its sub-phrases ("the acting is superb", "is superb",
    "superb", ...). A validation set drawn row by row would hold phrases whose sentence is in train:
    it then reads ~0.92 while full unseen sentences (the dev set) score ~0.81, and early stopping
    trusts the wrong number. Holding out whole sentences with all their phrases removes that leak.
    """
    tokens = [t.split() for t in texts]
    row_of = {}
    for i, toks in enumerate(tokens):
        row_of.setdefault(" ".join(toks), i)
    group = [-1] * len(texts)
    for i in sorted(range(len(texts)), key=lambda i: -len(tokens[i])):  # longest first: sentences found first
        if group[i] != -1:
            continue
        first = row_of[" ".join(tokens[i])]
        if group[first] != -1:                       # a repeat of a row already placed goes where it went
            group[i] = group[first]
            continue
        group[i] = i                                 # not inside any longer text: a sentence of its own
        toks = tokens[i]
        for a in range(len(toks)):
            for b in range(a + 1, len(toks) + 1):    # every run of tokens of this sentence ...
                j = row_of.get(" ".join(toks[a:b]))
                if j is not None and group[j] == -1:  # ... that is itself a row joins its group
                    group[j] = i
    return group


def subsample(texts: list[str], labels: list[int], k: int, seed: int) -> tuple[list[str], list[int]]:
    """A random k-example slice (rows are often sorted by label, so the first k would be one class)."""
    if k >= len(texts):
        return texts, labels
    idx = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:k].sort().values.tolist()
    return [texts[i] for i in idx], [labels[i] for i in idx]
