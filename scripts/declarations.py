"""What the stages declare, read from each stage's reference_runs.py: the runs behind the published figures
(REFERENCE_RUNS), the hyperparameter searches behind their settings (REFERENCE_SWEEPS) and what each search is
checked against (SWEEP_CHECKS).

It imports neither torch nor any stage, so that scripts/results_table.py, which only reads result files, stays light;
scripts/common.py re-exports these functions for the training scripts.
"""
from __future__ import annotations

import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_command(argv: list[str]) -> str:
    """A declared run as the command to paste from the repo root: ["stage1_mlp/train.py", "--x", "1"] ->
    "python stage1_mlp/train.py --x 1"."""
    return shlex.join(["python", *argv])


def stage_declarations(attribute: str, root: Path = REPO_ROOT) -> dict[str, dict]:
    """{stage folder: the dict named `attribute` in its reference_runs.py}, for each stage that has one. Each
    root/stage*/reference_runs.py is a plain module that imports nothing, read here without importing the stage."""
    import importlib.util

    found = {}
    for path in sorted(root.glob("stage*/reference_runs.py")):
        spec = importlib.util.spec_from_file_location(f"_reference_runs_{path.parent.name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, attribute):
            found[path.parent.name] = getattr(module, attribute)
    return found


def all_reference_runs(root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Every stage's declared runs, by the file each publishes: {"stage1_mlp/results/sst2.json": [script, *flags]}."""
    return {f"{stage}/results/{name}.json": list(argv)
            for stage, runs in stage_declarations("REFERENCE_RUNS", root).items() for name, argv in runs.items()}


def all_reference_sweeps(root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Every stage's declared hyperparameter searches (REFERENCE_SWEEPS in its reference_runs.py, where it has one),
    by the summary each publishes: {"stage5_gpt/results/sweeps/<name>/sweep.json": ["scripts/sweep.py", ...]}."""
    return {f"{stage}/results/sweeps/{name}/sweep.json": list(argv)
            for stage, sweeps in stage_declarations("REFERENCE_SWEEPS", root).items() for name, argv in sweeps.items()}
