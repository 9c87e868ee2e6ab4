"""The published result files (the source of every README number) against the reference runs each stage declares.

- No published file records an absolute path: every command in them can be pasted from the repo root anywhere.
- Each stage*/results/<name>.json is the declared run <name> of its stage: it names the run and records exactly the
  declared command, and every declared run has its published file.
- The declared command, parsed by its own script, resolves to the configuration the file recorded ("hparams"): a
  command that was rewritten when the runs were declared provably describes the run that made the figure.
- scripts/publish.py takes only reference runs, and copies a result file with its plots.
- The declared hyperparameter searches (REFERENCE_SWEEPS) are published as stage*/results/sweeps/<name>/sweep.json with
  their plots, record their declared command, and selected on a split that no result file reports.
"""
from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path

import pytest

from scripts.common import (REPO_ROOT, STAGES, UserError, all_reference_runs, all_reference_sweeps, reference_command,
                            resolved_config, write_result)
from scripts.publish import absolute_paths, publish

PUBLISHED = sorted(p.relative_to(REPO_ROOT).as_posix()
                   for p in [*REPO_ROOT.glob("stage*/results/*.json"), *REPO_ROOT.glob("results/*.json")])
DECLARED = all_reference_runs()


def load(key: str) -> dict:
    return json.loads((REPO_ROOT / key).read_text(encoding="utf-8"))


def parse_declared(argv: list[str]):
    """The declared flags parsed by the script's own parse_args, as the script would see them."""
    module = importlib.import_module(argv[0].removesuffix(".py").replace("/", "."))
    return module.parse_args(list(argv[1:]))


def as_json(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("key", PUBLISHED)
def test_no_published_file_records_an_absolute_path(key):
    assert absolute_paths(load(key)) == []


def test_every_stage_declares_its_reference_runs():
    for stage in STAGES:
        module = importlib.import_module(f"{stage}.reference_runs")
        assert module.REFERENCE_RUNS, stage
        for name, argv in module.REFERENCE_RUNS.items():
            assert argv[0].startswith(f"{stage}/") and (REPO_ROOT / argv[0]).is_file(), (stage, name)


def test_published_files_and_declared_runs_are_the_same_set():
    stage_files = {k for k in PUBLISHED if k.startswith("stage")}
    assert stage_files == set(DECLARED)


@pytest.mark.parametrize("key", sorted(DECLARED))
def test_published_command_is_the_declared_run(key):
    result = load(key)
    assert (result.get("stage"), result.get("run")) == (key.split("/")[0], Path(key).stem)
    assert result["command"] == reference_command(DECLARED[key])


@pytest.mark.parametrize("key", sorted(DECLARED))
def test_declared_command_resolves_to_the_recorded_configuration(key):
    result = load(key)
    resolved = as_json(resolved_config(parse_declared(DECLARED[key])))
    recorded = result.get("hparams")
    if recorded is None:  # side files (benchmarks, tokenizer): their recorded settings are "config"
        recorded = {k: v for k, v in result.get("config", {}).items() if k in resolved}
    assert recorded, f"{key} records no configuration to compare with"
    differing = {k: (v, resolved.get(k, "<no such flag>")) for k, v in recorded.items() if resolved.get(k) != v}
    assert differing == {}, f"{key}: recorded vs declared {differing}"


def test_absolute_paths_are_found_wherever_they_hide():
    assert absolute_paths({"command": "python x.py --result /work/logs/r.json"}) == \
        ["command: python x.py --result /work/logs/r.json"]
    assert absolute_paths({"a": [{"b": "--data-dir=/data"}]}) == ["a[0].b: --data-dir=/data"]
    assert absolute_paths({"c": "C:\\\\runs"}) != []
    assert absolute_paths({"command": "python x.py --data-dir $MY_LLM_DATA", "n": 1, "ratio": "3/4",
                           "data_dir": "~/.cache/my_llm/data", "fill": "good / bad"}) == []


def test_a_result_of_several_tasks_has_no_headline_and_is_no_row_of_the_results_table(tmp_path):
    """write_result(headline=None): a file of several tasks' figures (stage6_bert/baselines.py) records no
    "headline_metric", the mark of a side file that results_table.py and reproduce.py leave out of their tables."""
    from scripts.results_table import load_results

    path = tmp_path / "stage6_bert" / "results" / "glue_baselines.json"
    metrics = {"mrpc": {"f1": 0.8122, "accuracy": 0.6838}, "stsb": {"pearson": None, "mse": 2.36}}
    fields = dict(stage="stage6_bert", dataset="GLUE", split="dev", metrics=metrics, train_seconds=0, device="cpu",
                  params=0, command="python stage6_bert/baselines.py")
    r = write_result(path, headline=None, **fields)
    assert "headline_metric" not in r and json.loads(path.read_text()) == r and r["metrics"] == metrics
    assert load_results(tmp_path) == []
    with pytest.raises(ValueError, match="headline metric 'f1' is not among the metrics"):
        write_result(path, headline="f1", **fields)   # a name inside a task's entry is not a headline


# ----------------------------------------------------------------------------- publish.py

def fake_repo(tmp_path: Path) -> Path:
    """A repository root with Stage 1's declarations, for publish() to write into."""
    root = tmp_path / "repo"
    (root / "stage1_mlp").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "stage1_mlp" / "reference_runs.py", root / "stage1_mlp")
    return root


def a_result(tmp_path: Path, **fields) -> Path:
    """A result file as stage1_mlp/train.py writes it for the declared sst2 run, with plots beside it."""
    out = tmp_path / "runs" / "sst2"
    declared = DECLARED["stage1_mlp/results/sst2.json"]
    path = out / "result.json"
    write_result(path, stage="stage1_mlp", dataset="sst2", split="dev", metrics={"accuracy": 0.5},
                 headline="accuracy", train_seconds=1, device="cpu", params=1, command="python stage1_mlp/train.py",
                 run=fields.pop("run", "sst2"), declared=fields.pop("declared", declared), extra=fields)
    (out / "result.png").write_bytes(b"png")
    (out / "result_confusion.png").write_bytes(b"png2")
    return path


def test_publish_copies_a_reference_run_and_its_plots(tmp_path):
    root = fake_repo(tmp_path)
    written = publish(a_result(tmp_path), root)
    assert [p.relative_to(root).as_posix() for p in written] == \
        ["stage1_mlp/results/sst2.json", "stage1_mlp/results/sst2.png", "stage1_mlp/results/sst2_confusion.png"]
    assert json.loads(written[0].read_text())["run"] == "sst2"
    assert written[2].read_bytes() == b"png2"


@pytest.mark.parametrize("fields, message", [
    ({"run": None, "declared": None}, "not one of stage1_mlp's reference runs"),
    ({"quick": True}, "--quick run"),
    ({"data_dir": "/home/me/data"}, "absolute path"),
    ({"run": "imdb"}, "not the declared one"),
])
def test_publish_refuses_what_is_not_a_reference_run(tmp_path, fields, message):
    root = fake_repo(tmp_path)
    with pytest.raises(UserError, match=message):
        publish(a_result(tmp_path, **fields), root)
    assert not (root / "stage1_mlp" / "results").exists()


def test_publish_says_when_the_file_is_missing(tmp_path):
    with pytest.raises(UserError, match="no result file"):
        publish(tmp_path / "nothing.json", fake_repo(tmp_path))


def test_the_capstone_records_the_declared_runs():
    """results/compare_sst2.json: each model's command, and each pre-training's, is its stage's declared run."""
    from scripts import compare_classifiers as cc

    capstone = load("results/compare_sst2.json")
    models = {m.name: m for m in cc.MODELS}
    for row in capstone["models"]:
        model = models[row["name"]]
        assert row["command"] == reference_command(DECLARED[model.run])
        if model.pretrained_run:
            assert row["pretraining"]["reference_command"] == reference_command(DECLARED[model.pretrained_run])


# ----------------------------------------------------------------------------- declared hyperparameter searches

SWEEPS = all_reference_sweeps()
PUBLISHED_SWEEPS = sorted(p.relative_to(REPO_ROOT).as_posix()
                          for p in REPO_ROOT.glob("stage*/results/sweeps/*/sweep.json"))


def test_published_sweeps_and_declared_sweeps_are_the_same_set():
    assert set(PUBLISHED_SWEEPS) == set(SWEEPS)


@pytest.mark.parametrize("key", sorted(SWEEPS))
def test_a_published_sweep_is_its_declared_search_and_never_selected_on_a_reported_split(key):
    """The summary records the declared command; its objective is on a split no result file reports (Stage 5's
    select and Stage 6's val, both carved from train), never test, dev or the split its trials report; every finished
    trial counts toward --trials (a grid: every combination); the best trial is the best complete one; its plots are
    beside it."""
    sweep = load(key)
    assert sweep["command"] == reference_command(SWEEPS[key])
    assert absolute_paths(sweep) == []
    split = sweep["search"]["objective"].split(".")[0]
    assert split not in ("test", "dev", sweep["reported_split"]) and sweep["reported_split"]
    argv = SWEEPS[key]
    if "--trials" in argv:
        wanted = int(argv[argv.index("--trials") + 1])
    else:  # a grid without --trials runs every combination of its choices
        wanted = math.prod(len(argv[i + 1].split(":", 1)[1].split(",")) for i, a in enumerate(argv) if a == "--param")
    counts = sweep["budget"]["trials"]
    assert counts.get("complete", 0) + counts.get("pruned", 0) >= wanted
    complete = [t for t in sweep["trials"] if t["state"] == "complete"]
    pick = min if sweep["search"]["direction"] == "minimize" else max
    assert sweep["best"]["objective"] == pick(t["objective"] for t in complete)
    assert sweep["best"]["command"].startswith(f"python {sweep['search']['script']} ")
    for plot in sweep["plots"].values():
        assert (REPO_ROOT / key).with_name(plot).is_file(), plot


def test_the_stage5_sweep_kept_to_its_budget_and_pruned():
    """Tiny Shakespeare's TPE search: at least 20 finished trials of 5-minute proxy runs in at most 150 minutes, and
    the median pruner stopped at least one of them early."""
    sweep = load("stage5_gpt/results/sweeps/tiny_shakespeare_tpe/sweep.json")
    assert sweep["budget"]["trial_seconds"] <= 150 * 60
    assert sweep["budget"]["trials"].get("pruned", 0) >= 1
    fixed = sweep["search"]["fixed"]
    assert fixed[fixed.index("--time-budget") + 1] == "5"


def a_sweep(tmp_path: Path, command: str, quick: bool = False) -> Path:
    """A sweep.json as scripts/sweep.py writes it, with the plots it lists beside it."""
    out = tmp_path / "runs" / "sweeps" / "s"
    out.mkdir(parents=True)
    (out / "history.png").write_bytes(b"h")
    (out / "slice_lr.png").write_bytes(b"s")
    summary = {"written_by": "python scripts/sweep.py", "command": command, "search": {"quick": quick},
               "plots": {"history": "history.png", "slice_lr": "slice_lr.png"}}
    (out / "sweep.json").write_text(json.dumps(summary))
    return out / "sweep.json"


def test_publish_copies_a_declared_sweep_and_its_plots(tmp_path):
    root = tmp_path / "repo"
    (root / "stage5_gpt").mkdir(parents=True)
    (root / "stage5_gpt" / "reference_runs.py").write_text(
        'REFERENCE_RUNS = {}\nREFERENCE_SWEEPS = {"s": ["scripts/sweep.py", "stage5_gpt/train.py", "--trials", "3"]}\n')
    written = publish(a_sweep(tmp_path, "python scripts/sweep.py stage5_gpt/train.py --trials 3"), root)
    assert [p.relative_to(root).as_posix() for p in written] == \
        ["stage5_gpt/results/sweeps/s/sweep.json", "stage5_gpt/results/sweeps/s/history.png",
         "stage5_gpt/results/sweeps/s/slice_lr.png"]
    with pytest.raises(UserError, match="not declared"):
        publish(a_sweep(tmp_path / "b", "python scripts/sweep.py stage5_gpt/train.py --trials 4"), root)
    with pytest.raises(UserError, match="--quick sweep"):
        publish(a_sweep(tmp_path / "c", "python scripts/sweep.py stage5_gpt/train.py --trials 3", quick=True), root)


def test_every_sweep_check_compares_declared_runs_of_a_declared_search():
    """SWEEP_CHECKS names a declared search and, per group, declared runs of its stage, with at least two groups (the
    settings the search set out to beat, and its winner) of as many seeds each."""
    from scripts.declarations import stage_declarations

    for stage, checks in stage_declarations("SWEEP_CHECKS").items():
        for search, groups in checks.items():
            assert f"{stage}/results/sweeps/{search}/sweep.json" in SWEEPS, search
            assert len(groups) >= 2 and len({len(runs) for runs in groups.values()}) == 1, search
            for runs in groups.values():
                assert all(f"{stage}/results/{run}.json" in DECLARED for run in runs), runs
