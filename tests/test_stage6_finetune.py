"""Stage 6 fine-tuning: GLUE metrics against hand-computed values, every task's TSV layout (CoLA without a header,
MRPC's byte order mark, bare quotes), the download path (a patched `datasets.load_dataset`), fine-tuning from a tiny
pre-training checkpoint and from scratch, STS-B regression, GLUE-format predictions, exact resume, evaluate.py = what
finetune.py reported, fill_mask.py, and one-line errors. All on tiny files the tests write; nothing is downloaded."""
from __future__ import annotations

import gzip
import json
import math
import random
import subprocess
import sys

import pytest
import torch

from conftest import (FILLER, REPO_ROOT, SENTIMENT, assert_bad_checkpoints_rejected, assert_one_line_error, cli,
                      run_script)
from scripts.common import (UserError, load_checkpoint, portable, reference_command, resolved_config,
                            save_checkpoint)
from stage6_bert import evaluate, fill_mask, finetune, glue, predict
from stage6_bert.glue import average_ranks, compute_metrics, f1_binary, load_split, matthews_corr, pearson, spearman
from stage6_bert.model import BertConfig, BertPretrain
from stage6_bert.tokenizer import CLS_ID, MASK_ID, SEP_ID, WordPieceTokenizer

STAGE = "stage6_bert"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ["sst2", "cola", "mrpc", "rte", "stsb", "wnli"]
SIZES = {"train": 100, "dev": 30, "test": 20}
STSB_META = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
# The header lines exactly as each task's SOURCE.md describes them (None: CoLA's train and dev have none).
HEADERS = {
    "sst2": ("sentence\tlabel", "index\tsentence"),
    "cola": (None, "index\tsentence"),
    "mrpc": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "index\t#1 ID\t#2 ID\t#1 String\t#2 String"),
    "rte": ("index\tsentence1\tsentence2\tlabel", "index\tsentence1\tsentence2"),
    "stsb": (STSB_META + "\tscore", STSB_META),
    "wnli": ("index\tsentence1\tsentence2\tlabel", "index\tsentence1\tsentence2"),
}
COLA_COLUMNS = "source\tlabel\toriginal_label\tsentence"


# ----------------------------------------------------------------------------- tiny GLUE files

def _sentence(rng: random.Random, cls: int) -> str:
    words = rng.choices(FILLER, k=rng.randint(3, 6)) + rng.choices(SENTIMENT[cls], k=2)
    rng.shuffle(words)
    return " ".join(words) + " ."


def tiny_rows(task: str, split: str) -> list[dict]:
    """Rows of one tiny split as {column: text}, regenerated identically on every call. Single-sentence tasks: the
    sentiment words give the class away; pair tasks: label 1 (paraphrase, entailment, similar) when both texts have
    the same sentiment. Some texts start with a bare quote, some have one inside."""
    rng = random.Random(f"{task}-{split}")
    rows = []
    for i in range(SIZES[split]):
        c1 = i % 2
        c2 = c1 if rng.random() < 0.5 else 1 - c1
        a, b = _sentence(rng, c1), _sentence(rng, c2)
        if i % 10 == 3:
            a = '" ' + a                       # a leading quote: CSV quoting would swallow lines to the next quote
        elif i % 10 == 7:
            a = a.replace(" ", ' " ', 1)       # a lone quote inside
        same = int(c1 == c2)
        row = {"index": str(i)}
        if task in ("sst2", "cola"):
            row.update(sentence=a, label=str(c1), source="gj04", original_label="" if c1 else "*")
        elif task == "mrpc":
            row.update({"Quality": str(same), "#1 ID": str(1000 + i), "#2 ID": str(2000 + i), "#1 String": a,
                        "#2 String": b})
        elif task == "stsb":
            row.update(genre="main-captions", filename="MSRvid", year="2012test", old_index=f"{i:04d}",
                       source1="none", source2="none", sentence1=a, sentence2=b,
                       score=f"{(3.8 if same else 0.6) + rng.choice([0, 0.25, 0.4, 1.2]):.3f}")
        else:
            label = ("entailment" if same else "not_entailment") if task == "rte" else str(same)
            row.update(sentence1=a, sentence2=b, label=label)
        rows.append(row)
    return rows


def expected_split(task: str, split: str) -> tuple:
    """(a, b, labels, index) that load_split must return for a tiny split."""
    rows = tiny_rows(task, split)
    single = task in ("sst2", "cola")
    a = [r["sentence" if single else "#1 String" if task == "mrpc" else "sentence1"] for r in rows]
    b = None if single else [r["#2 String" if task == "mrpc" else "sentence2"] for r in rows]
    if split == "test":
        labels = None
    elif task == "stsb":
        labels = [float(r["score"]) for r in rows]
    elif task == "rte":
        labels = [["entailment", "not_entailment"].index(r["label"]) for r in rows]
    else:
        labels = [int(r["Quality" if task == "mrpc" else "label"]) for r in rows]
    return a, b, labels, [r["index"] for r in rows]


def write_tiny_glue(root, tasks=TASKS):
    for task in tasks:
        folder = root / "glue" / task
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev", "test"):
            header = HEADERS[task][1 if split == "test" else 0]
            columns = (header or COLA_COLUMNS).lstrip("\ufeff").split("\t")
            lines = ([header] if header else []) + ["\t".join(r[c] for c in columns) for r in tiny_rows(task, split)]
            text = "\n".join(lines) + ("" if task == "cola" and split == "dev" else "\n")  # CoLA dev: no final LF
            with gzip.open(folder / f"{split}.tsv.gz", "wt", encoding="utf-8", newline="") as f:
                f.write(text)
    return root


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """Tiny files of all six tasks, written once per module. Never modify them."""
    return write_tiny_glue(tmp_path_factory.mktemp("glue") / "data")


def make_pretrain_checkpoint(folder):
    """A checkpoint in the pre-training contract: a tiny random BertPretrain and a WordPiece trained on the tiny texts."""
    texts = [v for t in TASKS for s in SIZES for r in tiny_rows(t, s) for k, v in r.items()
             if k in ("sentence", "sentence1", "sentence2", "#1 String", "#2 String")]
    tok = WordPieceTokenizer.train(texts, 200)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), max_position=64, hidden=32, n_layer=2, n_head=2, intermediate=64)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(folder / "tokenizer.json")
    save_checkpoint({"stage": STAGE, "kind": "masked_lm", "config": cfg.to_dict(), "model": BertPretrain(cfg).state_dict(),
                     "tokenizer": "tokenizer.json", "args": {}, "state": {"step": 7}}, folder / "best.pt")
    return folder / "best.pt"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return make_pretrain_checkpoint(tmp_path_factory.mktemp("pretrain"))


def ft_args(task, data_dir, ckpt, out, *extra) -> list[str]:
    return ["--task", task, "--data-dir", str(data_dir), "--checkpoint", str(ckpt), "--out-dir", str(out),
            "--result", str(out / "result.json"), "--epochs", "2", "--batch-size", "16", "--lr", "1e-3",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def finetuned(glue_dir, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "sst2"
    finetune.main(ft_args("sst2", glue_dir, pretrained, out, "--epochs", "3"))
    return out


def read_predictions(path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "index\tprediction"
    return [line.split("\t") for line in lines[1:]]


# ----------------------------------------------------------------------------- metrics

def test_metrics_against_hand_computed_values():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]   # TP 2 (rows 0, 4), FP 1 (row 1), FN 1 (row 3), TN 1 (row 2)
    assert glue.accuracy(preds, labels) == pytest.approx(3 / 5)
    assert f1_binary(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))                  # 2/3
    assert matthews_corr(preds, labels) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))  # 1/6
    assert glue.confusion(preds, labels) == [[1, 1], [1, 2]]   # [true][predicted]
    assert matthews_corr([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corr([0, 1, 0], [1, 0, 1]) == pytest.approx(-1.0)
    # x 1 2 3 4, y 2 4 5 9: deviations (-1.5 -.5 .5 1.5), (-3 -1 0 4); sum xy 11, sum xx 5, sum yy 26
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(5 * 26))
    # ties share the mean rank: x ranks 1 2.5 2.5 4, y ranks 1 3 2 4 -> sum xy 4.5, sum xx 4.5, sum yy 5
    assert average_ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert average_ranks([10, 20, 20, 5, 20]) == [2, 4, 4, 1, 4]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)   # monotone, far from linear
    assert glue.compute_metrics("mrpc", preds, labels) == {"f1": 0.6667, "accuracy": 0.6}
    assert list(glue.compute_metrics("stsb", [1, 2, 3.5], [0, 2, 5])) == ["pearson", "spearman"]


def test_metric_edge_cases_are_zero_not_nan():
    assert matthews_corr([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0   # one class never predicted
    assert matthews_corr([1, 0, 1, 0], [1, 1, 1, 1]) == 0.0   # one class never present
    assert f1_binary([0, 0], [0, 0]) == 0.0
    assert pearson([2.5, 2.5, 2.5], [1, 2, 3]) == 0.0         # a constant prediction has no correlation
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0


def test_metrics_match_scipy_and_sklearn():
    """Imported, not skipped when missing: requirements.txt lists both as the references of this test."""
    import scipy.stats as stats
    import sklearn.metrics as skm

    rng = random.Random(0)
    y, p = [rng.randint(0, 1) for _ in range(200)], [rng.randint(0, 1) for _ in range(200)]
    assert matthews_corr(p, y) == pytest.approx(skm.matthews_corrcoef(y, p))
    assert f1_binary(p, y) == pytest.approx(skm.f1_score(y, p))
    x, z = [rng.choice([0, 0.5, 1, 1.5, 2]) for _ in range(200)], [rng.random() for _ in range(200)]
    assert pearson(x, z) == pytest.approx(stats.pearsonr(x, z)[0])
    assert spearman(x, z) == pytest.approx(stats.spearmanr(x, z)[0])   # many ties in x


# ----------------------------------------------------------------------------- reading the TSVs

@pytest.mark.parametrize("task", TASKS)
def test_every_task_layout_is_read_exactly(glue_dir, task):
    for split in ("train", "dev", "test"):
        got = load_split(task, glue_dir, split)
        assert (got.a, got.b, got.labels, got.index) == expected_split(task, split), (task, split)
        assert len(got) == SIZES[split]
    a = load_split(task, glue_dir, "train").a
    assert a[3].startswith('" ') and '"' in a[7] and a[4].count('"') == 0   # quotes are characters, not quoting


def test_cola_has_no_header_and_mrpc_a_byte_order_mark(glue_dir):
    raw = gzip.open(glue_dir / "glue" / "cola" / "train.tsv.gz", "rt", encoding="utf-8").readline()
    assert raw.startswith("gj04\t0\t*\t")       # the first line is a row: nothing may be skipped as a header
    assert load_split("cola", glue_dir, "train").labels[0] == 0
    raw = gzip.open(glue_dir / "glue" / "mrpc" / "dev.tsv.gz", "rb").read(3)
    assert raw == b"\xef\xbb\xbf"


def test_bad_files_are_one_line_user_errors(tmp_path):
    root = write_tiny_glue(tmp_path / "data", tasks=["sst2", "rte"])
    with pytest.raises(UserError, match="unknown GLUE task 'mnli'"):
        load_split("mnli", root, "train")
    path = root / "glue" / "sst2" / "dev.tsv.gz"
    path.write_bytes(path.read_bytes()[:40])                  # truncated gzip
    with pytest.raises(UserError, match=r"cannot read .*dev\.tsv\.gz"):
        load_split("sst2", root, "dev")
    cases = {"train": "sentence\tlabel\nfine .\tmaybe\n",          # a label that is not 0 or 1
             "dev": "text\tlabel\nfine .\t1\n",                      # another header
             "test": "index\tsentence\n0\tone\ttab too many\n"}      # a tab inside a sentence
    for split, text in cases.items():
        with gzip.open(root / "glue" / "sst2" / f"{split}.tsv.gz", "wt", encoding="utf-8") as f:
            f.write(text)
    for split, pattern in [("train", r"label 'maybe' is not one of \['0', '1'\]"), ("dev", r"the header is"),
                           ("test", r"line 2 has 3 tab-separated fields, expected 2")]:
        with pytest.raises(UserError, match=pattern) as e:
            load_split("sst2", root, split)
        assert "\n" not in str(e.value)
    with gzip.open(root / "glue" / "rte" / "dev.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n0\ta .\tb .\t1\n")   # RTE labels are words
    with pytest.raises(UserError, match=r"label '1' is not one of \['entailment', 'not_entailment'\]"):
        load_split("rte", root, "dev")


def test_plain_tsv_is_read_too(tmp_path):
    folder = tmp_path / "glue" / "wnli"
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_text("index\tsentence1\tsentence2" + ("" if split == "test" else "\tlabel")
                                              + "\n0\ta \"b\tc" + ("" if split == "test" else "\t1") + "\n")
    got = load_split("wnli", tmp_path, "dev")
    assert (got.a, got.b, got.labels) == (['a "b'], ["c"], [1])


# ----------------------------------------------------------------------------- download when missing

def hub_glue(task: str):
    """A DatasetDict shaped like nyu-mll/glue's config `task`: train / validation / test (labels -1), with idx."""
    ds = pytest.importorskip("datasets")
    hub = {}
    for split, hub_split in [("train", "train"), ("dev", "validation"), ("test", "test")]:
        a, b, labels, _ = expected_split(task, split)
        columns = {"sentence": a} if b is None else {"sentence1": a, "sentence2": b}
        columns["label"] = labels if labels is not None else [-1] * len(a)
        columns["idx"] = list(range(len(a)))
        features = ds.Features({**{k: ds.Value("string") for k in columns if k.startswith("sentence")},
                                "label": ds.Value("float32" if task == "stsb" else "int64"),
                                "idx": ds.Value("int32")})
        hub[hub_split] = ds.Dataset.from_dict(columns, features=features)
    return ds.DatasetDict(hub)


@pytest.fixture
def fake_hub(monkeypatch):
    """Patch datasets.load_dataset to serve the hub-shaped tiny tasks above and record each call."""
    ds = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return hub_glue(name)
    monkeypatch.setattr(ds, "load_dataset", load_dataset)
    return calls


def hub_unreachable(monkeypatch):
    """Make every download fail as it does offline (and never reach the network in a test)."""
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")
    try:
        import datasets
    except ImportError:   # without `datasets` the download fails anyway, with the same one-line error
        return
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


@pytest.mark.parametrize("task", TASKS)
def test_download_writes_the_local_format(tmp_path, fake_hub, task):
    for split in ("train", "dev", "test"):
        got = load_split(task, tmp_path, split)
        assert (got.a, got.b, got.labels, got.index) == expected_split(task, split), split
    assert fake_hub == [("nyu-mll/glue", task)]   # once: the later splits are read from the files it wrote
    folder = tmp_path / "glue" / task
    assert sorted(p.name for p in folder.iterdir()) == ["dev.tsv.gz", "test.tsv.gz", "train.tsv.gz"]
    lines = gzip.open(folder / "train.tsv.gz", "rt", encoding="utf-8", newline="").read().split("\n")
    assert lines[-1] == "" and all("\r" not in line for line in lines)
    header, test_header = HEADERS[task]
    if header:
        assert lines[0] == header        # the same columns (MRPC: with the byte order mark)
    else:
        assert lines[0].split("\t")[1:3] == ["0", "*"]   # CoLA: no header; "*" marks an unacceptable sentence
    assert gzip.open(folder / "test.tsv.gz", "rt", encoding="utf-8").readline().rstrip("\n") == test_header
    if task == "stsb":
        assert lines[1].split("\t")[-1] == tiny_rows("stsb", "train")[0]["score"]   # float32 3.8 -> "3.800"


def test_download_fills_only_missing_files_and_fails_in_one_line(tmp_path, fake_hub, capsys, monkeypatch):
    write_tiny_glue(tmp_path, tasks=["rte"])
    (tmp_path / "glue" / "rte" / "test.tsv.gz").unlink()
    before = (tmp_path / "glue" / "rte" / "train.tsv.gz").read_bytes()
    assert len(load_split("rte", tmp_path, "test")) == SIZES["test"]
    assert fake_hub == [("nyu-mll/glue", "rte")]
    assert (tmp_path / "glue" / "rte" / "train.tsv.gz").read_bytes() == before   # never overwritten
    hub_unreachable(monkeypatch)
    with pytest.raises(UserError) as e:
        load_split("cola", tmp_path / "empty", "train")
    msg = str(e.value)
    assert "\n" not in msg and "GLUE task CoLA not found in" in msg
    assert "expected train.tsv.gz, dev.tsv.gz, test.tsv.gz" in msg and "Couldn't reach" in msg


# ----------------------------------------------------------------------------- fine-tuning

def test_finetune_writes_checkpoints_results_and_glue_predictions(finetuned, pretrained, glue_dir):
    out = finetuned
    for name in ["best.pt", "last.pt", "tokenizer.json", "finetune.log", "SST-2.tsv"]:
        assert (out / name).is_file(), name
    assert (out / "result.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "tokenizer.json").read_bytes() == (pretrained.parent / "tokenizer.json").read_bytes()
    r = json.loads((out / "result.json").read_text())
    assert r["stage"] == STAGE and r["split"] == "dev" and r["headline_metric"] == "accuracy"
    assert r["task"] == "sst2" and r["from_scratch"] is False
    assert r["pretrained"] == {"checkpoint": portable(str(pretrained)), "step": 7} and "pretrained_step" not in r
    assert r["sizes"] == {"train": 90, "val": 10, "dev": SIZES["dev"], "test": SIZES["test"]}
    assert r["max_len"] == 64   # --max-len 128 is cut to the model's 64 positions
    best = load_checkpoint(out / "best.pt", stage=STAGE)
    assert (best["kind"], best["task"], best["num_labels"], best["tokenizer"]) == ("classifier", "sst2", 2, "tokenizer.json")
    assert "optimizer" not in best and best["state"]["best_epoch"] == r["best_epoch"]
    state = load_checkpoint(out / "last.pt")["state"]
    assert state["epoch"] == 3 and len(state["history"]["val"]) == 3
    assert r["best_val_accuracy"] == max(v for _, v in state["history"]["val"])
    rows = read_predictions(out / "SST-2.tsv")
    assert [i for i, _ in rows] == expected_split("sst2", "test")[3] and {p for _, p in rows} <= {"0", "1"}


def test_a_reference_run_records_its_name_and_declared_command(glue_dir, pretrained, tmp_path, monkeypatch):
    """A run whose settings are a declared reference run's writes <out-dir>/result.json with the run's name, the
    declared command and its resolved configuration (here a tiny run declared for the test)."""
    declared = ["stage6_bert/finetune.py", "--task", "wnli", "--checkpoint", str(pretrained), "--epochs", "1",
                "--batch-size", "16", "--lr", "1e-3"]
    monkeypatch.setattr(finetune, "REFERENCE_RUNS", {"glue_wnli": declared})
    out = tmp_path / "ref"
    finetune.main(["--lr", "0.001", "--task", "wnli", "--data-dir", str(glue_dir), "--checkpoint", str(pretrained),
                   "--out-dir", str(out), "--epochs", "1", "--batch-size", "16", "--device", "cpu"])
    r = json.loads((out / "result.json").read_text())
    assert r["run"] == "glue_wnli" and r["command"] == portable(reference_command(declared))
    assert r["hparams"] == resolved_config(finetune.parse_args(declared[1:]))
    assert r["test_predictions"] == portable(str(out / "WNLI.tsv")) and (out / "result.png").is_file()
    finetune.main(["--task", "wnli", "--data-dir", str(glue_dir), "--checkpoint", str(pretrained), "--out-dir",
                   str(out), "--epochs", "1", "--batch-size", "8", "--device", "cpu"])
    r = json.loads((out / "result.json").read_text())   # another batch size: an experiment, not the reference
    assert "run" not in r and "--batch-size 8" in r["command"]


def test_checkpoints_with_the_old_kind_names_still_load(pretrained, finetuned, tmp_path):
    """Before one vocabulary of kinds, Stage 6 wrote "pretrain" and "finetune": such checkpoints still load."""
    for src, old in ((pretrained, "pretrain"), (finetuned / "best.pt", "finetune")):
        folder = tmp_path / old
        folder.mkdir()
        ckpt = torch.load(src, weights_only=True)
        save_checkpoint({**ckpt, "kind": old}, folder / "best.pt")
        (folder / "tokenizer.json").write_bytes((src.parent / "tokenizer.json").read_bytes())
    assert predict.load_pretrained(tmp_path / "pretrain" / "best.pt")[3]["kind"] == "masked_lm"
    assert predict.load_finetuned(tmp_path / "finetune" / "best.pt", "cpu")[2]["kind"] == "classifier"


def test_finetune_learns_the_tiny_task(glue_dir, pretrained, tmp_path):
    """The tiny sentences give their class away by their sentiment words: a fine-tune long enough to leave the
    chance level (random weights, 25k parameters: about 20 steps) must then get every dev sentence right."""
    out = tmp_path / "learn"
    finetune.main(ft_args("sst2", glue_dir, pretrained, out, "--epochs", "8", "--lr", "3e-3", "--dropout", "0"))
    r = json.loads((out / "result.json").read_text())
    losses = [v for _, v in load_checkpoint(out / "last.pt")["state"]["history"]["train_loss"]]
    assert sum(losses[-3:]) / 3 < 0.5 < 0.65 < sum(losses[:3]) / 3   # chance level is ln 2 = 0.69
    assert r["best_val_accuracy"] == 1.0 and r["metrics"]["accuracy"] >= 0.9


def test_from_scratch_uses_random_weights(glue_dir, pretrained, tmp_path):
    out = tmp_path / "scratch"
    finetune.main(ft_args("sst2", glue_dir, pretrained, out, "--from-scratch", "--max-steps", "1"))
    r = json.loads((out / "result.json").read_text())
    assert r["from_scratch"] is True and r["pretrained"] is None and "(random init)" in r["dataset"]
    assert "pretrained_step" not in r   # random weights: no pre-training step to speak of
    assert load_checkpoint(out / "best.pt")["pretrained"] is None
    assert "random init" in (out / "finetune.log").read_text()
    assert finetune.run_name(finetune.parse_args(["--task", "cola", "--from-scratch"])) == "glue_cola_scratch"
    # the pre-trained run starts from the checkpoint's encoder; the scratch run does not
    pre = load_checkpoint(pretrained)["model"]["bert.layers.0.ffn_in.weight"]
    one = tmp_path / "one"
    finetune.main(ft_args("sst2", glue_dir, pretrained, one, "--max-steps", "1", "--lr", "1e-9"))
    assert torch.allclose(load_checkpoint(one / "best.pt")["model"]["bert.layers.0.ffn_in.weight"], pre, atol=1e-6)
    assert not torch.allclose(load_checkpoint(out / "best.pt")["model"]["bert.layers.0.ffn_in.weight"], pre, atol=1e-3)


def test_mean_pooling_is_kept_in_the_checkpoint_and_used_by_evaluate(glue_dir, pretrained, tmp_path, capsys):
    out = tmp_path / "mean"
    finetune.main(ft_args("sst2", glue_dir, pretrained, out, "--max-steps", "3", "--pooling", "mean"))
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["pooling"] == "mean" and ckpt["args"]["pooling"] == "mean"
    model, _, _ = predict.load_finetuned(out / "best.pt", "cpu")
    assert model.pooling == "mean"
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--data-dir", str(glue_dir), "--json"])
    assert json.loads(capsys.readouterr().out)["metrics"] == json.loads((out / "result.json").read_text())["metrics"]


def test_regression_task_stsb(glue_dir, pretrained, tmp_path):
    out = tmp_path / "stsb"
    finetune.main(ft_args("stsb", glue_dir, pretrained, out))
    r = json.loads((out / "result.json").read_text())
    assert r["headline_metric"] == "pearson" and set(r["metrics"]) == {"pearson", "spearman"}
    assert r["metrics"]["pearson"] > 0   # the tiny scores follow the sentences' topics: at least the sign is learned
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["num_labels"] == 1
    # the targets were standardised with the training scores' mean and standard deviation (the held-out val rows
    # are not among them, so those only bound them)
    scores = [float(row["score"]) for row in tiny_rows("stsb", "train")]
    assert min(scores) < ckpt["label_shift"] < max(scores) and 0 < ckpt["label_scale"] < max(scores) - min(scores)
    model, _, _ = predict.load_finetuned(out / "best.pt", "cpu")
    assert (model.label_shift, model.label_scale) == (ckpt["label_shift"], ckpt["label_scale"])
    rows = read_predictions(out / "STS-B.tsv")
    assert len(rows) == SIZES["test"]
    for _, p in rows:
        assert 0.0 <= float(p) <= 5.0 and len(p.split(".")[1]) == 3


@pytest.mark.parametrize("task, name, headline, labels", [
    ("cola", "CoLA", "matthews_corr", {"0", "1"}), ("mrpc", "MRPC", "f1", {"0", "1"}),
    ("rte", "RTE", "accuracy", {"entailment", "not_entailment"}), ("wnli", "WNLI", "accuracy", {"0", "1"})])
def test_other_tasks_headline_and_prediction_labels(glue_dir, pretrained, tmp_path, task, name, headline, labels):
    out = tmp_path / task
    finetune.main(ft_args(task, glue_dir, pretrained, out, "--epochs", "1", "--val-size", "0.2"))
    r = json.loads((out / "result.json").read_text())
    assert r["headline_metric"] == headline and r["sizes"]["val"] == 20
    rows = read_predictions(out / f"{name}.tsv")
    assert len(rows) == SIZES["test"] and {p for _, p in rows} <= labels


def test_length_batches_cover_every_example_once_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1000)]
    batches = glue.length_batches(lengths, 32, random.Random(5), pool=10)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == math.ceil(1000 / 32) and sum(len(b) < 32 for b in batches) == 1
    padded = sum(32 * max(lengths[i] for i in b) for b in batches)
    plain = sum(32 * max(lengths[i] for i in range(k, min(k + 32, 1000))) for k in range(0, 1000, 32))
    assert padded < 0.75 * plain                      # far fewer pad tokens than batches in random order
    assert batches == glue.length_batches(lengths, 32, random.Random(5), pool=10)   # resumable
    assert batches != glue.length_batches(lengths, 32, random.Random(6), pool=10)   # a new order each epoch


def test_sst2_validation_holds_out_whole_sentences_and_their_phrases():
    texts = ["a great film .", "a great film", "great film", "great", "a dull movie .", "dull movie", "dull",
             "movie", "the end .", "the end", "film", "a dull movie ."]   # the last: a duplicate, never "whole"
    for seed in range(5):
        train, val = glue.sentence_split(texts, 2, random.Random(seed))
        assert len(val) == 2 and set(val) <= {0, 8}          # the sentences no other example contains
        phrases = {p for i in val for p in ["a great film", "great film", "great", "film", "the end"]
                   if p in texts[i]}
        assert not {texts[i] for i in train} & phrases       # no phrase of a val sentence is left in train
        assert {4, 5, 6, 7, 11} <= set(train)                # the rest stays
    with pytest.raises(UserError, match="only 2"):
        glue.sentence_split(texts, 3, random.Random(0))


@pytest.mark.real_data("glue")
def test_sst2_default_split_on_the_real_training_set(real_data_dir):
    texts = load_split("sst2", real_data_dir, "train").a
    n_val = glue.val_count(None, len(texts), glue.get_task("sst2").phrases)
    train, val = glue.sentence_split(texts, n_val, random.Random(0))
    assert (n_val, len(val), len(train)) == (500, 500, 61116)   # 5,733 phrases of the val sentences left out
    inside = [f" {texts[i]} " for i in val]
    sample = random.Random(1).sample(train, 3000)
    assert not any(f" {texts[j]} " in v for j in sample for v in inside)
    assert not any(v in f" {texts[j]} " for j in sample for v in inside)


def test_resume_is_exact(glue_dir, pretrained, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    finetune.main(ft_args("mrpc", glue_dir, pretrained, a))
    finetune.main(ft_args("mrpc", glue_dir, pretrained, b, "--max-steps", "3"))   # stops mid-epoch 1
    assert (b / "best.pt").is_file() and json.loads((b / "result.json").read_text())["steps"] == 3
    finetune.main(["--task", "mrpc", "--out-dir", str(b), "--result", str(b / "result.json"), "--data-dir",
                   str(glue_dir), "--device", "cpu", "--resume"])
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["metrics"] == rb["metrics"] and ra["best_step"] == rb["best_step"]
    assert (a / "MRPC.tsv").read_text() == (b / "MRPC.tsv").read_text()


def test_evaluate_matches_finetune(finetuned, glue_dir, capsys):
    evaluate.main(["--checkpoint", str(finetuned / "best.pt"), "--data-dir", str(glue_dir), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["task"] == "sst2" and got["examples"] == SIZES["dev"]
    assert got["metrics"] == json.loads((finetuned / "result.json").read_text())["metrics"]
    assert sum(map(sum, got["confusion"])) == SIZES["dev"]
    evaluate.main(["--checkpoint", str(finetuned / "best.pt"), "--data-dir", str(glue_dir)])
    text = capsys.readouterr().out
    assert "GLUE SST-2, dev, 30 examples" in text and "true \\ predicted" in text


def test_load_predictor_gives_evaluate_s_predictions(finetuned, glue_dir, pretrained):
    classify = predict.load_predictor(finetuned / "best.pt")
    dev = load_split("sst2", glue_dir, "dev")
    probs = torch.cat([classify([s]) for s in dev.a])                           # (N, 2), one sentence at a time
    assert torch.allclose(probs.sum(-1), torch.ones(len(dev)))
    assert not probs.requires_grad                                              # no autograd graph kept
    preds = [int(p.argmax()) for p in probs]
    assert compute_metrics("sst2", preds, dev.labels) == json.loads((finetuned / "result.json").read_text())["metrics"]
    assert torch.allclose(classify(dev.a), probs, atol=1e-5)                    # padding a batch changes nothing
    with pytest.raises(UserError, match="holds a masked lm, not a classifier"):
        predict.load_predictor(pretrained)


def test_evaluate_rejects_other_checkpoints(finetuned, pretrained, glue_dir, tmp_path, capsys):
    code, err = cli(evaluate.main, ["--checkpoint", str(pretrained), "--data-dir", str(glue_dir)], capsys)
    assert_one_line_error(code, err, r"holds a masked lm, not a classifier")
    assert_bad_checkpoints_rejected(evaluate.main, finetuned / "best.pt", tmp_path, capsys, STAGE,
                                    extra=["--data-dir", str(glue_dir)])


def test_finetune_bad_input_gives_one_line(finetuned, pretrained, glue_dir, tmp_path, capsys, monkeypatch):
    def run(*extra, task="sst2", data=glue_dir, ckpt=pretrained):
        return cli(finetune.main, ft_args(task, data, ckpt, tmp_path / "run", *extra), capsys)
    assert_one_line_error(*run(ckpt=finetuned / "best.pt"), r"holds a classifier, not a masked lm")
    assert_one_line_error(*run("--val-size", "500"), r"--val-size 500.0 holds out 500 of 100")
    assert_one_line_error(*run("--val-size", "1.5"), r"argument --val-size: a fraction below 1")
    assert_one_line_error(*run("--max-len", "0"), r"argument --max-len: must be > 0")
    assert_one_line_error(*run(task="mnli"), r"argument --task: invalid choice: 'mnli'")
    assert_one_line_error(*run(ckpt=tmp_path / "none.pt"), r"checkpoint not found: .*none\.pt; the pre-training "
                                                            r"reference run writes it: `python stage6_bert/pretrain\.py")
    assert_one_line_error(*cli(finetune.main, ["--task", "sst2", "--out-dir", str(tmp_path / "none"), "--resume"],
                               capsys), r"checkpoint not found")
    assert_one_line_error(*cli(finetune.main, ["--task", "rte", "--out-dir", str(finetuned), "--resume"], capsys),
                          r"fine-tunes sst2, not rte")
    hub_unreachable(monkeypatch)
    assert_one_line_error(*run(data=tmp_path / "nowhere"), r"GLUE task SST-2 not found in .*downloading .*failed")
    assert_bad_checkpoints_rejected(finetune.main, pretrained, tmp_path, capsys, STAGE,
                                    extra=["--task", "sst2", "--out-dir", str(tmp_path / "bad"), "--data-dir",
                                           str(glue_dir)])


# ----------------------------------------------------------------------------- fill-mask

def expected_top(ckpt, ids: list[int], k: int) -> list[list[tuple[str, float]]]:
    state, cfg, tok, _ = predict.load_pretrained(ckpt)
    model = BertPretrain(cfg)
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids])).mlm_logits[0]
    out = []
    for pos in [i for i, t in enumerate(ids) if t == MASK_ID]:
        top = logits[pos].softmax(-1).topk(k)
        out.append([(tok.vocab[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())])
    return out


def parse_fill_mask(stdout: str) -> list[list[tuple[str, float]]]:
    blocks = []
    for line in stdout.splitlines():
        if line.startswith("[MASK] "):
            blocks.append([])
        elif line.startswith("  "):
            p, token = line.split()
            blocks[-1].append((token, float(p)))
    return blocks


def test_fill_mask_one_and_several_masks(pretrained, capsys):
    tok = WordPieceTokenizer.load(pretrained.parent / "tokenizer.json")
    fill_mask.main(["the movie was [MASK] .", "--top-k", "3", "--checkpoint", str(pretrained)])
    out = capsys.readouterr().out
    ids = [CLS_ID, *tok.encode("the movie was"), MASK_ID, *tok.encode("."), SEP_ID]
    assert fill_mask.encode_masked(tok, "the movie was [MASK] .", 64) == ids
    got, want = parse_fill_mask(out), expected_top(pretrained, ids, 3)
    assert "[MASK] 1 of 1:" in out and "best guess: " in out and len(got) == 1 and len(got[0]) == 3
    probs = [p for _, p in got[0]]
    assert probs == sorted(probs, reverse=True)
    assert probs == pytest.approx([p for _, p in want[0]], abs=1e-4)
    fill_mask.main(["[MASK] film , [MASK][MASK] great", "--top-k", "2", "--checkpoint", str(pretrained)])
    got = parse_fill_mask(capsys.readouterr().out)
    ids = fill_mask.encode_masked(tok, "[MASK] film , [MASK][MASK] great", 64)
    assert ids[1] == MASK_ID and ids.count(MASK_ID) == 3 and len(got) == 3
    assert [[p for _, p in g] for g in got] == [pytest.approx([p for _, p in w], abs=1e-4)
                                                for w in expected_top(pretrained, ids, 2)]


def test_fill_mask_errors_are_one_line(pretrained, finetuned, capsys):
    def run(text, ckpt=pretrained):
        return cli(fill_mask.main, [text, "--checkpoint", str(ckpt)], capsys)
    assert_one_line_error(*run("the movie was great ."), r"the text has no \[MASK\]")
    assert_one_line_error(*run("the movie was [mask] ."), r"no \[MASK\] \(\[MASK\] is upper case\)")
    assert_one_line_error(*run("   "), r"the text is empty")
    assert_one_line_error(*run("[MASK] " + "the movie " * 40), r"tokens long .* reads at most 64")
    assert_one_line_error(*run("a [MASK] .", finetuned / "best.pt"), r"holds a classifier, not a masked lm")
    assert_one_line_error(*run("a [MASK] .", pretrained.parent / "missing.pt"), r"checkpoint not found")


@pytest.mark.slow
def test_fill_mask_as_a_module(pretrained, glue_dir):
    proc = run_script("fill_mask", "a [MASK] film .", "--checkpoint", pretrained, data_dir=glue_dir, stage=STAGE,
                      module=True)
    assert proc.returncode == 0 and "[MASK] 1 of 1:" in proc.stdout, proc.stderr
    assert len(parse_fill_mask(proc.stdout)[0]) == 5


@pytest.mark.slow
@pytest.mark.parametrize("script", ["finetune", "evaluate", "fill_mask", "predict", "similarity"])
def test_every_script_has_help(script):
    proc = subprocess.run([sys.executable, f"{STAGE}/{script}.py", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_finetune_runs_as_a_module(glue_dir, pretrained, tmp_path):
    out = tmp_path / "m"
    proc = run_script("finetune", *ft_args("wnli", glue_dir, pretrained, out, "--max-steps", "2"), data_dir=glue_dir,
                      stage=STAGE, module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "WNLI.tsv").is_file() and json.loads((out / "result.json").read_text())["steps"] == 2


# ----------------------------------------------------------------------------- the real files (when present)

@pytest.mark.real_data("glue")
def test_real_glue_files_have_the_official_sizes(real_data_dir):
    sizes = {"sst2": (67349, 872, 1821), "cola": (8551, 1043, 1063), "mrpc": (3668, 408, 1725),
             "rte": (2490, 277, 3000), "stsb": (5749, 1500, 1379), "wnli": (635, 71, 146)}
    for task, counts in sizes.items():
        splits = [load_split(task, real_data_dir, s) for s in ("train", "dev", "test")]
        assert tuple(len(s) for s in splits) == counts, task
        assert splits[2].labels is None and splits[2].index[:2] == ["0", "1"]
        if task == "stsb":
            assert all(0.0 <= y <= 5.0 for y in splits[0].labels)
    assert sum(load_split("cola", real_data_dir, "train").labels) == 6023          # acceptable (SOURCE.md)
    assert load_split("rte", real_data_dir, "dev").labels.count(0) == 146          # entailment
    assert sum(load_split("mrpc", real_data_dir, "train").labels) == 2474          # paraphrases
