"""scripts/sweep.py: the distributions and their errors, the refusals (a reported split, an unknown flag, another
search on the same study), and real sweeps of quick Stage 5 runs: one that completes and reports, one killed with
kill -9 and continued, one that prunes, and one whose first trial reveals that its objective is the reported split."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import REPO_ROOT, assert_one_line_error, cli
from scripts import sweep
from scripts.common import UserError, parse_declared

SCRIPT = "stage5_gpt/train.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# a quick trial: select split, an evaluation every 10 steps (3 in a --quick run of 30 steps)
FIXED = ["--", "--select-frac", "0.05", "--eval-interval", "10"]
LR = "lr=loguniform:1e-4:1e-3"


def sweep_args(out_dir, data_dir, *extra) -> list[str]:
    return [SCRIPT, "--out-dir", str(out_dir), "--data-dir", str(data_dir), "--quick", *extra]


def run_sweep(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`python scripts/sweep.py ...` from the repo root, one thread per process (the trials inherit it)."""
    return subprocess.run([sys.executable, "scripts/sweep.py", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def load(out_dir) -> optuna.Study:
    names = optuna.get_all_study_names(f"sqlite:///{out_dir / 'study.db'}")
    return optuna.load_study(study_name=names[0], storage=f"sqlite:///{out_dir / 'study.db'}")


# ----------------------------------------------------------------------------- distributions (fast)

def test_distributions_parse_and_normalise():
    p = sweep.parse_distribution("lr", "loguniform:3e-4:3e-3")
    assert (p.kind, p.low, p.high, p.flag, p.grid()) == ("loguniform", 3e-4, 3e-3, "--lr", None)
    assert p.spec() == sweep.parse_distribution("lr", "loguniform:0.0003:0.003").spec()  # same search, same text
    p = sweep.parse_distribution("n-embd", "int:64:256:64")
    assert (p.name, p.flag, p.grid()) == ("n_embd", "--n-embd", [64, 128, 192, 256])
    assert sweep.parse_distribution("n_layer", "int:2:4").grid() == [2, 3, 4]
    p = sweep.parse_distribution("dropout", "choice:0,0.1,rope,true")
    assert p.choices == (0, 0.1, "rope", True) and [type(c) for c in p.choices] == [int, float, str, bool]
    assert sweep.parse_distribution("dropout", [0, 0.1]).choices == (0, 0.1)  # a JSON list in --space
    assert sweep.parse_distribution("x", "uniform:0:0.5").flags(0.25) == ["--x", "0.25"]
    bias = sweep.Param("bias", "choice", choices=(True, False), false_flags=["--no-bias"])
    assert bias.flags(True) == ["--bias"] and bias.flags(False) == ["--no-bias"]


@pytest.mark.parametrize("spec, pattern", [
    ("loguniform:3e-3:1e-4", "LOW must be below HIGH"),
    ("loguniform:0:1", "log scale needs LOW > 0"),
    ("uniform:a:1", "must be numbers"),
    ("int:a:b", "whole numbers"),
    ("int:16:100:32", "multiple of STEP"),
    ("int:4:2", "LOW < HIGH"),
    ("choice:0.1", "two different values"),
    ("choice:1,1", "two different values"),
    ("normal:0:1", "unknown distribution 'normal'"),
    ("3e-4", "expected NAME=KIND"),
])
def test_malformed_distributions_are_one_line_errors(spec, pattern, tmp_path, capsys):
    code, err = cli(sweep.main, [SCRIPT, "--objective", "select.loss", "--param", f"lr={spec}",
                                 "--out-dir", str(tmp_path / "sw"), *FIXED], capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "sw").exists()  # nothing started


def test_space_file_and_param_together(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"lr": "loguniform:1e-4:3e-3", "dropout": [0, 0.1], "n-layer": "int:2:4"}))
    space = sweep.read_space(str(path), ["lr=loguniform:1e-3:2e-3"])  # --param replaces the file's entry
    assert list(space) == ["lr", "dropout", "n_layer"] and space["lr"].low == 1e-3
    with pytest.raises(UserError, match="no such file"):
        sweep.read_space(str(tmp_path / "missing.json"), [])


@pytest.mark.parametrize("argv, pattern", [
    (["--param", "frobnicate=choice:1,2"], r"has no flag --frobnicate"),
    (["--param", "dropout=choice:0,1.5"], r"refuses it: argument --dropout: must be in \[0, 1\)"),
    (["--param", "out_dir=choice:a,b"], r"sets --out-dir itself"),
    (["--param", LR, "--sampler", "grid"], r"grid needs values it can list, but lr is continuous"),
    (["--param", LR, "--sampler", "bayes"], r"invalid choice: 'bayes'"),
    (["--param", LR, "--", "--select-frac", "0.05", "--lr", "1e-3"], r"both searched .* and fixed"),
    (["--param", LR, "--", "--select-frac", "0.05", "--frob"], r"unrecognized arguments: --frob"),
    (["--param", LR, "--", "--select-frac", "0.05", "--out-dir", "x"], r"own folder"),
])
def test_unknown_flags_and_bad_values_refused_before_any_trial(argv, pattern, tmp_path, capsys):
    fixed = [] if "--" in argv else FIXED
    code, err = cli(sweep.main, [SCRIPT, "--objective", "select.loss", "--out-dir", str(tmp_path / "sw"), *argv,
                                 *fixed], capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("objective, fixed, pattern", [
    ("test.loss", FIXED, r"test is a split the course reports.*--select-frac"),
    ("dev.accuracy", FIXED, r"dev is a split the course reports"),
    # Stage 5 reports val on Tiny Shakespeare (its published result file says so): refused before any trial
    ("val.loss", [], r"reports the val split \(stage5_gpt/results/tiny_shakespeare.json\).*--select-frac 0.05"),
    ("select.loss", [], r"hold out no select split; add --select-frac"),
])
def test_objective_on_a_reported_split_refused(objective, fixed, pattern, tmp_path, capsys):
    code, err = cli(sweep.main, [SCRIPT, "--objective", objective, "--param", "lr=loguniform:1e-4:1e-3",
                                 "--out-dir", str(tmp_path / "sw"), *fixed], capsys)
    assert_one_line_error(code, err, pattern)


def test_boolean_choice_uses_the_no_flag():
    space = sweep.read_space(None, ["bias=choice:true,false"])
    sweep.check_flags(SCRIPT, space, ["--select-frac", "0.05"], [])
    assert space["bias"].false_flags == ["--no-bias"]
    ns = parse_declared([SCRIPT, *space["bias"].flags(False)])
    assert ns.bias is False


# ----------------------------------------------------------------------------- real sweeps (slow)

@pytest.mark.slow
@pytest.mark.real_data("tiny_shakespeare")
def test_sweep_completes_reports_and_refuses_another_search(real_data_dir, tmp_path, capsys):
    out = tmp_path / "sw"
    argv = sweep_args(out, real_data_dir, "--objective", "select.loss", "--sampler", "tpe", "--trials", "3",
                      "--param", "lr=loguniform:1e-3:1e-2", "--param", "dropout=choice:0,0.1", *FIXED)
    r = run_sweep(argv)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["budget"]["trials"] == {"complete": 3} and summary["reported_split"] == "val"
    assert [t["state"] for t in summary["trials"]] == ["complete"] * 3
    for name in ["history", "importance", "slice_lr", "slice_dropout"]:
        assert (out / summary["plots"][name]).read_bytes()[:8] == PNG_MAGIC, name
    best = summary["best"]
    objectives = [t["objective"] for t in summary["trials"]]
    assert best["objective"] == min(objectives)
    # the sweep's own command, to run the same search again, and the code version its trials ran
    assert shlex.split(summary["command"])[:3] == ["python", "scripts/sweep.py", SCRIPT]
    assert "--trials 3" in summary["command"] and summary["date"]
    commit = json.loads((out / f"trial_{best['number']}" / "result.json").read_text())["git_commit"]
    assert summary["git_commit"] == [commit]
    assert summary["budget"]["first_trial_start_to_last_end_seconds"] >= summary["budget"]["trial_seconds"] - 1
    # the best value is the best select evaluation of that trial's run
    lines = [json.loads(x) for x in (out / f"trial_{best['number']}" / "metrics.jsonl").read_text().splitlines()]
    assert best["objective"] == pytest.approx(min(x["loss"] for x in lines if x["split"] == "select"))
    # the command to paste parses back, with the script's own parser, to the best trial's flags
    words = shlex.split(best["command"])
    assert words[:2] == ["python", SCRIPT] and "--out-dir" not in words
    ns = parse_declared(words[1:])
    assert ns.lr == best["params"]["lr"] and ns.dropout == best["params"]["dropout"]
    assert ns.select_frac == 0.05 and ns.quick
    assert "best: trial" in r.stdout and "to train it again: python stage5_gpt/train.py --lr" in r.stdout

    # the same command again: nothing left to run, the report again
    again = run_sweep(argv, timeout=120)
    assert again.returncode == 0 and "3 of 3 trials done" in again.stdout and "trial 3" not in again.stdout
    # another search on the same study: one line, before any trial
    other = [a if a != "lr=loguniform:1e-3:1e-2" else "lr=loguniform:1e-3:5e-3" for a in argv]
    code, err = cli(sweep.main, other, capsys)
    assert_one_line_error(code, err, r"holds a different search \(its space differ.*--name")
    assert len(load(out).trials) == 3


@pytest.mark.slow
@pytest.mark.real_data("tiny_shakespeare")
def test_killed_sweep_continues_to_the_requested_trials(real_data_dir, tmp_path):
    out = tmp_path / "sw"
    argv = sweep_args(out, real_data_dir, "--objective", "select.loss", "--sampler", "random", "--trials", "2",
                      "--param", "lr=loguniform:1e-3:1e-2", *FIXED)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "scripts/sweep.py", *argv], cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,  # its own group: the trial with it
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 120
            while not (out / "trial_0" / "metrics.jsonl").is_file():  # trial 0 is training
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "trial 0 wrote no metrics.jsonl within 120 s"
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its trial, without a chance to clean up
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert load(out).trials[0].state.name == "RUNNING"  # what kill -9 leaves behind

    r = run_sweep(argv)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert "trial 0 was cut off by the last sweep" in r.stdout
    trials = load(out).trials
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states
    assert states.count("COMPLETE") == 2 and states[0] == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params  # the cut-off trial ran again, same flags
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["budget"]["trials"] == {"interrupted": 1, "complete": 2}


@pytest.mark.slow
@pytest.mark.real_data("tiny_shakespeare")
def test_median_pruner_stops_a_hopeless_trial(real_data_dir, tmp_path):
    out = tmp_path / "sw"
    # A grid over two learning rates: 3e-3 learns, 1e-7 cannot. --seed 1 makes the grid try 3e-3 first; once it has
    # completed (--pruner-startup-trials 1), 1e-7 is worse than that trial's loss at its first evaluation and stops.
    # Three epochs of a quick run (90 steps) with an evaluation every 2 steps: it is stopped long before its end.
    r = run_sweep(sweep_args(out, real_data_dir, "--objective", "select.loss", "--sampler", "grid", "--seed", "1",
                             "--param", "lr=choice:3e-3,1e-7", "--pruner", "median", "--pruner-startup-trials", "1",
                             "--", "--select-frac", "0.05", "--eval-interval", "2", "--epochs", "3"))
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    trials = load(out).trials
    assert [(t.params["lr"], t.state.name) for t in trials] == [(3e-3, "COMPLETE"), (1e-7, "PRUNED")], r.stdout
    pruned = trials[1]
    assert max(pruned.intermediate_values) < 90  # stopped before its last step
    assert (out / "trial_1" / "last.pt").is_file()  # SIGTERM: the trial saved last.pt on its way out
    assert not (out / "trial_1" / "result.json").exists()
    assert "trial 1 pruned at step" in r.stdout
    assert json.loads((out / "sweep.json").read_text())["budget"]["trials"] == {"complete": 1, "pruned": 1}


@pytest.mark.slow
@pytest.mark.real_data("tiny_shakespeare")
def test_reported_split_seen_in_the_first_result_is_refused(real_data_dir, tmp_path, capsys, monkeypatch):
    """Without published results to warn it, the sweep learns from the first trial's result.json that Stage 5 reports
    val on Tiny Shakespeare: it stops with one line and removes the study, so the corrected command starts afresh."""
    monkeypatch.setattr(sweep, "all_reference_runs", lambda: {})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "sw"
    code, err = cli(sweep.main, sweep_args(out, real_data_dir, "--objective", "val.loss", "--sampler", "random",
                                           "--trials", "3", "--param", "lr=loguniform:1e-3:1e-2"), capsys)
    assert_one_line_error(code, err, r"reports the val split \(trial 0's result.json\).*--select-frac 0.05.*removed")
    assert optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}") == []
    assert not (out / "trial_1").exists()  # stopped after the first trial


@pytest.mark.slow
@pytest.mark.real_data("tiny_shakespeare")
def test_objective_metric_missing_from_the_evaluations_is_refused(real_data_dir, tmp_path, capsys, monkeypatch):
    """Stage 5 logs loss only: select.accuracy stops the first trial at its first evaluation, with one line."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "sw"
    code, err = cli(sweep.main, sweep_args(out, real_data_dir, "--objective", "select.accuracy", "--trials", "2",
                                           "--param", "lr=loguniform:1e-3:1e-2", *FIXED), capsys)
    assert_one_line_error(code, err, r"select evaluations in .*metrics.jsonl have no 'accuracy' \(they have: loss\)")
    assert not (out / "trial_0" / "result.json").exists()  # stopped, not run to its end
