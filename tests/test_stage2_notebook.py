"""The Stage 2 notebook runs top to bottom, as a learner would run it, in quick mode.

    MY_LLM_DATA=/path/to/data python -m pytest tests/test_stage2_notebook.py -q

Skipped unless $MY_LLM_DATA holds tiny_shakespeare/input.txt.gz (the notebook needs the real data). The kernel starts
in stage2_rnn_lstm/, the notebook's own folder, so relative paths behave as in Jupyter. MY_LLM_NOTEBOOK_OUT sends the
notebook's training run to a temporary folder, so the test leaves no files in the repo.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGE_DIR = REPO / "stage2_rnn_lstm"
NOTEBOOK = STAGE_DIR / "stage2_rnn_lstm.ipynb"
DATA = os.environ.get("MY_LLM_DATA")
HAS_SHAKESPEARE = bool(DATA) and (Path(DATA).expanduser() / "tiny_shakespeare" / "input.txt.gz").is_file()


def _stage_files() -> set[Path]:
    """Files under stage2_rnn_lstm/ that a stray write could add; results/ is left out (only full runs write there)."""
    return {p for p in STAGE_DIR.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and "results" not in p.relative_to(STAGE_DIR).parts}


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"code cells {dirty} keep outputs; clear them before committing"


@pytest.mark.skipif(not HAS_SHAKESPEARE, reason="set MY_LLM_DATA to a data folder with tiny_shakespeare/input.txt.gz")
def test_notebook_runs_in_quick_mode(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    out_dir = tmp_path / "run"
    monkeypatch.setenv("MY_LLM_QUICK", "1")
    monkeypatch.setenv("MY_LLM_NOTEBOOK_OUT", str(out_dir))
    default_run_dir = REPO / "runs" / "notebook"
    had_default_run_dir = default_run_dir.exists()
    before = _stage_files()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(STAGE_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, at the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"cells raised: {[(o.ename, o.evalue) for o in errors]}"
    # every cell that draws a figure shows it
    blank = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "plt.show()" in c.source
             and not any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not blank, f"cells {blank} call plt.show() but display no figure"

    # the training run went to the temporary folder, and nothing was written into the repo
    for name in ("best.pt", "last.pt", "vocab.json", "result.json"):
        assert (out_dir / name).is_file(), f"the notebook's run did not write {out_dir / name}"
    assert json.loads((out_dir / "result.json").read_text(encoding="utf-8"))["quick"] is True
    if not had_default_run_dir:
        assert not default_run_dir.exists(), f"the notebook wrote into {default_run_dir} despite MY_LLM_NOTEBOOK_OUT"
    new = sorted(str(p.relative_to(REPO)) for p in _stage_files() - before)
    assert not new, f"the notebook left files in the repo: {new}"
