"""Stage 2 predict.py: a classify.py checkpoint as a function for other scripts (load_predictor: the model that was
scored, alone or in a batch the same), its command line, and one-line errors for checkpoints it cannot use.

The classifier is trained once on the tiny SST-2 files conftest.py writes, into a temporary folder.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_one_line_error, cli, run_script
from scripts.common import UserError, save_checkpoint
from stage2_rnn_lstm import classify, predict
from stage2_rnn_lstm.data import load_sst2

STAGE = "stage2_rnn_lstm"


@pytest.fixture(scope="module")
def trained(shared_tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sst2_run")
    classify.main(["--data-dir", str(shared_tiny_data_dir), "--out-dir", str(out), "--epochs", "3",
                   "--batch-size", "16", "--emb-dim", "16", "--hidden-dim", "32", "--lr", "1e-2", "--dropout", "0.1",
                   "--min-freq", "1", "--quick"])
    return out


def test_predictor_is_the_model_that_was_scored(trained, shared_tiny_data_dir):
    r = json.loads((trained / "result.json").read_text())
    predictor = predict.load_predictor(trained / "best.pt", "cpu")
    dev, labels = load_sst2(shared_tiny_data_dir, "dev")
    probs = predictor(dev)
    assert probs.shape == (len(dev), 2) and torch.allclose(probs.sum(-1), torch.ones(len(dev)), atol=1e-5)
    accuracy = sum(int(p) == y for p, y in zip(probs.argmax(-1), labels)) / len(labels)
    assert round(accuracy, 4) == r["metrics"]["accuracy"]              # the predictor is the model that was scored
    assert torch.allclose(predictor([dev[5]])[0], probs[5], atol=1e-6)   # alone or in a batch: the same
    assert predictor(["What a wonderful, brilliant film!", ""]).shape == (2, 2)


def test_command_line(trained, capsys):
    predict.main(["--checkpoint", str(trained / "best.pt"), "--device", "cpu", "--json", "a fine film", "dull"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["a fine film", "dull"]
    assert all(r["label"] in predict.LABELS and abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    code, err = cli(predict.main, ["--checkpoint", str(trained / "best.pt"), "  "], capsys)
    assert_one_line_error(code, err, r"no sentence to classify")


def test_bad_checkpoints(trained, tmp_path):
    """A truncated file, another stage's checkpoint, a Stage 2 language model (with its kind, and an older one
    without), none at all, and a vocabulary from another run: one clear message each."""
    good = (trained / "best.pt").read_bytes()
    (tmp_path / "vocab.json").write_bytes((trained / "vocab.json").read_bytes())
    lm = {"stage": STAGE, "model": {}, "config": {"vocab_size": 3}}
    for write, pattern in [
        (lambda p: p.write_bytes(good[:500]), r"cannot read checkpoint .*corrupt"),
        (lambda p: save_checkpoint({"stage": "stage1_mlp", "model": {}, "config": {}}, p),
         r"written by stage1_mlp, not stage2_rnn_lstm"),
        (lambda p: save_checkpoint({**lm, "kind": "language_model"}, p), r"holds a language model, not a classifier"),
        (lambda p: save_checkpoint({**lm, "vocab": {"file": "vocab.json", "fingerprint": "x"}}, p),
         r"is not the vocabulary .* was trained with"),
    ]:
        write(tmp_path / "x.pt")
        with pytest.raises(UserError, match=pattern):
            predict.load_predictor(tmp_path / "x.pt", "cpu")
    with pytest.raises(UserError, match="checkpoint not found"):
        predict.load_predictor(tmp_path / "missing.pt", "cpu")
    (tmp_path / "best.pt").write_bytes(good)
    (tmp_path / "vocab.json").write_text(json.dumps({"itos": ["<pad>", "<unk>", "other"]}))
    with pytest.raises(UserError, match="is not the vocabulary .* was trained with"):
        predict.load_predictor(tmp_path / "best.pt", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True])
def test_help(tmp_path, module):
    proc = run_script("predict", "--help", data_dir=tmp_path, module=module, stage=STAGE)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--checkpoint" in proc.stdout, proc.stderr
