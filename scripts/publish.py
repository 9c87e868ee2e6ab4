"""Publish a reference run's figures: copy its result file (and plots) into the stage's committed results/ folder.

    python stage1_mlp/train.py --dataset sst2 ...              # a run writes runs/stage1_mlp/sst2/result.json
    python scripts/publish.py runs/stage1_mlp/sst2/result.json # -> stage1_mlp/results/sst2.json (+ .png plots)
    python scripts/results_table.py --write                    # the README tables then show the new figure

Every run writes its result into its own --out-dir under runs/, which git ignores: running a command never changes
what the README shows. Publishing is this one explicit step, and it only takes a run that is one of its stage's
declared reference runs (<stage>/reference_runs.py). The training script has already checked that when it finished:
its result file then names the run ("run") and records the declared command, which anyone can paste from the repo
root. This script refuses anything else: a --quick or --max-steps run, an experiment with other settings, a file
that records an absolute path of this machine.

The capstone's comparison (scripts/compare_classifiers.py, runs/compare_sst2/compare_sst2.json) is published the same
way, into results/. So is a declared hyperparameter search (REFERENCE_SWEEPS in a stage's reference_runs.py):

    python scripts/publish.py runs/sweeps/tiny_shakespeare_tpe/sweep.json   # -> stage5_gpt/results/sweeps/...
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/publish.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import REPO_ROOT, UserError, all_reference_runs, all_reference_sweeps, reference_command, run_cli

CAPSTONE = "results/compare_sst2.json"


def absolute_paths(obj, where: str = "") -> list[str]:
    """Every string inside `obj` (a parsed JSON value) that is, or contains as a word, an absolute path:
    ["metrics.x: /home/me/data", ...]. Such a file could not be reproduced on another machine."""
    if isinstance(obj, dict):
        return [hit for k, v in obj.items() for hit in absolute_paths(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, list):
        return [hit for i, v in enumerate(obj) for hit in absolute_paths(v, f"{where}[{i}]")]
    if isinstance(obj, str):
        words = obj.replace("=", " ").split()  # "/" alone (as in "good / bad") is a word, not a path
        if any(re.match(r"/[\w.~-]", w) or re.match(r"[A-Za-z]:[\\/]", w) for w in words):
            return [f"{where}: {obj[:120]}"]
    return []


def destination(result: dict, root: Path = REPO_ROOT) -> str:
    """Where `result` is published, relative to the repo root, after checking that it is a declared reference run
    (or a declared search's sweep.json)."""
    if str(result.get("command", "")).startswith("python scripts/compare_classifiers.py"):
        return CAPSTONE
    if result.get("written_by") == "python scripts/sweep.py":
        if result.get("search", {}).get("quick"):
            raise UserError("this is a --quick sweep: its trials ran on small slices and are never published")
        for key, argv in all_reference_sweeps(root).items():
            if result.get("command") == reference_command(argv):
                return key
        raise UserError(f"this sweep is not declared in any stage's reference_runs.py (REFERENCE_SWEEPS): "
                        f"{result.get('command')!r}")
    name, stage = result.get("run"), result.get("stage")
    if result.get("quick"):
        raise UserError("this is a --quick run: its figures come from small slices and are never published")
    if not name:
        raise UserError(f"this run is not one of {stage or 'its stage'}'s reference runs (its settings differ from "
                        f"every run in {stage}/reference_runs.py), so its figures stay in runs/; run a declared "
                        f"command as it stands to publish")
    key = f"{stage}/results/{name}.json"
    declared = all_reference_runs(root).get(key)
    if declared is None:
        raise UserError(f"the result names the run {name!r}, which {stage}/reference_runs.py does not declare")
    if result.get("command") != reference_command(declared):
        raise UserError(f"the result's command is not the declared one for {name!r}: {result.get('command')!r}")
    return key


def publish(src: Path, root: Path = REPO_ROOT) -> list[Path]:
    """Copy `src` and its plots (<stem>.png, <stem>_*.png beside it) into the published place; the paths written."""
    try:
        result = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no result file {src}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {src}: {e}") from None
    if not isinstance(result, dict):
        raise UserError(f"{src} is not a result file")
    key = destination(result, root)
    bad = absolute_paths(result)
    if bad:
        raise UserError(f"{src} records an absolute path of this machine ({bad[0]}); it would not reproduce elsewhere")
    target = root / key
    written = [target]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    if result.get("written_by") == "python scripts/sweep.py":  # its plots, as sweep.json lists them
        for plot in result.get("plots", {}).values():
            written.append(target.parent / plot)
            shutil.copyfile(src.parent / plot, written[-1])
        return written
    for plot in sorted(src.parent.glob(f"{src.stem}*.png")):
        suffix = plot.stem[len(src.stem):]
        if suffix and not suffix.startswith("_"):
            continue  # another file's plot that merely starts with the same letters
        written.append(target.with_name(f"{target.stem}{suffix}.png"))
        shutil.copyfile(plot, written[-1])
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Copy a reference run's result file and plots into its stage's results/ "
                                            "folder, after checking that it is a declared reference run.")
    p.add_argument("result", nargs="+", help="result files a run wrote (e.g. runs/stage1_mlp/sst2/result.json)")
    args = p.parse_args(argv)
    for src in args.result:
        for path in publish(Path(src)):
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    print("now run: python scripts/results_table.py --write")


if __name__ == "__main__":
    run_cli(main)
