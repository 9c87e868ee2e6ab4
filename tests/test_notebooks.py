"""Every stage's notebook runs top to bottom, as a learner would run it, in quick mode.

    MY_LLM_DATA=/path/to/data python -m pytest tests/test_notebooks.py -q

A notebook needs its stage's real data, so its run is skipped unless $MY_LLM_DATA holds that data set. The kernel
starts in the stage folder, the notebook's own, so relative paths behave as in Jupyter. MY_LLM_NOTEBOOK_OUT sends
the notebook's training run to a temporary folder, so the test leaves no files in the repo.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# stage folder -> the data set folder its notebook reads (under $MY_LLM_DATA)
NOTEBOOKS = {"stage1_mlp": "imdb", "stage2_rnn_lstm": "tiny_shakespeare", "stage3_attention_seq2seq": "multi30k",
             "stage4_transformer": "multi30k", "stage5_gpt": "tiny_shakespeare", "stage6_bert": "wikitext-2"}
# what the notebook's training run must leave in MY_LLM_NOTEBOOK_OUT (the vocabulary files differ by stage)
RUN_FILES = {"stage3_attention_seq2seq": ("best.pt", "last.pt", "vocab_src.json", "vocab_tgt.json", "result.json"),
             "stage5_gpt": ("best.pt", "last.pt", "tokenizer.json", "result.json"),
             "stage6_bert": ("best.pt", "last.pt", "tokenizer.json", "train.log", "result.json")}
DEFAULT_RUN_FILES = ("best.pt", "last.pt", "vocab.json", "result.json")


def _stage_files(stage_dir: Path) -> set[Path]:
    """Files under the stage folder that a stray write could add; results/ is left out (only full runs write there)."""
    return {p for p in stage_dir.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and "results" not in p.relative_to(stage_dir).parts}


@pytest.mark.parametrize("stage", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(stage):
    nb = json.loads((REPO / stage / f"{stage}.ipynb").read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"code cells {dirty} keep outputs; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("stage", [pytest.param(stage, marks=pytest.mark.real_data(folder))
                                   for stage, folder in NOTEBOOKS.items()])
def test_notebook_runs_in_quick_mode(stage, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    stage_dir = REPO / stage

    out_dir = tmp_path / "run"
    monkeypatch.setenv("MY_LLM_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster, and never oversubscribes a busy CPU
    monkeypatch.setenv("MY_LLM_NOTEBOOK_OUT", str(out_dir))
    default_run_dir = REPO / "runs" / "notebook"
    had_default_run_dir = default_run_dir.exists()
    before = _stage_files(stage_dir)

    nb = nbformat.read(stage_dir / f"{stage}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(stage_dir)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, at the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"cells raised: {[(o.ename, o.evalue) for o in errors]}"
    # every cell that draws a figure shows it (train.py and plot_confusion switch matplotlib to Agg on the way)
    blank = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "plt.show()" in c.source
             and not any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not blank, f"cells {blank} call plt.show() but display no figure"

    # the training run went to the temporary folder, and nothing was written into the repo
    for name in RUN_FILES.get(stage, DEFAULT_RUN_FILES):
        assert (out_dir / name).is_file(), f"the notebook's run did not write {out_dir / name}"
    assert json.loads((out_dir / "result.json").read_text(encoding="utf-8"))["quick"] is True
    if not had_default_run_dir:
        assert not default_run_dir.exists(), f"the notebook wrote into {default_run_dir} despite MY_LLM_NOTEBOOK_OUT"
    new = sorted(str(p.relative_to(REPO)) for p in _stage_files(stage_dir) - before)
    assert not new, f"the notebook left files in the repo: {new}"
