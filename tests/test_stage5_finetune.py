"""Stage 5 fine-tuning on tiny files: a pre-trained GPT learns SST-2 and records the run, predict.load_predictor gives
the recorded accuracy, --freeze trains the head only, exact resume, bad input, checkpoint kinds, and the default
checkpoint that chains to the WikiText-2 reference run."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_one_line_error, cli, write_tiny_data, write_tiny_lm_data
from scripts.common import UserError, load_checkpoint, resolved_config
from stage5_gpt import data, finetune, train
from stage5_gpt.predict import load_predictor
from stage5_gpt.reference_runs import GPT_CHECKPOINT, REFERENCE_RUNS


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    lm = write_tiny_lm_data(root / "data")
    write_tiny_data(root / "data")
    out = root / "lm"
    train.main(["--data-dir", str(lm), "--out-dir", str(out), "--result", str(out / "result.json"),
                "--dataset", "wikitext2", "--vocab-size", "300", "--epochs", "2", "--batch-size", "8",
                "--block-size", "32", "--n-layer", "2", "--n-head", "2", "--n-embd", "32"])
    return root / "data", out / "best.pt"


def ft_args(data_dir, ckpt, out, *extra):
    return ["--checkpoint", str(ckpt), "--data-dir", str(data_dir), "--out-dir", str(out),
            "--result", str(out / "result.json"), "--epochs", "3", "--batch-size", "16", "--lr", "3e-3",
            "--warmup-steps", "5", "--dropout", "0.0", *extra]


def test_finetune_learns_sst2_and_records_the_run(pretrained, tmp_path):
    data_dir, ckpt = pretrained
    finetune.main(ft_args(data_dir, ckpt, tmp_path / "ft", "--epochs", "10"))
    r = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert r["headline_metric"] == "accuracy" and r["split"] == "dev" and r["pretrained"] == str(ckpt)
    assert r["metrics"]["accuracy"] >= 0.7  # well above chance (0.5): the tiny SST-2 has cue words to find
    # the fine-tuned model travels with its tokenizer, and load_predictor gives the same dev accuracy one by one
    predict = load_predictor(tmp_path / "ft" / "best.pt")
    sentences, labels = data.load_sst2(data_dir, "dev")
    probs = torch.cat([predict([s]) for s in sentences])                        # (N, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(len(sentences)))
    assert not probs.requires_grad                                              # no autograd graph kept
    hits = sum(int(p.argmax()) == y for p, y in zip(probs, labels))
    assert round(hits / len(labels), 4) == r["metrics"]["accuracy"]
    assert torch.allclose(predict(sentences), probs, atol=1e-5)                 # padding a batch changes nothing
    finetune.main(ft_args(data_dir, ckpt, tmp_path / "scratch", "--from-scratch", "--epochs", "1"))
    assert json.loads((tmp_path / "scratch" / "result.json").read_text())["pretrained"] is None


def test_finetune_freeze_trains_only_the_head(pretrained, tmp_path):
    data_dir, ckpt = pretrained
    finetune.main(ft_args(data_dir, ckpt, tmp_path / "probe", "--freeze", "--epochs", "1"))
    before = load_checkpoint(ckpt)["model"]
    after = load_checkpoint(tmp_path / "probe" / "last.pt")["model"]
    assert all(torch.equal(before[k], after["gpt." + k]) for k in before)
    assert not torch.equal(after["head.weight"], torch.zeros_like(after["head.weight"]))


def test_finetune_resume_is_exact(pretrained, tmp_path):
    data_dir, ckpt = pretrained
    a, b = tmp_path / "a", tmp_path / "b"
    finetune.main(ft_args(data_dir, ckpt, a, "--epochs", "2", "--dropout", "0.1"))
    finetune.main(ft_args(data_dir, ckpt, b, "--epochs", "2", "--dropout", "0.1", "--max-steps", "5"))
    finetune.main(ft_args(data_dir, ckpt, b, "--epochs", "2", "--dropout", "0.1", "--resume"))
    ha, hb = load_checkpoint(a / "last.pt")["state"]["history"], load_checkpoint(b / "last.pt")["state"]["history"]
    assert ha == hb


def test_finetune_bad_input(pretrained, tmp_path, capsys, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    data_dir, ckpt = pretrained
    code, err = cli(finetune.main, ft_args(data_dir, tmp_path / "none.pt", tmp_path / "x"), capsys)
    assert_one_line_error(code, err, r"checkpoint not found: .*none\.pt; the WikiText-2 reference run writes it: "
                                     r"`python stage5_gpt/train\.py --dataset wikitext2 .*`")
    code, err = cli(finetune.main, ft_args(tmp_path / "empty", ckpt, tmp_path / "y"), capsys)
    assert_one_line_error(code, err, "SST-2 not found")
    with pytest.raises(SystemExit):
        finetune.parse_args(["--from-scratch", "--freeze"])


def test_kinds_and_wrong_checkpoints_are_one_line(pretrained, tmp_path, capsys):
    data_dir, ckpt = pretrained
    assert load_checkpoint(ckpt)["kind"] == "language_model"
    finetune.main(ft_args(data_dir, ckpt, tmp_path / "ft", "--epochs", "1"))
    assert load_checkpoint(tmp_path / "ft" / "best.pt")["kind"] == "classifier"
    with pytest.raises(UserError, match="holds a language model, not a classifier"):
        load_predictor(ckpt)
    code, err = cli(finetune.main, ft_args(data_dir, tmp_path / "ft" / "best.pt", tmp_path / "ft2"), capsys)
    assert_one_line_error(code, err, "holds a classifier, not a language model")


def test_default_checkpoint_is_the_wikitext2_reference_runs():
    """The chain by construction: the declared WikiText-2 run writes GPT_CHECKPOINT, which finetune.py reads by
    default, so the declared fine-tunes need no --checkpoint."""
    assert train.parse_args(REFERENCE_RUNS["wikitext2"][1:]).out_dir + "/best.pt" == GPT_CHECKPOINT
    assert finetune.parse_args([]).checkpoint == GPT_CHECKPOINT
    for name in ("sst2_finetune", "sst2_scratch"):
        args = finetune.parse_args(REFERENCE_RUNS[name][1:])
        assert args.checkpoint == GPT_CHECKPOINT and args.out_dir == f"runs/stage5_gpt/{name}"
        assert resolved_config(args)["from_scratch"] == (name == "sst2_scratch")
