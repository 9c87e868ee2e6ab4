"""Stage 1 scripts end to end on tiny data: training, exact resume, interrupts, checkpoints, errors,
evaluate.py, predict.py, --help, the metrics, and a smoke run on the real data when it is available.

Every run writes into tmp_path (--out-dir and --result), so the committed stage1_mlp/results are never touched.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import math
import random
import shlex
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import N_TEST, N_TRAIN, assert_one_line_error, cli, run_script, signal_mid_training
from scripts.common import (REPO_ROOT, UserError, load_checkpoint, reference_command, reference_run_name,
                            resolved_config, rng_state, save_checkpoint, set_rng_state)
from stage1_mlp import evaluate, predict, train
from stage1_mlp.reference_runs import CLASSIFIER_CHECKPOINT, REFERENCE_RUNS
from stage1_mlp.data import Vocab, load_split, phrase_groups, train_val_split
from stage1_mlp.evaluate import classification_metrics

RESULT_KEYS = {"stage", "dataset", "split", "metrics", "train_seconds", "device", "threads", "params", "command",
               "git_commit", "date"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_args(data_dir: Path, out_dir: Path, *extra: str, dataset: str = "imdb") -> list[str]:
    """Flags for a short run on tiny data, with every output inside out_dir (later flags override earlier ones)."""
    return ["--dataset", dataset, "--data-dir", str(data_dir), "--out-dir", str(out_dir),
            "--result", str(out_dir / "result.json"), "--epochs", "4", "--batch-size", "32", "--lr", "0.01", *extra]


def losses(ckpt: dict) -> list[float]:
    return [v for _, v in ckpt["state"]["history"]["train_loss"]]


# ----------------------------------------------------------------------------- a short run

@pytest.fixture(scope="module")
def trained_imdb(shared_tiny_data_dir, tmp_path_factory):
    """train.main on the tiny IMDb data: 4 epochs, batch 32, lr 0.01 (the scripts as scripts: the slow tests)."""
    out = tmp_path_factory.mktemp("imdb_run")
    train.main(train_args(shared_tiny_data_dir, out))
    return out


def test_short_run_writes_all_outputs(trained_imdb):
    """A run writes last.pt, best.pt, vocab.json, train.log, the result JSON with every required key, and PNGs."""
    for name in ["last.pt", "best.pt", "vocab.json", "train.log", "result.json"]:
        assert (trained_imdb / name).is_file(), name
    for name in ["result.png", "result_confusion.png"]:
        assert (trained_imdb / name).read_bytes()[:8] == PNG_MAGIC, name
    result = json.loads((trained_imdb / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert (result["stage"], result["dataset"], result["split"]) == ("stage1_mlp", "imdb", "test")
    assert {"accuracy", "macro_f1", "loss"} <= set(result["metrics"])
    assert result["command"].startswith("python stage1_mlp/train.py --dataset imdb")
    assert "run" not in result  # a run on other settings is an experiment, not a reference run
    assert result["hparams"] == resolved_config(train.parse_args(train_args(Path("d"), Path("o"))))
    assert load_checkpoint(trained_imdb / "best.pt", kind="classifier")["kind"] == "classifier"
    assert result["params"] == sum(t.numel() for t in load_checkpoint(trained_imdb / "best.pt")["model"].values())
    assert sum(map(sum, result["confusion"])) == N_TEST


def test_load_predictor_gives_the_recorded_accuracy(trained_imdb, shared_tiny_data_dir):
    """predict.load_predictor (what scripts/compare_classifiers.py times) scores test as the run did."""
    classify = predict.load_predictor(trained_imdb / "best.pt")
    texts, labels = load_split("imdb", shared_tiny_data_dir, "test")
    probs = classify(texts)                                                       # (N, 2)
    assert probs.shape == (len(texts), 2) and torch.allclose(probs.sum(-1), torch.ones(len(texts)))
    accuracy = (probs.argmax(-1) == torch.tensor(labels)).float().mean().item()
    assert round(accuracy, 4) == json.loads((trained_imdb / "result.json").read_text())["metrics"]["accuracy"]
    assert torch.allclose(torch.cat([classify([t]) for t in texts[:5]]), probs[:5], atol=1e-6)


def test_short_run_learns(trained_imdb):
    """The tiny run is clearly above chance on the test split, and its losses fall."""
    result = json.loads((trained_imdb / "result.json").read_text())
    assert result["metrics"]["accuracy"] >= 0.85
    ckpt = load_checkpoint(trained_imdb / "last.pt", stage="stage1_mlp")
    history = ckpt["state"]["history"]
    train_loss = losses(ckpt)
    assert [s for s, _ in history["train_loss"]] == list(range(1, len(train_loss) + 1))
    assert np.mean(train_loss[-6:]) < np.mean(train_loss[:6]) - 0.05
    assert history["val_loss"][-1][1] < history["val_loss"][0][1]


@pytest.mark.parametrize("dataset,split,min_accuracy", [("sst2", "dev", 0.85), ("ag_news", "test", 0.5)])
def test_short_run_other_datasets(tiny_data_dir, tmp_path, dataset, split, min_accuracy):
    """SST-2 (scored on dev) and 4-class AG News (chance 0.25) also train to well above chance."""
    train.main(train_args(tiny_data_dir, tmp_path, "--epochs", "6", "--patience", "6", dataset=dataset))
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["dataset"], result["split"]) == (dataset, split)
    assert result["metrics"]["accuracy"] >= min_accuracy
    n_classes = 4 if dataset == "ag_news" else 2
    assert len(result["confusion"]) == n_classes and sum(map(sum, result["confusion"])) == N_TEST


SST2_SENTENCES = [f"sentence {i} has the word common ." for i in range(20)] + ["a truly moving story ."]
SST2_PHRASES = ["truly", "truly moving", "a truly moving", "moving story"]  # all from the last sentence


@pytest.fixture
def sst2_with_phrases(tmp_path) -> Path:
    """A data directory whose SST-2 train file holds sentences and phrases of one of them, like the real one."""
    glue = tmp_path / "data" / "glue" / "sst2"
    glue.mkdir(parents=True)
    for file, rows in [("train.tsv.gz", SST2_SENTENCES + SST2_PHRASES), ("dev.tsv.gz", SST2_SENTENCES[:4])]:
        with gzip.open(glue / file, "wt", encoding="utf-8") as f:
            f.write("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(rows)))
    return tmp_path / "data"


def test_sst2_vocabulary_counts_sentences_not_phrases(sst2_with_phrases):
    """In SST-2 a word of one sentence is in all of that sentence's phrases: --min-freq must count sentences."""
    args = train.parse_args(["--dataset", "sst2", "--min-freq", "2", "--seed", "2"])
    _, vocab, _ = train.prepare_data(args, sst2_with_phrases, None, logging.getLogger("test"))
    rows = SST2_SENTENCES + SST2_PHRASES
    train_idx, _ = train_val_split(len(rows), args.val_fraction, args.seed, phrase_groups(rows))
    assert rows.index("a truly moving story .") in train_idx.tolist()  # the sentence is on the training side
    assert "truly" in Vocab.build([rows[i] for i in train_idx.tolist()], 2, 2).stoi  # counted over rows: kept
    assert "common" in vocab.stoi                 # in 20 sentences
    assert "truly" not in vocab.stoi              # in 4 training rows, but all from one sentence


def test_sst2_validates_on_whole_sentences(sst2_with_phrases):
    """Held-out phrases are dropped from validation: it holds whole sentences only, like the dev set."""
    args = train.parse_args(["--dataset", "sst2", "--seed", "0"])
    rows = SST2_SENTENCES + SST2_PHRASES
    _, val_idx = train_val_split(len(rows), args.val_fraction, args.seed, phrase_groups(rows))
    assert rows.index("truly") in val_idx.tolist()  # this seed holds out the sentence with phrases
    bags, _, _ = train.prepare_data(args, sst2_with_phrases, None, logging.getLogger("test"))
    assert len(bags["val"]) == sum(rows[i] in SST2_SENTENCES for i in val_idx.tolist()) == 2


def test_sst2_sentence_weight(sst2_with_phrases):
    """--sentence-weight w gives training sentences weight w and their phrases weight 1."""
    args = train.parse_args(["--dataset", "sst2", "--seed", "2", "--sentence-weight", "4"])
    bags, _, weights = train.prepare_data(args, sst2_with_phrases, None, logging.getLogger("test"))
    assert len(weights) == len(bags["train"]) == 23
    assert sorted(weights.tolist()) == [1.0] * 4 + [4.0] * 19  # 4 phrases, 19 sentences (2 held out)


def test_sentence_weight_rejected_without_phrases(capsys):
    """--sentence-weight means nothing for IMDb, so asking for it there is an error, not a silent no-op."""
    code, err = cli(train.main, ["--dataset", "imdb", "--sentence-weight", "3"], capsys)
    assert_one_line_error(code, err, r"--sentence-weight applies to .*sst2.*not imdb")


def test_quick_uses_its_own_lr_unless_lr_is_given():
    """--quick trains ~16 steps an epoch, so it raises the default lr; an explicit --lr always wins."""
    assert train.parse_args([]).lr == 2e-3
    assert train.parse_args(["--quick"]).lr == train.QUICK_LR
    assert train.parse_args(["--quick", "--lr", "0.003"]).lr == 0.003
    assert train.parse_args(["--quick", "--lr=0.004"]).lr == 0.004
    assert train.parse_args(["--quick", "--l", "0.005"]).lr == 0.005  # argparse's abbreviation of --lr counts too


def test_default_result_goes_to_out_dir(tiny_data_dir, tmp_path):
    """Without --result, a run (quick or not) writes <out-dir>/result.json, never into stage1_mlp/results."""
    committed = {p.name: p.read_bytes() for p in (REPO_ROOT / "stage1_mlp" / "results").iterdir()}
    for flags, out in [(["--quick"], tmp_path / "quick"), ([], tmp_path / "full")]:
        train.main([*flags, "--dataset", "sst2", "--data-dir", str(tiny_data_dir), "--out-dir", str(out),
                    "--epochs", "1", "--batch-size", "32"])
        assert json.loads((out / "result.json").read_text())["quick"] is bool(flags)
        assert (out / "result.png").is_file() and (out / "result_confusion.png").is_file()
    assert {p.name: p.read_bytes() for p in (REPO_ROOT / "stage1_mlp" / "results").iterdir()} == committed


# ----------------------------------------------------------------------------- reference runs

def test_reference_runs_are_declared_for_every_published_result():
    """Every stage1_mlp/results/*.json has a declared run, each declaration parses, and the published file records
    its run name, the declared command, and exactly the configuration that command resolves to."""
    published = {p.stem for p in (REPO_ROOT / "stage1_mlp" / "results").glob("*.json")}
    assert set(REFERENCE_RUNS) == published
    for name, argv in REFERENCE_RUNS.items():
        assert argv[0] == "stage1_mlp/train.py"
        assert not {"--out-dir", "--result", "--data-dir", "--device"} & set(argv), name  # where-flags stay out
        args = train.parse_args(argv[1:])
        assert reference_run_name(REFERENCE_RUNS, "stage1_mlp/train.py", train.parse_args, args) == name
        result = json.loads((REPO_ROOT / "stage1_mlp" / "results" / f"{name}.json").read_text())
        assert (result["run"], result["command"]) == (name, reference_command(argv))
        assert (result["dataset"], result["hparams"]) == (args.dataset, resolved_config(args))
        assert result["data_dir"] == "$MY_LLM_DATA"


def test_reference_run_name_matches_settings_not_text():
    """Flag order, another spelling of a number and a typed default still name the reference run; a changed setting
    does not."""
    def name(argv):
        return reference_run_name(REFERENCE_RUNS, "stage1_mlp/train.py", train.parse_args, train.parse_args(argv))
    assert name([]) == name(["--dataset", "imdb", "--out-dir", "elsewhere", "--device", "cpu"]) == "imdb"
    assert name(["--sentence-weight", "10", "--epochs", "3", "--lr", "0.001", "--dropout", "0.5", "--emb-dim", "64",
                 "--dataset", "sst2"]) == "sst2"
    assert name(["--dataset", "sst2"]) is None and name(["--quick"]) is None and name(["--epochs", "5"]) is None


def test_a_reference_run_records_its_name_and_the_declared_command(tiny_data_dir, tmp_path):
    """A run whose settings are a declared run's (here "imdb", with a default typed out and where-flags added) names
    that run in its result file and records the declared command, the one to paste."""
    train.main(["--data-dir", str(tiny_data_dir), "--out-dir", str(tmp_path), "--device", "cpu", "--epochs", "6"])
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["run"], result["command"]) == ("imdb", reference_command(REFERENCE_RUNS["imdb"]))
    assert result["hparams"] == resolved_config(train.parse_args([]))


def test_classifier_checkpoint_is_what_the_imdb_run_writes():
    """evaluate.py's and predict.py's default checkpoint is the best.pt of the declared IMDb run."""
    args = train.parse_args(REFERENCE_RUNS["imdb"][1:])
    assert f"{args.out_dir}/best.pt" == CLASSIFIER_CHECKPOINT
    assert evaluate.parse_args([]).checkpoint == predict.parse_args([]).checkpoint == CLASSIFIER_CHECKPOINT


# ----------------------------------------------------------------------------- exact resume

def test_resume_is_exact(tiny_data_dir, tmp_path):
    """Stops by --max-steps (mid-epoch, at an epoch's end) then --resume give the same losses and weights as one run."""
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(train_args(tiny_data_dir, a, "--epochs", "3"))  # 180 train rows / 32 = 6 steps per epoch

    train.main(train_args(tiny_data_dir, b, "--epochs", "3", "--max-steps", "3"))
    assert load_checkpoint(b / "last.pt")["state"]["step"] == 3
    assert not (b / "best.pt").exists() and not (b / "result.json").exists()  # no epoch finished yet
    train.main(train_args(tiny_data_dir, b, "--resume", "--max-steps", "12"))
    assert load_checkpoint(b / "last.pt")["state"]["batch_in_epoch"] == 6
    train.main(train_args(tiny_data_dir, b, "--resume"))

    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert len(losses(ckpt_a)) == 18
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    assert ckpt_a["model"].keys() == ckpt_b["model"].keys()
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name
    for key in ["epoch", "step", "best_epoch", "best_val_acc"]:
        assert ckpt_a["state"][key] == ckpt_b["state"][key], key
    # the result file names the command that started the run, and the resumes after it
    first, *resumes = [shlex.join(["python", "stage1_mlp/train.py"] + train_args(tiny_data_dir, b, *extra))
                       for extra in (["--epochs", "3", "--max-steps", "3"], ["--resume", "--max-steps", "12"],
                                     ["--resume"])]
    result_b = json.loads((b / "result.json").read_text())
    assert result_b["command"] == first and result_b["resumed_with"] == resumes
    assert "resumed_with" not in json.loads((a / "result.json").read_text())


def test_resume_after_ctrl_c_mid_step_is_exact(tiny_data_dir, tmp_path, monkeypatch):
    """Ctrl-C inside a step stops after that step (exit 130), and resuming matches an uninterrupted run exactly."""
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(train_args(tiny_data_dir, a, "--epochs", "2"))
    real_loss, calls = F.cross_entropy, []

    def loss_with_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            # Python's own handler would raise KeyboardInterrupt here and end the whole pytest session
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, "train.py does not catch SIGINT"
            signal.raise_signal(signal.SIGINT)
        return real_loss(*args, **kwargs)
    monkeypatch.setattr(F, "cross_entropy", loss_with_ctrl_c)
    with pytest.raises(SystemExit) as e:
        train.main(train_args(tiny_data_dir, b, "--epochs", "2"))
    assert e.value.code == 130
    assert load_checkpoint(b / "last.pt")["state"]["step"] == 8
    monkeypatch.setattr(F, "cross_entropy", real_loss)
    train.main(train_args(tiny_data_dir, b, "--resume"))
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name


# ----------------------------------------------------------------------------- Ctrl-C and kill

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_checkpoint_and_resume_continues(tiny_data_dir, tmp_path, sig):
    """SIGINT (Ctrl-C) or SIGTERM during training: exit code 130, a loadable last.pt, and --resume carries on."""
    out = tmp_path / "run"
    args = train_args(tiny_data_dir, out, "--epochs", "100000", "--patience", "100000")  # runs until stopped
    proc = signal_mid_training("stage1_mlp/train.py", args, out, "epoch 2:", sig, tmp_path / "stderr")
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"stopped by {sig.name} at step" in err
    step = load_checkpoint(out / "last.pt", stage="stage1_mlp")["state"]["step"]
    assert step >= 12  # at least two epochs of 6 steps

    train.main(train_args(tiny_data_dir, out, "--resume", "--max-steps", str(step + 3)))
    ckpt = load_checkpoint(out / "last.pt", stage="stage1_mlp")
    assert ckpt["state"]["step"] == step + 3
    steps = [s for s, _ in ckpt["state"]["history"]["train_loss"]]
    assert steps[-1] == step + 3 and steps == sorted(steps)
    assert json.loads((out / "result.json").read_text())["steps"] == step + 3


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path):
    """save_checkpoint/load_checkpoint keep tensors (values and dtypes) and nested plain state."""
    state = {"stage": "stage1_mlp", "config": {"vocab_size": 10, "dropout": 0.3},
             "model": {"w": torch.randn(3, 4), "ids": torch.arange(5)},
             "state": {"history": {"train_loss": [[1, 0.5], [2, 0.25]]}, "done": False, "best": -1.0,
                       "nested": {"deep": [1, (2, 3), None, "text"]}}}
    save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt", stage="stage1_mlp")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["model"]["ids"].dtype == torch.int64 and torch.equal(loaded["model"]["ids"], torch.arange(5))
    assert loaded["config"] == state["config"] and loaded["state"] == state["state"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def _draws() -> list:
    return [random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), np.random.rand(2).tolist(),
            torch.rand(3).tolist(), torch.randn(2).tolist()]


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    """rng_state, saved in a checkpoint and restored with set_rng_state, repeats python, numpy and torch draws."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached normal in python's generator state
    np.random.randn(1)  # and an odd number of normals leaves one cached in numpy's
    save_checkpoint({"model": {}, "config": {}, "rng": rng_state()}, tmp_path / "rng.pt")
    first = _draws()
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == first


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    """If writing fails half-way, the previous checkpoint is intact and no temporary file is left."""
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {"v": 1}}, path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {"v": 2}}, path)
    monkeypatch.undo()
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["model"]["w"], torch.ones(2)) and ckpt["config"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_checkpoint_rejects_wrong_content(tmp_path):
    """A missing file, a torch file that is not a checkpoint, and another stage's checkpoint are UserErrors."""
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a my_llm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"stage": "stage2_rnn_lstm", "model": {}, "config": {}}, tmp_path / "stage2.pt")
    with pytest.raises(UserError, match="stage2_rnn_lstm"):
        load_checkpoint(tmp_path / "stage2.pt", stage="stage1_mlp")


# ----------------------------------------------------------------------------- bad inputs: one-line errors

@pytest.mark.parametrize("flags,pattern", [
    (["--dataset", "mnist"], r"argument --dataset: invalid choice"),
    (["--lr", "-1"], r"argument --lr: must be a finite number > 0"),
    (["--lr", "nan"], r"argument --lr"),
    (["--batch-size", "0"], r"argument --batch-size: must be > 0"),
    (["--dropout", "1.5"], r"argument --dropout: must be in \[0, 1\)"),
    (["--epochs", "two"], r"argument --epochs: expected a whole number"),
])
def test_train_bad_flags(tmp_path, capsys, flags, pattern):
    """Invalid flags stop train.py with argparse's usage error (exit 2) before anything is written."""
    code, err = cli(train.main, ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"), *flags], capsys)
    assert code == 2 and "usage:" in err
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "out").exists()


def test_train_resume_without_checkpoint(tiny_data_dir, tmp_path, capsys):
    """--resume with no last.pt in --out-dir is a one-line error naming the missing file."""
    code, err = cli(train.main, train_args(tiny_data_dir, tmp_path / "empty", "--resume"), capsys)
    assert_one_line_error(code, err, r"^error: checkpoint not found: .*last\.pt")


@pytest.mark.slow
def test_train_missing_data_offline(tmp_path):
    """train.py with an empty data folder and Hugging Face offline fails fast with one line naming MY_LLM_DATA."""
    (tmp_path / "data").mkdir()
    proc = run_script("train", "--out-dir", tmp_path / "out", "--result", tmp_path / "r.json",
                      data_dir=tmp_path / "data", env={"HF_HOME": str(tmp_path / "hf")})  # an empty cache
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, r"^error: data set 'imdb' not found in .*MY_LLM_DATA")
    assert str(tmp_path / "data" / "imdb") in proc.stderr


@pytest.fixture(scope="module")
def bad_checkpoints(trained_imdb, tmp_path_factory):
    """Three files that are not usable Stage 1 checkpoints: random bytes, half a real one, another stage's."""
    folder = tmp_path_factory.mktemp("bad_ckpt")
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    real = (trained_imdb / "best.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(real[: len(real) // 2])
    torch.save({"stage": "stage2_rnn_lstm", "model": {}, "config": {}, "vocab": {}}, folder / "stage2.pt")
    return folder


@pytest.mark.parametrize("script", [evaluate, predict], ids=["evaluate", "predict"])
@pytest.mark.parametrize("name,pattern", [("random.pt", "corrupt or not a checkpoint"),
                                          ("truncated.pt", "corrupt or not a checkpoint"),
                                          ("stage2.pt", "written by stage2_rnn_lstm, not stage1_mlp")])
def test_bad_checkpoint(bad_checkpoints, shared_tiny_data_dir, capsys, script, name, pattern):
    """evaluate.py and predict.py turn a corrupt, truncated or foreign checkpoint into a one-line error."""
    argv = ["--checkpoint", str(bad_checkpoints / name), "--device", "cpu"]
    argv += ["--data-dir", str(shared_tiny_data_dir)] if script is evaluate else ["a fine film"]
    code, err = cli(script.main, argv, capsys)
    assert_one_line_error(code, err, rf"^error: .*{name}.*{pattern}")


@pytest.mark.slow
def test_bad_checkpoint_as_script(bad_checkpoints, shared_tiny_data_dir):
    """Run as a real script, evaluate.py prints just the one error line for a corrupt checkpoint, exit code 2."""
    proc = run_script("evaluate", "--checkpoint", bad_checkpoints / "truncated.pt", data_dir=shared_tiny_data_dir)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_checkpoint_without_vocab(trained_imdb, tmp_path, capsys):
    """A checkpoint copied away from its vocab.json gives a one-line error about the vocabulary."""
    (tmp_path / "best.pt").write_bytes((trained_imdb / "best.pt").read_bytes())
    code, err = cli(predict.main, ["--checkpoint", str(tmp_path / "best.pt"), "great"], capsys)
    assert_one_line_error(code, err, r"^error: vocabulary not found")


@pytest.mark.parametrize("argv,stdin", [([], ""), ([], "  \n\t\n\n"), (["   ", "\t"], "not read: args are given")],
                         ids=["empty-stdin", "whitespace-stdin", "whitespace-args"])
def test_predict_no_text(trained_imdb, capsys, monkeypatch, argv, stdin):
    """predict.py with no text (empty stdin, or only whitespace) is a one-line error, not an empty output."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, err = cli(predict.main, ["--checkpoint", str(trained_imdb / "best.pt"), *argv], capsys)
    assert_one_line_error(code, err, r"^error: no text to classify")


@pytest.mark.slow
def test_predict_empty_stdin_as_script(trained_imdb, tmp_path):
    """Run as a real script with nothing on stdin, predict.py prints one error line and exits with code 2."""
    proc = run_script("predict", "--checkpoint", trained_imdb / "best.pt", data_dir=tmp_path, stdin="")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: no text to classify") and proc.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- evaluate.py and predict.py

@pytest.mark.slow
def test_evaluate_script(trained_imdb, shared_tiny_data_dir):
    """evaluate.py prints one JSON object with accuracy and macro-F1 on the test split and writes the confusion PNG."""
    proc = run_script("evaluate", "--checkpoint", trained_imdb / "best.pt", data_dir=shared_tiny_data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert (out["dataset"], out["split"], out["n"]) == ("imdb", "test", N_TEST)
    assert 0.85 <= out["accuracy"] <= 1 and 0 < out["macro_f1"] <= 1
    # the same numbers train.py put in its result file for the same checkpoint and split
    result = json.loads((trained_imdb / "result.json").read_text())
    assert out["accuracy"] == result["metrics"]["accuracy"] and out["macro_f1"] == result["metrics"]["macro_f1"]
    assert (trained_imdb / "confusion_test.png").read_bytes()[:8] == PNG_MAGIC


def test_evaluate_other_split(trained_imdb, shared_tiny_data_dir, tmp_path, capsys):
    """--split train scores every training row; an unknown split is a one-line error listing the real ones."""
    evaluate.main(["--checkpoint", str(trained_imdb / "best.pt"), "--data-dir", str(shared_tiny_data_dir),
                   "--split", "train", "--out", str(tmp_path / "cm.png")])
    assert json.loads(capsys.readouterr().out)["n"] == N_TRAIN
    assert (tmp_path / "cm.png").read_bytes()[:8] == PNG_MAGIC
    code, err = cli(evaluate.main, ["--checkpoint", str(trained_imdb / "best.pt"), "--split", "dev"], capsys)
    assert_one_line_error(code, err, r"^error: imdb has no split 'dev'; choose one of: train, test")


@pytest.mark.slow
def test_predict_script_json(trained_imdb, tmp_path):
    """predict.py --json prints one object per text, probabilities summing to 1, and the obvious labels."""
    texts = ["Great, wonderful film. Loved it!", "awful boring movie, I hated it", "qwerty zxcv"]
    proc = run_script("predict", "--checkpoint", trained_imdb / "best.pt", "--json", *texts, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(texts)
    outs = [json.loads(line) for line in lines]
    assert [o["text"] for o in outs] == texts
    for o in outs:
        assert set(o["probs"]) == {"neg", "pos"}
        assert sum(o["probs"].values()) == pytest.approx(1.0, abs=1e-3)
        assert o["label"] == max(o["probs"], key=o["probs"].get)
    assert [o["label"] for o in outs[:2]] == ["pos", "neg"]
    assert outs[0]["known_ngrams"] > 0 and outs[2]["known_ngrams"] == 0


def test_predict_reads_stdin(trained_imdb, capsys, monkeypatch):
    """With no text arguments predict.py classifies each non-empty stdin line, one output line each."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("loved it, wonderful\n\nhated it, boring\n"))
    predict.main(["--checkpoint", str(trained_imdb / "best.pt")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] == "pos" and lines[1].split()[0] == "neg"


# ----------------------------------------------------------------------------- --help

@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True], ids=["path", "module"])
@pytest.mark.parametrize("script", ["train", "evaluate", "predict"])
def test_help(tmp_path, script, module):
    """`python stage1_mlp/X.py --help` and `python -m stage1_mlp.X --help` both print the usage and exit 0."""
    proc = run_script(script, "--help", data_dir=tmp_path, module=module)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:")
    assert ("--resume" if script == "train" else "--checkpoint") in proc.stdout
    assert proc.stderr == ""


# ----------------------------------------------------------------------------- metrics

def test_classification_metrics_by_hand():
    """Accuracy, macro-F1, mean cross-entropy and the confusion matrix equal values worked out by hand."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = [0, 0, 1, 1, 2, 2]
    probs = torch.full((6, 3), 0.15)
    probs[torch.arange(6), preds] = 0.7  # rows sum to 1; argmax is the prediction
    m = classification_metrics(probs, labels)
    assert m["confusion"] == [[2, 1, 0],
                              [0, 1, 1],
                              [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3),   # class 0: precision 2/2, recall 2/3
          0.5,                             # class 1: precision 1/2, recall 1/2
          2 * 0.5 * 1 / 1.5]               # class 2: precision 1/2, recall 1/1
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3, abs=1e-4)
    assert m["loss"] == pytest.approx(-(4 * math.log(0.7) + 2 * math.log(0.15)) / 6, abs=1e-4)
    assert m["n"] == 6


def test_classification_metrics_perfect_and_all_wrong():
    """All correct gives accuracy and macro-F1 of 1; all wrong gives 0 for both."""
    labels = torch.tensor([0, 1, 1, 0])
    right = F.one_hot(labels, 2).float()
    assert classification_metrics(right, labels)["accuracy"] == 1.0
    assert classification_metrics(right, labels)["macro_f1"] == 1.0
    wrong = F.one_hot(1 - labels, 2).float()
    assert classification_metrics(wrong, labels)["accuracy"] == 0.0
    assert classification_metrics(wrong, labels)["macro_f1"] == 0.0


# ----------------------------------------------------------------------------- the real data (CI)

@pytest.mark.slow
@pytest.mark.real_data("imdb", "glue/sst2")
@pytest.mark.parametrize("dataset,min_accuracy", [
    # measured with --quick (seed 1337, lr 0.01): IMDb test 0.872, SST-2 dev 0.730; chance is 0.5
    ("imdb", 0.75),
    ("sst2", 0.65),
])
def test_quick_run_on_real_data(real_data_dir, tmp_path, dataset, min_accuracy):
    """train.py --quick on the real data finishes and scores clearly above chance; the result file names the data
    directory as $MY_LLM_DATA, never this machine's path."""
    proc = run_script("train", "--quick", "--dataset", dataset, "--out-dir", tmp_path / "run", data_dir=real_data_dir,
                      timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["quick"] is True and result["data_dir"] == "$MY_LLM_DATA"
    assert result["metrics"]["accuracy"] > min_accuracy
