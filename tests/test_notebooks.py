"""Every stage's notebook runs top to bottom, as a learner would run it, in quick mode.

    MY_LLM_DATA=/path/to/data python -m pytest tests/test_notebooks.py -q

A notebook needs its stage's real data, so its run is skipped unless $MY_LLM_DATA holds that data set. The kernel
starts in the stage folder, the notebook's own, so relative paths behave as in Jupyter. MY_LLM_NOTEBOOK_OUT sends
the notebook's training run to a temporary folder, so the test leaves no files in the repo.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts import render_notebooks

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
def test_notebook_outputs_are_current(stage):
    """A committed notebook is either clean (code and text only) or rendered by scripts/render_notebooks.py from the
    code it holds now: editing a code cell without rendering again fails here."""
    nb = json.loads((REPO / stage / f"{stage}.ipynb").read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    state = render_notebooks.status(nb)
    assert not state.startswith("stale"), f"{stage}.ipynb is {state}"
    if state == "current":
        assert all(c.get("execution_count") for c in code), "a rendered notebook ran every code cell"
        counts = [c["execution_count"] for c in code]
        assert counts == sorted(counts), "a rendered notebook ran its cells top to bottom"
        errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
        assert not errors, f"rendered with errors: {[(o['ename'], o['evalue']) for o in errors]}"
        texts = [o.get("text") or o.get("data", {}).get("text/plain", "") for c in code for o in c["outputs"]]
        texts = ["".join(t) if isinstance(t, list) else t for t in texts]
        leaks = [t[:120] for t in texts if re.search(r"(?<![\w.])(/home/|/Users/|/tmp/|/work/|/root/|[A-Z]:\\)", t)]
        assert not leaks, f"outputs show this machine's paths: {leaks}"
        blank = [i for i, c in enumerate(code) if "plt.show()" in "".join(c["source"])
                 and not any("image/png" in o.get("data", {}) for o in c["outputs"])]
        assert not blank, f"code cells {blank} call plt.show() but hold no figure"


def test_status_sees_a_changed_cell():
    """The staleness check can fail: a rendered notebook whose code changes afterwards is stale."""
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "source": "print(1)", "execution_count": 1,
                                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\n"}]}]}
    assert render_notebooks.status(nb).startswith("stale")                      # outputs, never rendered
    nb["metadata"]["my_llm"] = {"rendered": {"code_sha256": render_notebooks.code_hash(nb), "date": "d"}}
    assert render_notebooks.status(nb) == "current"
    nb["cells"][0]["source"] = "print(2)"
    assert render_notebooks.status(nb).startswith("stale: the code cells changed")
    nb["cells"][0].update(outputs=[], execution_count=None)
    assert render_notebooks.status(nb).startswith("stale")                      # rendered metadata, no outputs
    del nb["metadata"]["my_llm"]
    assert render_notebooks.status(nb) == "clean"


def test_render_refuses_without_reference_checkpoints(tmp_path, monkeypatch):
    """Missing reference runs: a one-line error naming the command to run, and the notebook is left as it was."""
    from scripts.common import UserError

    monkeypatch.setattr(render_notebooks, "reference_checkpoints",
                        lambda stage, root=REPO: {"tiny_shakespeare_lstm": tmp_path / "missing" / "best.pt"})
    before = (REPO / "stage2_rnn_lstm" / "stage2_rnn_lstm.ipynb").read_bytes()
    with pytest.raises(UserError, match="stage2_rnn_lstm/train.py"):
        render_notebooks.render("stage2_rnn_lstm", timeout=10)
    assert (REPO / "stage2_rnn_lstm" / "stage2_rnn_lstm.ipynb").read_bytes() == before


def test_every_notebook_declares_what_it_loads():
    assert set(render_notebooks.NOTEBOOKS) == set(NOTEBOOKS)
    for stage in NOTEBOOKS:
        for name, path in render_notebooks.reference_checkpoints(stage).items():
            assert path.name == "best.pt" and "runs" in path.parts, (stage, name, path)


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
