"""Experiment tracking: RunTracker (scripts/common.py) on its own, then every training script's TensorBoard curves
and metrics.jsonl, read back the way TensorBoard and a hyperparameter search read them.

The tiny runs are test_robustness.py's (TRAINERS: the same flags, the same tiny data), plus the two SST-2 classifiers
with their own test files' flags. Each run's TensorBoard event files must hold the training curves (loss, learning
rate, gradient norm, a throughput) at every step and each validation metric the script computes, and metrics.jsonl
one line per validation, at the steps its checkpoint's history records.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import run_to_end
from scripts.common import REPO_ROOT, RunTracker, load_checkpoint
from stage2_rnn_lstm import classify as classify2
from stage4_transformer import classify as classify4
from test_robustness import TRAINERS, tiny_stage_data, train_argv
from test_stage2_classify import run_args as classify2_args
from test_stage4_classify import run_args as classify4_args


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files of `folder`, as TensorBoard shows them (a
    resumed run's purge already applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl(folder: Path, seconds: bool = True) -> list[dict]:
    """The lines of folder/metrics.jsonl; seconds=False leaves out the one field that differs between two runs."""
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return lines if seconds else [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


# ----------------------------------------------------------------------------- RunTracker

def test_an_evaluation_is_one_json_line_and_a_scalar_per_metric(tmp_path):
    tracker = RunTracker(tmp_path, tensorboard=True)
    for step in (1, 2, 3):
        tracker.train(step, loss=3.0 - step / 10, lr=1e-3 * step, grad_norm=0.5, tokens_per_second=1000.0)
    tracker.evaluation(3, "val", 12.34, loss=2.4567891234, accuracy=0.5)
    tracker.close()
    assert jsonl(tmp_path) == [{"step": 3, "split": "val", "loss": 2.456789, "accuracy": 0.5, "seconds": 12.3}]
    s = scalars(tmp_path)
    assert set(s) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "val/loss",
                      "val/accuracy"}
    assert [step for step, _ in s["train/loss"]] == [1, 2, 3]
    assert [v for _, v in s["train/lr"]] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert s["val/loss"] == [(3, pytest.approx(2.4567891234))]


def test_the_split_names_the_tags_and_the_line(tmp_path):
    tracker = RunTracker(tmp_path)
    tracker.evaluation(5, "select", loss=1.0)
    tracker.close()
    assert jsonl(tmp_path) == [{"step": 5, "split": "select", "loss": 1.0}]  # no seconds given: none written
    assert set(scalars(tmp_path)) == {"select/loss"}


def test_a_resumed_run_forgets_what_came_after_its_checkpoint(tmp_path):
    """A run that logged steps 1..6 but whose last checkpoint is step 4 resumes from 4: the evaluation at step 6 and
    the training points after 4 disappear, in metrics.jsonl and in what TensorBoard shows, and the run goes on."""
    first = RunTracker(tmp_path)
    for step in range(1, 7):
        first.train(step, loss=10.0 + step)
        if step % 2 == 0:
            first.evaluation(step, "val", loss=float(step))
    first.close()
    assert [line["step"] for line in jsonl(tmp_path)] == [2, 4, 6]

    resumed = RunTracker(tmp_path, step=4)
    assert [line["step"] for line in jsonl(tmp_path)] == [2, 4]
    for step in range(5, 9):
        resumed.train(step, loss=20.0 + step)
        if step % 2 == 0:
            resumed.evaluation(step, "val", loss=float(step))
    resumed.close()
    assert [line["step"] for line in jsonl(tmp_path)] == [2, 4, 6, 8]
    s = scalars(tmp_path)
    assert s["train/loss"] == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0), (5, 25.0), (6, 26.0), (7, 27.0), (8, 28.0)]
    assert [step for step, _ in s["val/loss"]] == [2, 4, 6, 8]


def test_a_fresh_run_in_a_used_folder_starts_a_fresh_file(tmp_path):
    old = RunTracker(tmp_path, tensorboard=False)
    old.evaluation(10, "val", loss=1.0)
    new = RunTracker(tmp_path, tensorboard=False)
    new.evaluation(1, "val", loss=2.0)
    assert jsonl(tmp_path) == [{"step": 1, "split": "val", "loss": 2.0}]


def test_no_tensorboard_writes_metrics_jsonl_only(tmp_path):
    tracker = RunTracker(tmp_path, tensorboard=False)
    tracker.train(1, loss=1.0, lr=0.1)
    tracker.evaluation(1, "val", loss=0.5)
    tracker.close()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    assert event_files(tmp_path) == []


def test_only_the_master_process_writes(tmp_path):
    out = tmp_path / "run"
    tracker = RunTracker(out, tensorboard=True, master=False)
    tracker.train(1, loss=1.0)
    tracker.evaluation(1, "val", loss=0.5)
    tracker.close()
    assert not out.exists()


# ----------------------------------------------------------------------------- every training script

@pytest.fixture(scope="module")
def d(tmp_path_factory) -> dict:
    """test_robustness.py's tiny data of every stage: its TRAINERS' flags read these paths. Never modify them."""
    return tiny_stage_data(tmp_path_factory.mktemp("tracking"))


# name -> (the history key in last.pt that holds one value per validation, the metric of metrics.jsonl it equals,
#          every validation metric, the throughput tag)
EXPECTED = {
    "stage1/train": ("val_acc", "accuracy", {"loss", "accuracy", "macro_f1"}, "examples_per_second"),
    "stage2/train": ("val_loss", "loss", {"loss", "ppl"}, "tokens_per_second"),
    "stage2/classify": ("val_accuracy", "accuracy", {"accuracy", "macro_f1"}, "examples_per_second"),
    "stage3/train": ("val_bleu", "bleu", {"loss", "bleu", "bleu_lc"}, "tokens_per_second"),
    "stage4/train": ("val_bleu", "bleu", {"loss", "bleu", "bleu_lc"}, "tokens_per_second"),
    "stage4/classify": ("val_accuracy", "accuracy", {"accuracy", "macro_f1"}, "examples_per_second"),
    "stage5/train": ("val_loss", "loss", {"loss"}, "tokens_per_second"),
    "stage5/finetune": ("val_accuracy", "accuracy", {"accuracy", "macro_f1"}, "examples_per_second"),
    "stage6/pretrain": ("val_mlm_loss", "mlm_loss", {"mlm_loss", "mlm_acc"}, "tokens_per_second"),
    "stage6/finetune": ("val", "accuracy", {"accuracy"}, "examples_per_second"),  # SST-2's metrics
}
CLASSIFIERS = {"stage2/classify": (classify2, classify2_args), "stage4/classify": (classify4, classify4_args)}


def run_trainer(name: str, d: dict, out: Path, *extra) -> None:
    if name in CLASSIFIERS:
        module, args = CLASSIFIERS[name]
        module.main([str(a) for a in args(d["data"], out, *extra)])
    else:
        TRAINERS[name][0].main(train_argv(name, d, out, *extra))


def test_the_table_covers_every_training_script():
    from test_layout import TRAINING_SCRIPTS
    assert len(EXPECTED) == len(TRAINING_SCRIPTS) and set(TRAINERS) | set(CLASSIFIERS) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_a_run_logs_its_curves_and_every_validation(name, d, tmp_path):
    history_key, metric, val_metrics, throughput = EXPECTED[name]
    out = tmp_path / "run"
    run_trainer(name, d, out)
    state = load_checkpoint(out / "last.pt")["state"]

    s = scalars(out)
    assert set(s) == {f"train/{k}" for k in ("loss", "lr", "grad_norm", throughput)} | {f"val/{k}" for k in val_metrics}
    for tag in ("train/loss", "train/lr", "train/grad_norm", f"train/{throughput}"):  # every step, once
        assert [step for step, _ in s[tag]] == list(range(1, state["step"] + 1)), tag
    assert [v for _, v in s["train/loss"]] == pytest.approx([v for _, v in state["history"]["train_loss"]], abs=1e-5)
    assert all(v > 0 for _, v in s["train/lr"] + s["train/grad_norm"] + s[f"train/{throughput}"])

    validations = state["history"][history_key]  # [[step, value], ...]: one per validation
    assert validations
    lines = jsonl(out)
    assert [(line["step"], line["split"]) for line in lines] == [(step, "val") for step, _ in validations]
    assert all(set(line) == {"step", "split", "seconds"} | val_metrics for line in lines)
    assert [line[metric] for line in lines] == pytest.approx([v for _, v in validations], abs=1e-4)
    for k in val_metrics:
        assert [step for step, _ in s[f"val/{k}"]] == [step for step, _ in validations], k


def test_no_tensorboard_flag_writes_no_event_file(d, tmp_path):
    out = tmp_path / "run"
    run_trainer("stage1/train", d, out, "--no-tensorboard")
    assert event_files(out) == [] and len(jsonl(out)) == len(load_checkpoint(out / "last.pt")["state"]["history"]
                                                                  ["val_acc"])


def test_a_resume_from_an_older_checkpoint_leaves_the_curves_of_an_uninterrupted_run(d, tmp_path):
    """Stage 5 validates every 4 steps. A run stopped at step 4, continued to step 8 (its logs now reach step 8), then
    resumed from its step-4 last.pt (as after a crash that lost the later checkpoint): the logs forget steps 5-8 and
    are written again, so that metrics.jsonl and every loss TensorBoard shows are those of an uninterrupted run."""
    name = "stage5/train"
    full, out = tmp_path / "full", tmp_path / "run"
    run_trainer(name, d, full)
    run_trainer(name, d, out, "--max-steps", "4")
    shutil.copy(out / "last.pt", tmp_path / "last_at_4.pt")
    run_trainer(name, d, out, "--resume", "--max-steps", "8")
    assert [line["step"] for line in jsonl(out)] == [4, 8]
    shutil.copy(tmp_path / "last_at_4.pt", out / "last.pt")
    run_trainer(name, d, out, "--resume")

    assert len(event_files(out)) == 3  # one per process that wrote
    assert jsonl(out, seconds=False) == jsonl(full, seconds=False)
    curves, expected = scalars(out), scalars(full)
    for tag in ("train/loss", "train/lr", "val/loss"):
        assert curves[tag] == expected[tag], tag  # exact resume: the same steps and the same values


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
@pytest.mark.parametrize("name, script", [("stage5/train", "stage5_gpt/train.py"),
                                          ("stage6/pretrain", "stage6_bert/pretrain.py")])
def test_under_torchrun_only_rank_0_writes(name, script, d, tmp_path):
    """Two processes, one set of curves: a single event file, and each step and validation logged once."""
    out = tmp_path / "run"
    proc = run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                       *train_argv(name, d, out, "--max-steps", "4", "--device", "cpu")],  # validates at step 4
                      cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(event_files(out)) == 1
    assert [line["step"] for line in jsonl(out)] == [4]
    assert [step for step, _ in scalars(out)["train/loss"]] == [1, 2, 3, 4]
