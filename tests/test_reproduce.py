"""scripts/reproduce.py: the plan it reads from the stages' declared reference runs, the flags it adds, the order of
runs that read another run's checkpoint, a failed run, and a real Stage 1 reproduction with --quick on tiny data.

Every run writes into tmp_path (--out-dir), so runs/reproduce and the committed result files are never touched.
"""
from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from conftest import REPO_ROOT, write_tiny_data
from scripts import reproduce
from scripts.common import all_reference_runs, parse_declared
from scripts.reproduce import load_runs, plan, select, set_flag

OUTPUT_FLAGS = ("--result", "--out-dir", "--checkpoint")


def flag_value(args: list[str], flag: str) -> str | None:
    """The value `args` give `flag`; the last one counts, as in argparse."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def without_outputs(args: list[str]) -> list[str]:
    """args without the flags reproduce.py rewrites, and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in OUTPUT_FLAGS:
            skip = True
        elif a.split("=")[0] not in OUTPUT_FLAGS:
            out.append(a)
    return out


def planned_commands(out: str) -> dict[str, list[str]]:
    """The plan as printed: result file -> its command lines (after `$ `)."""
    commands, current = {}, None
    for line in out.splitlines():
        if m := re.match(r"\s*\d+\. (\S+): ", line):
            current = m.group(1)
            commands[current] = []
        elif line.startswith("    $ "):
            commands[current].append(line[len("    $ "):])
    return commands


def test_dry_run_all_lists_every_result_file_with_its_command(tmp_path, capsys):
    out_root = tmp_path / "reproduce"
    reproduce.main(["--all", "--dry-run", "--out-dir", str(out_root)])
    out = capsys.readouterr().out
    commands = planned_commands(out)
    files = sorted(REPO_ROOT.glob("stage*/results/*.json"))
    headline = {p.relative_to(REPO_ROOT).as_posix(): json.loads(p.read_text()) for p in files}
    side = {k for k, r in headline.items() if "headline_metric" not in r}
    headline = {k: r for k, r in headline.items() if k not in side}
    assert set(commands) == set(headline)
    assert f"reproduce: {len(headline)} runs in {len({k.split('/')[0] for k in headline})} stages" in out
    declared = all_reference_runs()
    for key, recorded in headline.items():
        stage, name = key.split("/")[0], Path(key).stem
        assert len(commands[key]) == 1, key
        new = shlex.split(commands[key][0])
        assert new[1:2] == declared[key][:1], key
        assert without_outputs(new[2:]) == without_outputs(declared[key][1:]), key  # the same run, outputs moved
        assert flag_value(new, "--result") == str(out_root / stage / f"{name}.json")
        assert flag_value(new, "--out-dir") == str(out_root / stage / name)
        assert f"{key}: {recorded['headline_metric']} {recorded['metrics'][recorded['headline_metric']]:.4f}" in out
    not_rerun = out.split("not re-run")[1]
    assert all(k in not_rerun for k in side)
    assert not out_root.exists()  # a dry run writes nothing


def test_flags_are_replaced_where_given_and_appended_where_not():
    assert set_flag(["--dataset", "sst2"], "--result", "new.json") == ["--dataset", "sst2", "--result", "new.json"]
    assert set_flag(["--result", "old.json", "--epochs", "3"], "--result", "new.json") == \
        ["--result", "new.json", "--epochs", "3"]
    assert set_flag(["--out-dir=runs/x", "--quick"], "--out-dir", "runs/y") == ["--out-dir", "runs/y", "--quick"]
    assert set_flag(["--result", "a", "--lr", "1", "--result=b"], "--result", "c") == ["--result", "c", "--lr", "1"]


def fake_repo(root: Path, declared: dict[str, str], recorded: dict[str, float] | None = None) -> Path:
    """A repository with one stage (stage1_fake) that declares `declared` (name -> command) in its reference_runs.py
    and has published each with the accuracy `recorded` gives it (default 0.8).

    Its train.py writes a result with --value as the accuracy, or fails with one `error:` line when given --fail;
    finetune.py reads --checkpoint, by default the one the run "pre" writes (runs/stage1_fake/pre/best.pt).
    """
    (root / "stage1_fake" / "results").mkdir(parents=True)
    (root / "stage1_fake" / "__init__.py").write_text("")
    for name, out_dir, checkpoint in (("train.py", "runs/stage1_fake/pre", None),
                                      ("finetune.py", "runs/stage1_fake/tune", "runs/stage1_fake/pre/best.pt")):
        (root / "stage1_fake" / name).write_text(textwrap.dedent(f"""
            import argparse, json, sys

            def parse_args(argv=None):
                p = argparse.ArgumentParser()
                p.add_argument("--out-dir", default={out_dir!r})
                p.add_argument("--checkpoint", default={checkpoint!r})
                for flag in ("--result", "--data-dir"):
                    p.add_argument(flag)
                p.add_argument("--value", type=float, default=0.5)
                p.add_argument("--fail", action="store_true")
                p.add_argument("--quick", action="store_true")
                return p.parse_args(argv)

            if __name__ == "__main__":
                a = parse_args()
                print("training on", a.data_dir, "reading", a.checkpoint)
                if a.fail:
                    print("error: the loss became nan at step 3", file=sys.stderr)
                    sys.exit(2)
                json.dump({{"metrics": {{"accuracy": a.value}}, "headline_metric": "accuracy", "train_seconds": 2.0,
                           "device": "cpu", "threads": 1, "quick": a.quick}}, open(a.result, "w"))
            """))
    runs = {name: shlex.split(command)[1:] for name, command in declared.items()}
    (root / "stage1_fake" / "reference_runs.py").write_text(f"REFERENCE_RUNS = {runs!r}\n")
    for name, command in declared.items():
        result = {"stage": "stage1_fake", "run": name, "metrics": {"accuracy": (recorded or {}).get(name, 0.8)},
                  "headline_metric": "accuracy", "train_seconds": 1.0, "device": "cpu", "threads": 2,
                  "command": command, "git_commit": "unknown"}
        (root / "stage1_fake" / "results" / f"{name}.json").write_text(json.dumps(result))
    return root


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """Where fake_repo puts its repository; its scripts import as stage1_fake.train (reproduce parses them)."""
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    import sys
    for name in [m for m in sys.modules if m.startswith("stage1_fake")]:
        del sys.modules[name]


def test_declared_commands_get_their_outputs_redirected_and_keep_the_rest(tmp_path, fake_root):
    root = fake_repo(fake_root, {"a": "python stage1_fake/train.py --value 0.7",
                                 "b": "python stage1_fake/train.py --value=0.6 --quick"})
    runs, side = load_runs(root)
    out_root = root / "runs" / "reproduce"
    order = plan(select(runs, side, [], []), runs, out_root, root, tmp_path / "data", quick=True)
    data = str(tmp_path / "data")
    assert [r.commands for r in order] == [
        [["stage1_fake/train.py", "--value", "0.7", "--result", "runs/reproduce/stage1_fake/a.json",
          "--out-dir", "runs/reproduce/stage1_fake/a", "--data-dir", data, "--quick"]],
        [["stage1_fake/train.py", "--value=0.6", "--quick", "--result", "runs/reproduce/stage1_fake/b.json",
          "--out-dir", "runs/reproduce/stage1_fake/b", "--data-dir", data]]]


def test_a_declared_run_that_is_not_published_is_a_one_line_error(fake_root):
    root = fake_repo(fake_root, {"a": "python stage1_fake/train.py"})
    (root / "stage1_fake" / "results" / "a.json").unlink()
    with pytest.raises(reproduce.UserError, match=r"stage1_fake/results/a.json is declared .* not published yet"):
        load_runs(root)


def test_stage6_pretrains_first_and_its_fine_tunes_read_the_new_checkpoint(tmp_path):
    runs, side = load_runs(REPO_ROOT)
    order = plan(select(runs, side, ["stage6_bert"], []), runs, tmp_path, REPO_ROOT, None, quick=False)
    assert order[0].result == "stage6_bert/results/pretrain.json"
    assert len(order) > 1
    for run in order[1:]:
        if getattr(parse_declared(run.argv), "checkpoint", None) is None:  # real pre-trained weights, or no model
            assert run.after is None and run.needs is None
            continue
        producer = "pretrain_pairs_lr1e3" if "_pairs" in run.name else "pretrain"   # the pair pre-training's fine-tunes
        assert run.after == f"stage6_bert/results/{producer}.json"
        assert flag_value(run.commands[0], "--checkpoint") == str(tmp_path / "stage6_bert" / producer / "best.pt")
    # one fine-tune alone brings the pre-training it reads along, first
    order = plan(select(runs, side, [], ["glue_rte"]), runs, tmp_path, REPO_ROOT, None, quick=False)
    assert [r.name for r in order] == ["pretrain", "glue_rte"]
    # in every stage, a run comes after the run whose checkpoint it reads
    order = plan(select(runs, side, [], []), runs, tmp_path, REPO_ROOT, None, quick=False)
    for i, run in enumerate(order):
        if run.after:
            assert run.after in [r.result for r in order[:i]]


def test_stage5_fine_tunes_read_the_checkpoint_of_the_wikitext2_run(tmp_path):
    """The fine-tunes' default --checkpoint is where the declared WikiText-2 run writes: found by parsing both."""
    runs, side = load_runs(REPO_ROOT)
    order = plan(select(runs, side, [], ["sst2_finetune"]), runs, tmp_path, REPO_ROOT, None, quick=False)
    assert [r.name for r in order] == ["wikitext2", "sst2_finetune"]
    assert order[1].after == "stage5_gpt/results/wikitext2.json" and order[1].needs is None
    assert flag_value(order[1].commands[0], "--checkpoint") == str(tmp_path / "stage5_gpt" / "wikitext2" / "best.pt")


def test_a_reader_follows_its_producer_in_a_fake_repo(tmp_path, fake_root):
    root = fake_repo(fake_root, {"pre": "python stage1_fake/train.py --value 0.5",
                                 "ft": "python stage1_fake/finetune.py --value 0.6"})
    runs, side = load_runs(root)
    order = plan(select(runs, side, [], ["ft"]), runs, tmp_path / "out", root, None, quick=False)
    assert [r.name for r in order] == ["pre", "ft"] and order[1].after == "stage1_fake/results/pre.json"


@pytest.mark.slow
def test_a_failed_run_exits_1_with_one_line_and_skips_the_runs_that_read_its_checkpoint(
        tmp_path, capsys, fake_root):
    root = fake_repo(fake_root, {
        "pre": "python stage1_fake/train.py --fail",
        "tune": "python stage1_fake/finetune.py",
        "other": "python stage1_fake/train.py --value 0.75"})
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--stage", "1", "--out-dir", str(tmp_path / "out")], root=root)
    assert e.value.code == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "2 of 3 runs did not finish" in errors[0]
    assert "stage1_fake/results/pre.json (failed: exit 2: error: the loss became nan at step 3" in errors[0]
    assert ("stage1_fake/results/tune.json (skipped: it reads the checkpoint of stage1_fake/results/pre.json"
            in errors[0])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]
    other = summary["stage1_fake/results/other.json"]
    assert other["status"] == "ok"
    assert other["new"] == 0.75 and other["recorded"] == 0.8
    assert other["difference"] == pytest.approx(-0.05) and other["relative_difference"] == pytest.approx(-0.0625)
    assert "[stage1_fake/pre] error: the loss became nan" in captured.out  # streamed with its prefix
    assert "error: the loss became nan" in (tmp_path / "out" / "stage1_fake" / "pre.log").read_text()


@pytest.mark.slow
def test_stage1_quick_reproduction_end_to_end(tmp_path, capsys, monkeypatch):
    """The real Stage 1 commands, with --quick on tiny data: new result files next to the recorded figures."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    committed = {p: p.read_bytes() for p in (REPO_ROOT / "stage1_mlp" / "results").iterdir()}
    data_dir = write_tiny_data(tmp_path / "data")
    out_root = tmp_path / "reproduce"
    reproduce.main(["--stage", "1", "--quick", "--data-dir", str(data_dir), "--out-dir", str(out_root)])
    out = capsys.readouterr().out
    summary = json.loads((out_root / "summary.json").read_text())["runs"]
    for name in ("imdb", "sst2"):
        key = f"stage1_mlp/results/{name}.json"
        recorded = json.loads((REPO_ROOT / key).read_text())
        new = json.loads((out_root / "stage1_mlp" / f"{name}.json").read_text())
        assert new["quick"] is True and Path(new["data_dir"]).resolve() == data_dir.resolve()
        row = summary[key]
        assert row["status"] == "ok" and row["quick"] is True
        assert row["recorded"] == recorded["metrics"]["accuracy"]
        assert row["new"] == new["metrics"]["accuracy"]
        assert row["difference"] == pytest.approx(row["new"] - row["recorded"])
        assert re.search(rf"{re.escape(key)}\s+accuracy\s+{row['recorded']:.4f}\s+{row['new']:.4f}", out)
        assert f"[stage1_mlp/{name}] " in out
        assert (out_root / "stage1_mlp" / name / "best.pt").is_file()
    assert {p: p.read_bytes() for p in (REPO_ROOT / "stage1_mlp" / "results").iterdir()} == committed
