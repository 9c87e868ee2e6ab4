"""stage6_bert/baselines.py: the constant predictor of every GLUE task, chosen on train and scored on dev.

On the tiny GLUE files of tests/test_stage6_finetune.py its figures are what plain counting says they must be (the
majority class of train, ties to the first label, F1 and Matthews written out by hand, the train mean and its mean
squared error for STS-B), including a task whose train majority is dev's minority. The published
stage6_bert/results/glue_baselines.json holds the figures the issue quoted, and, with the real data, exactly what the
script computes from them.
"""
from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from conftest import REPO_ROOT
from scripts.common import reference_command
from stage6_bert import baselines
from stage6_bert.reference_runs import REFERENCE_RUNS
from test_stage6_finetune import HEADERS, TASKS, expected_split, tiny_rows, write_tiny_glue

LABELS = {"rte": ["entailment", "not_entailment"]}   # class ids in the files' order; 0/1 elsewhere
PUBLISHED = REPO_ROOT / "stage6_bert" / "results" / "glue_baselines.json"


def run(data_dir, out, tasks=()) -> dict:
    baselines.main(["--data-dir", str(data_dir), "--out-dir", str(out), *(["--tasks", *tasks] if tasks else [])])
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def by_hand(task: str) -> tuple[dict, str | float]:
    """The constant predictor's dev figures from the tiny rows, by counting: (metrics, the constant)."""
    train, dev = expected_split(task, "train")[2], expected_split(task, "dev")[2]
    if task == "stsb":
        mean = sum(train) / len(train)
        mse = sum((y - mean) ** 2 for y in dev) / len(dev)
        return {"pearson": None, "spearman": None, "mse": round(mse, 4)}, round(mean, 4)
    counts = Counter(train)
    c = 0 if counts[0] >= counts[1] else 1                    # a tie goes to class 0, the first label
    hits = sum(y == c for y in dev)
    accuracy = round(hits / len(dev), 4)
    constant = LABELS.get(task, ["0", "1"])[c]
    if task == "mrpc":   # F1 of class 1 = 2 TP / (2 TP + FP + FN): never predicting 1 gives TP 0
        tp, fp, fn = (hits, len(dev) - hits, 0) if c == 1 else (0, 0, len(dev) - hits)
        return {"f1": round(2 * tp / (2 * tp + fp + fn), 4), "accuracy": accuracy}, constant
    if task == "cola":   # a constant answer carries no information: Matthews correlation 0
        return {"matthews_corr": 0.0, "accuracy": accuracy}, constant
    return {"accuracy": accuracy}, constant


def test_the_constant_predictor_on_tiny_glue_is_what_counting_says(tmp_path, capsys):
    r = run(write_tiny_glue(tmp_path / "data"), tmp_path / "out")
    for task in TASKS:
        metrics, constant = by_hand(task)
        assert r["metrics"][task] == metrics, task
        assert r["tasks"][task]["predicts"] == constant, task
    assert r["metrics"]["rte"] == {"accuracy": 0.4}   # train: 58 of 100 entailment; dev: 12 of 30. Chosen on train
    assert r["metrics"]["mrpc"]["f1"] == 0.0          # train: 59 of 100 not paraphrases: never says "paraphrase"
    assert r["tasks"]["sst2"]["predicts"] == "0" and r["tasks"]["sst2"]["train_share"] == 0.5   # a tie: label 0
    assert "headline_metric" not in r and r["split"] == "dev" and r["params"] == 0   # a side file of six tasks
    assert r["run"] == "glue_baselines" and r["command"] == reference_command(REFERENCE_RUNS["glue_baselines"])
    assert "STS-B  always 2.8425" in capsys.readouterr().out


def test_a_majority_of_paraphrases_gives_the_f1_of_always_saying_so(tmp_path):
    """The tiny MRPC train with its labels flipped: 59 of 100 paraphrases, so the constant is 1. Dev has 14 of 30:
    TP 14, FP 16, FN 0, F1 = 28 / 44, accuracy 14 / 30. Only some tasks: not the reference run."""
    data = write_tiny_glue(tmp_path / "data", ["mrpc"])
    rows = [dict(row, Quality=str(1 - int(row["Quality"]))) for row in tiny_rows("mrpc", "train")]
    header = HEADERS["mrpc"][0]
    columns = header.lstrip("\ufeff").split("\t")
    with gzip.open(data / "glue" / "mrpc" / "train.tsv.gz", "wt", encoding="utf-8", newline="") as f:
        f.write("\n".join([header] + ["\t".join(row[c] for c in columns) for row in rows]) + "\n")
    r = run(data, tmp_path / "out", ["mrpc"])
    assert r["metrics"] == {"mrpc": {"f1": round(28 / 44, 4), "accuracy": round(14 / 30, 4)}}
    assert r["tasks"]["mrpc"]["predicts"] == "1" and r["tasks"]["mrpc"]["train_share"] == 0.59
    assert "run" not in r and r["command"].endswith("--tasks mrpc")


def test_majority_class_and_the_order_of_tasks():
    assert baselines.majority_class([1, 1, 0], 2) == 1
    assert baselines.majority_class([1, 0], 2) == 0 and baselines.majority_class([2, 1, 1, 2], 3) == 1   # ties: lowest
    assert baselines.parse_args(["--tasks", "wnli", "sst2", "wnli"]).tasks == ["sst2", "wnli"]   # GLUE's order, once
    assert baselines.parse_args([]).tasks == TASKS


def test_the_published_baselines_are_the_issues_figures():
    """MRPC's "always a paraphrase" F1 0.8122 and accuracy 0.6838, CoLA's 0.6913 with MCC 0, RTE 0.5271, WNLI 0.5634:
    the figures the course's own fine-tuned BERT matches or falls below. STS-B has no correlation, only an error."""
    r = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    assert r["metrics"]["mrpc"] == {"f1": 0.8122, "accuracy": 0.6838}
    assert r["metrics"]["cola"] == {"matthews_corr": 0.0, "accuracy": 0.6913}
    assert r["metrics"]["rte"] == {"accuracy": 0.5271} and r["metrics"]["wnli"] == {"accuracy": 0.5634}
    assert r["metrics"]["sst2"] == {"accuracy": 0.5092}
    stsb = r["metrics"]["stsb"]
    assert stsb["pearson"] is None and stsb["spearman"] is None and stsb["mse"] > 0
    assert {t: r["tasks"][t]["predicts"] for t in ("sst2", "cola", "mrpc", "rte", "wnli")} == \
        {"sst2": "1", "cola": "1", "mrpc": "1", "rte": "entailment", "wnli": "0"}


@pytest.mark.real_data("glue")
def test_the_published_file_is_what_the_script_computes(real_data_dir, tmp_path):
    published = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    new = run(real_data_dir, tmp_path / "out")
    assert (new["metrics"], new["tasks"], new["command"]) == \
        (published["metrics"], published["tasks"], published["command"])
