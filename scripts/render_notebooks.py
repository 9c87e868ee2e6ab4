"""Run each stage's notebook in full mode on the reference checkpoints and commit it with its outputs.

    python scripts/render_notebooks.py --stage 2          # needs runs/stage2_rnn_lstm/tiny_shakespeare_lstm/best.pt
    python scripts/render_notebooks.py --check            # which notebooks hold current outputs; exit 1 if one is stale
    python scripts/render_notebooks.py --clear --stage 2  # strip a notebook back to code and text

A notebook opened on GitHub shows what was computed when it was last run, so the committed notebooks hold the
figures, tables and samples of the reference models. This script is the only way they get there:

1. It checks that the reference runs the notebook loads in full mode (NOTEBOOKS below; their commands are declared
   in <stage>/reference_runs.py) have left their checkpoints under runs/. It never trains them itself: run the
   declared commands first (`python scripts/reproduce.py --dry-run --stage N` lists them, with their times).
2. It executes the notebook top to bottom in its own folder, as Jupyter would, without MY_LLM_QUICK. A notebook's
   own training runs go to a temporary folder, so nothing of yours under runs/notebook/ is touched.
3. It takes this machine's paths out of every text output (the repo becomes relative, the data directory
   "$MY_LLM_DATA", the temporary folder "runs/notebook") and records in the notebook's metadata a hash of its code
   cells, the reference runs it read and when it ran.

tests/test_notebooks.py compares that hash with the code the notebook holds now: change a code cell, and the test
fails until the notebook is rendered again (or cleared with --clear, which is honest too: no outputs at all).
Continuous integration runs every notebook in quick mode, never this script.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/render_notebooks.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import (REPO_ROOT, STAGES, UserError, all_reference_runs, atomic_write_text, parse_declared,
                            portable, reference_command, run_cli)

# stage -> the reference runs whose checkpoints its notebook loads in full mode (names from reference_runs.py).
# A notebook whose list is empty trains what it shows itself (Stage 1, in under a minute); Stage 6's notebook
# pre-trains its own small model and also asks the reference one.
NOTEBOOKS = {
    "stage1_mlp": [],
    "stage2_rnn_lstm": ["tiny_shakespeare_lstm"],
    "stage3_attention_seq2seq": ["multi30k_en_fr", "multi30k_en_fr_noattn"],
    "stage4_transformer": ["multi30k_en_fr"],
    "stage5_gpt": ["tiny_shakespeare", "sst2_finetune"],
    "stage6_bert": ["pretrain"],
}
META_KEY = "my_llm"


def notebook_path(stage: str, root: Path = REPO_ROOT) -> Path:
    return root / stage / f"{stage}.ipynb"


def code_hash(nb: dict) -> str:
    """sha256 of the notebook's code cells, in order: what its outputs were computed from."""
    code = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256("\n\0\n".join(code).encode("utf-8")).hexdigest()


def has_outputs(nb: dict) -> bool:
    return any(c.get("outputs") or c.get("execution_count") is not None
               for c in nb["cells"] if c["cell_type"] == "code")


def status(nb: dict) -> str:
    """"clean" (no outputs), "current" (rendered from the code it holds) or "stale: <why>"."""
    rendered = nb.get("metadata", {}).get(META_KEY, {}).get("rendered")
    if not has_outputs(nb):
        return "clean" if rendered is None else "stale: metadata says rendered, but there are no outputs"
    if rendered is None:
        return "stale: outputs that this script did not write (run it, or clear them with --clear)"
    if rendered.get("code_sha256") != code_hash(nb):
        return (f"stale: the code cells changed after the outputs were computed on {rendered.get('date')} "
                f"(render again, or --clear)")
    return "current"


def reference_checkpoints(stage: str, root: Path = REPO_ROOT) -> dict[str, Path]:
    """name -> the best.pt its declared command writes (its script's default --out-dir)."""
    runs = all_reference_runs(root)
    out = {}
    for name in NOTEBOOKS[stage]:
        argv = runs[f"{stage}/results/{name}.json"]
        out[name] = root / parse_declared(argv).out_dir / "best.pt"
    return out


def reference_summary(name: str, ckpt: Path, root: Path = REPO_ROOT) -> dict:
    """What the metadata records of a reference run the notebook read: its checkpoint and the figures its result
    file reports (so a reader can tell these outputs from the published ones)."""
    entry = {"checkpoint": str(ckpt.relative_to(root))}
    result = ckpt.parent / "result.json"
    if result.is_file():
        r = json.loads(result.read_text(encoding="utf-8"))
        entry.update({"run": r.get("run"), "metrics": r.get("metrics"), "train_seconds": r.get("train_seconds"),
                      "git_commit": r.get("git_commit")})
    return entry


def scrub(text: str, temp_out: Path) -> str:
    """A text output with this machine's paths taken out: the temporary run folder reads as the notebook's default,
    runs/notebook/<folder>."""
    text = text.replace(str(temp_out), f"runs/notebook/{temp_out.name}")
    return portable(text)


def scrub_outputs(nb: dict, temp_out: Path) -> None:
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = scrub(out["text"] if isinstance(out["text"], str) else "".join(out["text"]), temp_out)
            for key, value in out.get("data", {}).items():
                if key.startswith("text/"):  # text/plain, text/html; images stay as they are
                    out["data"][key] = scrub(value if isinstance(value, str) else "".join(value), temp_out)


def default_run_folder(nb: dict) -> str:
    """The folder name the notebook's own runs use under runs/notebook/ (its OUT_DIR default)."""
    for cell in nb["cells"]:
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        m = re.search(r'ROOT / "runs" / "notebook" / "([\w.-]+)"', src)
        if m:
            return m.group(1)
    raise UserError("the notebook has no OUT_DIR under runs/notebook/ (its first code cell defines it)")


def render(stage: str, timeout: int, root: Path = REPO_ROOT) -> None:
    import nbclient
    import nbformat

    missing = {n: p for n, p in reference_checkpoints(stage, root).items() if not p.is_file()}
    if missing:
        runs = all_reference_runs(root)
        cmds = "; ".join(reference_command(runs[f"{stage}/results/{n}.json"]) for n in missing)
        raise UserError(f"{stage}: the notebook loads reference checkpoints not trained yet "
                        f"({', '.join(portable(str(p)) for p in missing.values())}); run first: {cmds}")
    path = notebook_path(stage, root)
    nb = nbformat.read(path, as_version=4)
    folder = default_run_folder(nb)
    env_before = {k: os.environ.get(k) for k in ("MY_LLM_QUICK", "MY_LLM_NOTEBOOK_OUT")}
    with tempfile.TemporaryDirectory(prefix="render_") as tmp:
        temp_out = Path(tmp) / folder
        os.environ.pop("MY_LLM_QUICK", None)
        os.environ["MY_LLM_NOTEBOOK_OUT"] = str(temp_out)
        t0 = time.time()
        print(f"{stage}: running {path.relative_to(root)} in full mode (each cell may take up to {timeout} s) ...",
              flush=True)
        try:
            nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}}).execute()
        except nbclient.exceptions.CellExecutionError as e:
            raise UserError(f"{stage}: a cell failed, nothing was written: {str(e).strip().splitlines()[-1]}")
        finally:
            for k, v in env_before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        scrub_outputs(nb, temp_out)
    import torch

    nb.metadata[META_KEY] = {"rendered": {
        "code_sha256": code_hash(nb),
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.time() - t0),
        "torch": torch.__version__,
        "references": {n: reference_summary(n, p, root) for n, p in reference_checkpoints(stage, root).items()},
        "command": f"python scripts/render_notebooks.py --stage {stage}",
    }}
    atomic_write_text(path, nbformat.writes(nb) + "\n")
    print(f"{stage}: wrote {path.relative_to(root)} with its outputs ({time.time() - t0:.0f} s)")


def clear(stage: str, root: Path = REPO_ROOT) -> None:
    import nbformat

    path = notebook_path(stage, root)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    nb.metadata.pop(META_KEY, None)
    atomic_write_text(path, nbformat.writes(nb) + "\n")
    print(f"{stage}: cleared {path.relative_to(root)}")


def stage_name(text: str) -> str:
    for stage in STAGES:
        if text in (stage, stage.split("_")[0], stage.split("_")[0].removeprefix("stage")):
            return stage
    raise argparse.ArgumentTypeError(f"unknown stage {text!r}: use 1-6 or a folder name such as stage2_rnn_lstm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", type=stage_name, nargs="+", action="extend", default=None,
                   help="stages to render: numbers (--stage 2 5) or folder names (default: every stage)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report each notebook's state; exit 1 if one is stale")
    mode.add_argument("--clear", action="store_true", help="strip the outputs instead of rendering")
    p.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    stages = args.stage or list(NOTEBOOKS)
    if args.check:
        states = {s: status(json.loads(notebook_path(s).read_text(encoding="utf-8"))) for s in stages}
        for s, state in states.items():
            print(f"{s:26s} {state}")
        if any(state.startswith("stale") for state in states.values()):
            raise UserError("stale notebooks: render them again, or clear them (--clear)")
        return
    for stage in stages:
        clear(stage) if args.clear else render(stage, args.timeout)


if __name__ == "__main__":
    run_cli(main)
