"""GLUE for fine-tuning BERT: the six tasks we have offline, their TSV files, their metrics, and batches.

    <data-dir>/glue/<task>/{train,dev,test}.tsv.gz    (a plain .tsv is read too)
    -> rows (text a, text b or none, label) -> [CLS] a [SEP] (b [SEP]) ids + segment ids -> padded batches

| task | input | labels | GLUE metric (headline first) |
|---|---|---|---|
| sst2 (SST-2) | one sentence: a film review phrase | 0 negative, 1 positive | accuracy |
| cola (CoLA) | one sentence | 0 unacceptable, 1 acceptable English | Matthews correlation (+ accuracy) |
| mrpc (MRPC) | two sentences | 1 = paraphrases | F1 of class 1 (+ accuracy) |
| rte (RTE) | premise, hypothesis | entailment, not_entailment | accuracy |
| stsb (STS-B) | two sentences | similarity 0.0 .. 5.0 (regression) | Pearson (+ Spearman) correlation |
| wnli (WNLI) | premise, hypothesis | 1 entailment, 0 not | accuracy |

Why these metrics. Accuracy hides a skewed task: 69% of CoLA dev is "acceptable", so always saying yes scores 0.69.
Matthews correlation is the correlation between predicted and true labels: 0 for any constant or random guess, 1 for
perfect, -1 for always wrong. MRPC is 68% paraphrases; F1 of the positive class asks how many paraphrases were found
(recall) and how many found ones were right (precision). STS-B is a score, so it is judged by how well the predicted
scores go up and down with the true ones: Pearson (linear) and Spearman (the same on ranks: only the order matters).

Reading the files. Every TSV is read with csv.QUOTE_NONE: sentences hold bare `"` characters, and default CSV quoting
would join rows up to the next quote (STS-B test shrinks from 1,379 rows to 1,120). CoLA's train and dev files have no
header; MRPC's train and dev headers start with a UTF-8 byte order mark (read as utf-8-sig). Test files have an
`index` column and no labels (GLUE keeps them private): fine-tuning writes predictions for them in the format the GLUE
server takes, and scores itself on dev.

When a task's files are missing, `load_split` downloads it with Hugging Face `datasets` (`nyu-mll/glue`, our dev is
its `validation`) and writes the missing files in exactly the local layout; the next run reads them like the offline
copy. The hub lacks some columns (CoLA's source, MRPC's sentence ids, STS-B's genre, ...): they are left empty.
"""
from __future__ import annotations

import csv
import gzip
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from scripts.common import UserError, atomic_write, atomic_write_text

SPLITS = ("train", "dev", "test")
HUB_ID = "nyu-mll/glue"
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclass(frozen=True)
class Task:
    name: str                      # GLUE's own name: the predictions file is <name>.tsv
    columns: tuple[str, ...]       # the columns of train.tsv and dev.tsv, in order
    test_columns: tuple[str, ...]  # the columns of test.tsv (an index, the texts, no label)
    text: tuple[str, ...]          # one column (single sentence) or two (a pair), in the order BERT reads them
    label: str                     # the column with the label or the score
    labels: tuple[str, ...] | None  # label strings in class-id order, as written in the files; None: a float score
    metrics: tuple[str, ...]       # what is reported; the first is the headline (and chooses the best epoch)
    header: bool = True            # train/dev start with a header line (not CoLA)
    bom: bool = False              # the train/dev header starts with a UTF-8 byte order mark (MRPC)
    phrases: bool = False          # train holds the phrases of its sentences too (SST-2): validate on whole sentences

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels else 1   # 1 output = regression

    @property
    def headline(self) -> str:
        return self.metrics[0]


STSB_COLUMNS = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2")
TASKS = {
    "sst2": Task("SST-2", ("sentence", "label"), ("index", "sentence"), ("sentence",), "label", ("0", "1"),
                 ("accuracy",), phrases=True),
    "cola": Task("CoLA", ("source", "label", "original_label", "sentence"), ("index", "sentence"), ("sentence",),
                 "label", ("0", "1"), ("matthews_corr", "accuracy"), header=False),
    "mrpc": Task("MRPC", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                 ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("#1 String", "#2 String"), "Quality",
                 ("0", "1"), ("f1", "accuracy"), bom=True),
    "rte": Task("RTE", ("index", "sentence1", "sentence2", "label"), ("index", "sentence1", "sentence2"),
                ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",)),
    "stsb": Task("STS-B", STSB_COLUMNS + ("score",), STSB_COLUMNS, ("sentence1", "sentence2"), "score", None,
                 ("pearson", "spearman")),
    "wnli": Task("WNLI", ("index", "sentence1", "sentence2", "label"), ("index", "sentence1", "sentence2"),
                 ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",)),
}
# On the hub a label is an integer: the position of our label string in every task here (RTE: entailment = 0;
# WNLI: not_entailment = 0), and the score itself for STS-B.
HUB_TEXT = {"sst2": ("sentence",), "cola": ("sentence",)}   # the others: sentence1, sentence2
FLATTEN = str.maketrans("\t\r\n", "   ")   # a tab or line break inside a hub text would break a TSV line


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown GLUE task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class Split:
    """One split as read from its file. b is None for single-sentence tasks; labels is None for test."""
    a: list[str]
    b: list[str] | None
    labels: list[int] | list[float] | None   # class ids (positions in Task.labels), or scores for STS-B
    index: list[str]                          # the test file's index column (row numbers elsewhere)

    def __len__(self) -> int:
        return len(self.a)

    def head(self, n: int) -> Split:
        """The first n rows (quick runs)."""
        return Split(self.a[:n], None if self.b is None else self.b[:n],
                     None if self.labels is None else self.labels[:n], self.index[:n])


# ----------------------------------------------------------------------------- reading the files

def split_path(task: str, data_dir: str | Path, split: str) -> Path:
    """<data-dir>/glue/<task>/<split>.tsv.gz, or <split>.tsv where only that exists."""
    folder = Path(data_dir) / "glue" / task
    plain = folder / f"{split}.tsv"
    return plain if plain.is_file() and not (folder / f"{split}.tsv.gz").is_file() else folder / f"{split}.tsv.gz"


def read_tsv(task: str, path: Path, split: str) -> Split:
    """Parse one file of `task` (see the module docstring for the layouts). Any deviation is a UserError."""
    t = get_task(task)
    columns = t.test_columns if split == "test" else t.columns
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:   # utf-8-sig: drops MRPC's byte order mark
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)  # never quoting: `"` is a plain character
        if t.header or split == "test":
            header = next(rows, None)
            if header is None or tuple(header) != columns:
                raise ValueError(f"the header is {header}, expected {list(columns)}")
        a, b, labels, index = [], [], [], []
        for row in rows:
            if not row:
                continue  # a blank line (none in the real files)
            if len(row) != len(columns):
                raise ValueError(f"line {rows.line_num} has {len(row)} tab-separated fields, expected {len(columns)}")
            row = dict(zip(columns, row))
            a.append(row[t.text[0]])
            if len(t.text) == 2:
                b.append(row[t.text[1]])
            index.append(row.get("index", str(len(index))))
            if split != "test":
                labels.append(parse_label(t, row[t.label], rows.line_num))
    return Split(a, b if len(t.text) == 2 else None, None if split == "test" else labels, index)


def parse_label(t: Task, value: str, line: int) -> int | float:
    if t.labels is None:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"line {line}: score {value!r} is not a number") from None
    if value not in t.labels:
        raise ValueError(f"line {line}: label {value!r} is not one of {list(t.labels)}")
    return t.labels.index(value)


def load_split(task: str, data_dir: str | Path, split: str) -> Split:
    """One split of a GLUE task. If its file is missing, the task is downloaded first (every missing file of it)."""
    get_task(task)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; GLUE splits are {', '.join(SPLITS)}")
    path = split_path(task, data_dir, split)
    if not path.is_file():
        download(task, data_dir)
        path = split_path(task, data_dir, split)
    try:
        return read_tsv(task, path, split)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another format? "
                        f"see {path.parent / 'SOURCE.md'} for the expected one)") from None


# ----------------------------------------------------------------------------- download when missing

def download(task: str, data_dir: str | Path) -> None:
    """Fetch `nyu-mll/glue` config `task` and write the missing split files in the local format (atomically)."""
    t = get_task(task)
    folder = Path(data_dir) / "glue" / task
    print(f"GLUE task {task!r} not complete in {folder}; downloading {HUB_ID} ({task}) from the Hugging Face hub ...",
          file=sys.stderr)
    try:
        import datasets
        import huggingface_hub
        datasets.logging.set_verbosity_error()       # keep failed retries from filling the screen:
        huggingface_hub.logging.set_verbosity_error()  # the one-line error below says what went wrong
        hub = datasets.load_dataset(HUB_ID, task)
    except Exception as e:  # no internet, hub down, datasets missing: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"GLUE task {t.name} not found in {folder} (expected train.tsv.gz, dev.tsv.gz, test.tsv.gz), and "
            f"downloading {HUB_ID} ({task}) failed ({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, "
            f"or run with internet access.") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, hub_split in HUB_SPLITS.items():
            if not split_path(task, data_dir, split).is_file():   # never overwrite a local file
                write_split(task, folder / f"{split}.tsv.gz", split, hub[hub_split])
    except OSError as e:
        raise UserError(f"downloaded {HUB_ID} ({task}) but cannot write it to {folder}: {e.strerror or e}") from None


def hub_row(task: str, split: str, record: dict, i: int) -> list[str]:
    """One hub record -> the fields of one line of our file. Tabs and line breaks in a text become spaces."""
    t = TASKS[task]
    texts = [str(record[c]).translate(FLATTEN) for c in HUB_TEXT.get(task, ("sentence1", "sentence2"))]
    fields = dict(zip(t.text, texts))
    fields["index"] = str(record.get("idx", i))
    if split != "test":
        label = record["label"]
        fields[t.label] = f"{float(label):.3f}" if t.labels is None else t.labels[int(label)]   # STS-B: "3.800"
        if task == "cola":
            fields["original_label"] = "" if label == 1 else "*"   # CoLA's own mark of an unacceptable sentence
    columns = t.test_columns if split == "test" else t.columns
    return [fields.get(c, "") for c in columns]   # columns the hub lacks stay empty


def write_split(task: str, path: Path, split: str, records) -> None:
    """The hub's records as one of our files, gzip'd, written atomically: a download cut short leaves no file."""
    t = TASKS[task]
    lines = []
    if split == "test" or t.header:
        lines.append(("\ufeff" if t.bom and split != "test" else "") + "\t".join(
            t.test_columns if split == "test" else t.columns) + "\n")
    lines += ["\t".join(hub_row(task, split, r, i)) + "\n" for i, r in enumerate(records)]

    def write(f) -> None:
        with gzip.GzipFile(fileobj=f, mode="wb") as gz:
            gz.write("".join(lines).encode("utf-8"))
    atomic_write(path, write)


# ----------------------------------------------------------------------------- metrics, from scratch

def accuracy(preds: list[int], labels: list[int]) -> float:
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def confusion(preds: list[int], labels: list[int], n: int = 2) -> list[list[int]]:
    """counts[true][predicted]."""
    counts = [[0] * n for _ in range(n)]
    for p, y in zip(preds, labels):
        counts[y][p] += 1
    return counts


def f1_binary(preds: list[int], labels: list[int], positive: int = 1) -> float:
    """F1 of the positive class: 2 precision recall / (precision + recall) = 2 TP / (2 TP + FP + FN); 0 when the
    positive class is neither predicted nor present."""
    tp = sum(p == positive and y == positive for p, y in zip(preds, labels))
    fp = sum(p == positive and y != positive for p, y in zip(preds, labels))
    fn = sum(p != positive and y == positive for p, y in zip(preds, labels))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_corr(preds: list[int], labels: list[int]) -> float:
    """(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for 0/1 labels: Pearson's correlation of the two 0/1
    columns. A factor of 0 in the root (one class never predicted, or never present) gives 0, as scikit-learn."""
    (tn, fp), (fn, tp) = confusion(preds, labels, 2)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def pearson(x: list[float], y: list[float]) -> float:
    """sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2). Undefined when x or y is constant
    (a model that predicts one score for everything): reported as 0, no linear relationship."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def average_ranks(x: list[float]) -> list[float]:
    """Rank 1 for the smallest value; tied values share the mean of the ranks they span: [10, 20, 20, 5] ->
    [2, 3.5, 3.5, 1]."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and x[order[end + 1]] == x[order[start]]:
            end += 1                                       # order[start..end] hold one value
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1        # the mean of ranks start+1 .. end+1
        start = end + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Pearson's correlation of the ranks: 1 when y rises whenever x does, however unevenly."""
    return pearson(average_ranks(x), average_ranks(y))


METRICS = {"accuracy": accuracy, "f1": f1_binary, "matthews_corr": matthews_corr, "pearson": pearson,
           "spearman": spearman}


def compute_metrics(task: str, preds: list, labels: list) -> dict[str, float]:
    """The task's metrics, headline first, rounded to 4 decimals."""
    return {name: round(METRICS[name](preds, labels), 4) for name in get_task(task).metrics}


# ----------------------------------------------------------------------------- ids and batches

@dataclass
class Encoded:
    """A split as BERT input: per row the ids and segment ids of [CLS] a [SEP] (b [SEP]); labels as in Split; the
    tokenizer's [PAD] id, what make_batch pads with. A pair encoded for a bi-encoder (encode(..., separately=True))
    keeps its two sentences apart instead: ids holds [CLS] a [SEP] and ids_b holds [CLS] b [SEP]."""
    ids: list[list[int]]
    segments: list[list[int]]
    labels: list | None
    pad_id: int = 0
    ids_b: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        """Tokens per row: what a batch of it is padded to (the longer sentence of a separately encoded pair)."""
        if self.ids_b is None:
            return [len(ids) for ids in self.ids]
        return [max(len(a), len(b)) for a, b in zip(self.ids, self.ids_b)]


def encode(tok, split: Split, max_len: int, separately: bool = False) -> Encoded:
    """Tokenise every row, cut to max_len tokens (a pair loses tokens from its longer text first). separately=True
    encodes each sentence of a pair alone, each cut to max_len, for a bi-encoder (model.BertBiEncoder)."""
    ids_b = None
    if split.b is None or separately:
        pairs = [tok.encode_single(a, max_len) for a in split.a]
        if split.b is not None:
            ids_b = [tok.encode_single(b, max_len)[0] for b in split.b]
    else:
        pairs = [tok.encode_pair(a, b, max_len) for a, b in zip(split.a, split.b)]
    return Encoded([p[0] for p in pairs], [p[1] for p in pairs], split.labels, tok.pad_id, ids_b)


def make_batch(enc: Encoded, idx: list[int], device):
    """Rows idx of enc, right-padded with its [PAD] to the longest -> ids, segments, attention mask (B, T) and labels
    (B,) or None. A separately encoded pair gives 2B rows: sentence a of every row first, then every sentence b, so
    that one forward pass encodes both sides with the same weights (model.BertBiEncoder splits them again)."""
    rows = [enc.ids[i] for i in idx]
    if enc.ids_b is not None:
        rows += [enc.ids_b[i] for i in idx]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), enc.pad_id, dtype=torch.long)
    segments = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for row, r in enumerate(rows):
        n = len(r)
        ids[row, :n] = torch.tensor(r)
        if row < len(idx):                                         # a single sentence's segment ids are all 0
            segments[row, :n] = torch.tensor(enc.segments[idx[row]])
        mask[row, :n] = 1                                          # 1 = a real token, 0 = a pad
    labels = None
    if enc.labels is not None:
        labels = torch.tensor([enc.labels[i] for i in idx])       # long class ids, or float scores (STS-B)
        labels = labels.to(device)
    return ids.to(device), segments.to(device), mask.to(device), labels


# ----------------------------------------------------------------------------- held-out validation, batches of a length

QUICK_ROWS = {"train": 2_000, "dev": 200, "test": 200}  # --quick: the first rows of each split (evaluate.py: dev too)


def val_count(spec: float | None, n_train: int, phrases: bool = False) -> int:
    """--val-size: None = 10% of train, at most 2,000 (a train set of phrases, SST-2: at most 500 sentences); below 1
    a fraction of train; else a number of examples."""
    if spec is None:
        return min(500 if phrases else 2000, round(0.1 * n_train))
    return round(spec * n_train) if spec < 1 else int(spec)


def sentence_split(texts: list[str], n_val: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train rows, val rows) for a train set made of phrases of sentences, as SST-2's is. Validation takes `n_val`
    whole sentences: examples that no other example contains, found in a random order. Train keeps every other
    example except the phrases inside a validation sentence, whose labels would give its answer away. What is left
    is the situation of dev: sentences the model has never seen, in whole or in part."""
    words = [t.split() for t in texts]
    padded = [f" {' '.join(w)} " for w in words]  # spaces around: "art" is not inside "party"
    having: dict[str, list[int]] = {}  # word -> the examples that hold it
    for i, w in enumerate(words):
        for word in set(w):
            having.setdefault(word, []).append(i)

    def whole(i: int) -> bool:  # only the examples with its rarest word can contain it
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
    train = [i for i in range(len(texts)) if i not in held and padded[i][1:-1] not in inside]
    return train, val


def train_val_rows(task: str, train: Split, val_size: float | None) -> tuple[list[int], list[int]]:
    """(train rows, validation rows) of a task's train split: --val-size examples held out to choose the best epoch
    (see val_count), whole sentences for SST-2 (sentence_split), a random sample for the others. The split is fixed
    (random.Random(0)), whatever --seed is: runs with different seeds are comparable."""
    t = get_task(task)
    n_val = val_count(val_size, len(train), t.phrases)
    if not 1 <= n_val < len(train):
        raise UserError(f"--val-size {val_size or '(default: 10%)'} holds out {n_val} of {len(train)} training "
                        f"examples; keep at least one for validation and one for training")
    rng = random.Random(0)
    if t.phrases:
        return sentence_split(train.a, n_val, rng)
    order = list(range(len(train)))
    rng.shuffle(order)
    return order[n_val:], order[:n_val]


def take(enc: Encoded, rows: list[int]) -> Encoded:
    return Encoded([enc.ids[i] for i in rows], [enc.segments[i] for i in rows], [enc.labels[i] for i in rows],
                   enc.pad_id, None if enc.ids_b is None else [enc.ids_b[i] for i in rows])


def length_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """One epoch's batches, each of examples of similar length. A batch is padded to its longest example, and SST-2
    mixes 3-token phrases with 60-token sentences: random batches would spend most of their compute on padding.
    Shuffle, cut into pools of `pool` batches, sort each pool by length, cut it into batches, shuffle the batches.
    Every example appears once; the order still changes every epoch, and the same rng state gives the same batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = pool * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def format_prediction(task: str, pred: int | float) -> str:
    """A prediction as GLUE's server reads it: the label string of the task's files, or the score clipped to 0..5."""
    t = get_task(task)
    return f"{min(5.0, max(0.0, pred)):.3f}" if t.labels is None else t.labels[pred]


def write_predictions(task: str, path: str | Path, index: list[str], preds: list) -> Path:
    """GLUE's submission format: header `index<TAB>prediction`, one row per test example, in file order."""
    atomic_write_text(path, "index\tprediction\n" + "".join(f"{i}\t{format_prediction(task, p)}\n"
                                                            for i, p in zip(index, preds)))
    return Path(path)
