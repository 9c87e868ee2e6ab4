"""scripts/compare_classifiers.py: the capstone's plumbing, without training five real models.

The training itself is each stage's own script, tested in that stage's tests; each stage's load_predictor is tested
there too (it must give the accuracy its stage recorded). Here: the settings are the stages' reference settings, a
missing pre-trained checkpoint is a one-line error before anything trains, and a run scores the models it trained,
writes the JSON, the plot and a table that scripts/results_table.py can put into docs/roadmap.md.
"""
from __future__ import annotations

import gzip
import importlib
import json
import sys
import types

import pytest
import torch

from conftest import REPO_ROOT
from scripts import compare_classifiers as cc
from scripts import results_table
from scripts.common import UserError, all_reference_runs, reference_command


@pytest.mark.parametrize("model", cc.MODELS, ids=cc.NAMES)
def test_settings_are_the_stage_reference_settings(model):
    """Each model trains with its stage's declared SST-2 run (so the row is that stage's model), and a fine-tuned one
    starts from the checkpoint its stage's declared pre-training writes: the fine-tune script's own default."""
    declared = all_reference_runs()[model.run]
    assert model.argv == declared and model.run.startswith(f"{model.stage}/results/")
    script = importlib.import_module(declared[0].removesuffix(".py").replace("/", "."))
    args = script.parse_args(declared[1:])
    if model.pretrained:
        default = getattr(cc.parse_args([]), f"{model.pretrained}_checkpoint")
        assert args.checkpoint == default
        assert model.pretrained_run in all_reference_runs()
    if (REPO_ROOT / model.run).is_file():  # its published result is the declared run
        assert json.loads((REPO_ROOT / model.run).read_text())["command"] == reference_command(declared)


def test_missing_pretrained_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(UserError, match=r"does not exist\. Make it with `python stage5_gpt/train\.py"):
        cc.main(["--only", "gpt", "--gpt-checkpoint", str(tmp_path / "none.pt"), "--data-dir", str(tmp_path)])


def test_unknown_model_is_an_argparse_error():
    with pytest.raises(SystemExit):
        cc.parse_args(["--only", "svm"])


def write_dev(folder, rows):
    sst2 = folder / "glue" / "sst2"
    sst2.mkdir(parents=True)
    with gzip.open(sst2 / "dev.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))


def test_a_run_scores_writes_and_tables(tmp_path, monkeypatch):
    """Two fake 'stages': training is replaced, scoring goes through load_predictor as for the real ones."""
    rows = [("good film", 1), ("bad film", 0), ("good but bad", 0), ("quite good", 1)]
    write_dev(tmp_path / "data", rows)
    fake = types.ModuleType("fake_stage_predictor")

    def load_predictor(checkpoint, device="cpu"):
        assert checkpoint.name == "best.pt"
        return lambda texts: torch.tensor([[0.2, 0.8] if "good" in t else [0.9, 0.1] for t in texts])
    fake.load_predictor = load_predictor
    monkeypatch.setitem(sys.modules, "fake_stage_predictor", fake)
    models = [cc.Model("one", "stage1_mlp", "keyword rule", "stage1_mlp/results/sst2.json", "fake_stage_predictor"),
              cc.Model("two", "stage2_rnn_lstm", "the same rule", "stage2_rnn_lstm/results/sst2_lstm.json",
                       "fake_stage_predictor")]
    monkeypatch.setattr(cc, "MODELS", models)
    monkeypatch.setattr(cc, "NAMES", ["one", "two"])
    trained = []

    def fake_train(model, args, out_dir, log):
        trained.append(model.name)
        return {"metrics": {"accuracy": 0.75}, "params": 1000, "train_seconds": 12.0,
                "command": f"python {model.argv[0]}"}
    monkeypatch.setattr(cc, "train", fake_train)
    result_path = tmp_path / "out" / "compare.json"
    cc.main(["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "runs"), "--result", str(result_path)])
    assert trained == ["one", "two"]
    result = json.loads(result_path.read_text())
    assert [r["name"] for r in result["models"]] == ["one", "two"]
    first = result["models"][0]
    assert first["accuracy"] == 0.75 and first["stage_accuracy"] == 0.75   # 3 of 4: "good but bad" is wrong
    assert first["macro_f1"] == round((2 / 3 + 0.8) / 2, 4)                # negative F1 2/3, positive 4/5
    assert first["infer_ms_per_sentence"] > 0 and first["pretraining"] is None
    assert result_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = results_table.compare_table(result)
    assert "| keyword rule | stage1_mlp | 0.7500 | 0.7333 | 0.00M | 12 s | - |" in table


def test_roadmap_table_comes_from_the_result(tmp_path):
    """results_table puts the capstone's table into docs/roadmap.md, and --check notices when it is stale."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "README.md").write_text(f"{results_table.START}\n{results_table.END}\n")
    (tmp_path / "docs" / "roadmap.md").write_text(
        f"# r\n{results_table.EVOLUTION_START}\n{results_table.EVOLUTION_END}\n"
        f"{results_table.COMPARE_START}\nold\n{results_table.COMPARE_END}\n")
    row = {"architecture": "LSTM", "stage": "stage2_rnn_lstm", "accuracy": 0.85, "macro_f1": 0.85, "params": 2e6,
           "train_seconds": 300.0, "pretraining": None, "infer_ms_per_sentence": 1.5}
    (tmp_path / "results" / "compare_sst2.json").write_text(json.dumps({"models": [row]}))
    assert results_table.main(["--check"], root=tmp_path) == 1
    assert results_table.main(["--write"], root=tmp_path) == 0
    assert "| LSTM | stage2_rnn_lstm | 0.8500 |" in (tmp_path / "docs" / "roadmap.md").read_text()
    assert results_table.main(["--check"], root=tmp_path) == 0
