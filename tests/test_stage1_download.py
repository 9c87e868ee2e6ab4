"""Stage 1 download path: with no local files, load_split fetches from the hub (patched here) and stores
the data set in exactly the offline format, so later runs read it like the offline copy."""
from __future__ import annotations

import csv
import gzip

import pytest

from stage1_mlp.data import load_split

datasets = pytest.importorskip("datasets")


def _split(columns: dict) -> "datasets.Dataset":
    return datasets.Dataset.from_dict(columns)


# Hub-shaped data sets: the same split names and columns as the real ones. Texts hold a quote, a comma,
# a <br /> tag and non-ASCII letters, the characters that break a wrong writer or reader.
IMDB_TRAIN = {"text": ['A "great" film, truly.<br /><br />Loved it', "Awful, boring; I hated it",
                       "Café crème: superb"],
              "label": [1, 0, 1]}
IMDB_TEST = {"text": ["dull and bad", 'the "best" one'], "label": [0, 1]}
SST2_TRAIN = {"sentence": ['" a bare quote opens this , great', "it 's dull", 'a " lone quote'],
              "label": [1, 0, 0], "idx": [0, 1, 2]}
SST2_VAL = {"sentence": ["wonderful film .", 'awful "'], "label": [1, 0], "idx": [0, 1]}
AG_TRAIN = {"text": ['Talks "stall" at summit, envoy says', "Team wins cup", "Stocks fall", "New chip, faster"],
            "label": [0, 1, 2, 3]}
AG_TEST = {"text": ["Minister resigns", 'Chip maker "beats" forecasts'], "label": [0, 3]}


def hub_imdb():
    return datasets.DatasetDict({
        "train": _split(IMDB_TRAIN), "test": _split(IMDB_TEST),
        "unsupervised": _split({"text": ["no label here"], "label": [-1]}),
    })


def hub_sst2():
    return datasets.DatasetDict({
        "train": _split(SST2_TRAIN), "validation": _split(SST2_VAL),
        "test": _split({"sentence": ["hidden label ."], "label": [-1], "idx": [0]}),
    })


def hub_ag_news():
    return datasets.DatasetDict({"train": _split(AG_TRAIN), "test": _split(AG_TEST)})


@pytest.fixture
def fake_hub(monkeypatch):
    """Patch datasets.load_dataset to serve the hub-shaped data sets above and record each call."""
    calls = []
    served = {("stanfordnlp/imdb", None): hub_imdb, ("nyu-mll/glue", "sst2"): hub_sst2,
              ("fancyzhx/ag_news", None): hub_ag_news}

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return served[(path, name)]()
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def _raw_lines(path) -> list[str]:
    with gzip.open(path, "rb") as f:
        data = f.read()
    assert b"\r" not in data  # LF line endings only
    return data.decode("utf-8").split("\n")


def test_download_imdb(tmp_path, fake_hub):
    """IMDb: fetched from stanfordnlp/imdb, written as CSV with header text,label,id,rating, read back unchanged."""
    texts, labels = load_split("imdb", tmp_path, "train")
    assert fake_hub == [("stanfordnlp/imdb", None)]
    assert (texts, labels) == (IMDB_TRAIN["text"], IMDB_TRAIN["label"])
    assert load_split("imdb", tmp_path, "test") == (IMDB_TEST["text"], IMDB_TEST["label"])

    folder = tmp_path / "imdb"
    assert sorted(p.name for p in folder.iterdir()) == ["test.csv.gz", "train.csv.gz"]  # no unsup, no leftovers
    assert _raw_lines(folder / "train.csv.gz")[0] == "text,label,id,rating"
    with gzip.open(folder / "train.csv.gz", "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["text", "label", "id", "rating"]
    assert [r[0] for r in rows[1:]] == IMDB_TRAIN["text"]
    assert [int(r[1]) for r in rows[1:]] == IMDB_TRAIN["label"]
    assert [r[2] for r in rows[1:]] == ["0", "1", "2"]  # id = row number
    assert all(len(r) == 4 for r in rows)


def test_download_sst2(tmp_path, fake_hub):
    """SST-2: fetched from nyu-mll/glue config sst2; train and validation (as dev) written as unquoted TSV."""
    assert load_split("sst2", tmp_path, "dev") == (SST2_VAL["sentence"], SST2_VAL["label"])
    assert fake_hub == [("nyu-mll/glue", "sst2")]
    assert load_split("sst2", tmp_path, "train") == (SST2_TRAIN["sentence"], SST2_TRAIN["label"])

    folder = tmp_path / "glue" / "sst2"
    assert sorted(p.name for p in folder.iterdir()) == ["dev.tsv.gz", "train.tsv.gz"]
    lines = _raw_lines(folder / "train.tsv.gz")
    assert lines[0] == "sentence\tlabel"
    assert lines[1:] == [f"{s}\t{y}" for s, y in zip(SST2_TRAIN["sentence"], SST2_TRAIN["label"])] + [""]
    assert lines[1].startswith('" a bare quote')  # no quoting: the quote is written as is, not doubled


def test_download_ag_news(tmp_path, fake_hub):
    """AG News: fetched from fancyzhx/ag_news; every field quoted, class_index = label + 1, text round-trips."""
    assert load_split("ag_news", tmp_path, "train") == (AG_TRAIN["text"], AG_TRAIN["label"])
    assert load_split("ag_news", tmp_path, "test") == (AG_TEST["text"], AG_TEST["label"])
    assert fake_hub == [("fancyzhx/ag_news", None)]

    path = tmp_path / "ag_news" / "train.csv.gz"
    lines = [line for line in _raw_lines(path) if line]
    assert len(lines) == len(AG_TRAIN["text"])  # no header
    assert all(line.startswith('"') and line.endswith('"') and line.count('","') >= 2 for line in lines)
    assert '""stall""' in lines[0]  # an inner quote is doubled inside the quoted field
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert all(len(r) == 3 for r in rows)


def test_second_load_does_not_download_again(tmp_path, fake_hub):
    """Once the files are written, later load_split calls read them and never call the hub again."""
    first = load_split("imdb", tmp_path, "train")
    assert len(fake_hub) == 1
    assert load_split("imdb", tmp_path, "train") == first
    load_split("imdb", tmp_path, "test")
    assert len(fake_hub) == 1
