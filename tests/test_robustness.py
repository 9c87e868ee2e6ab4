"""Robustness, checked in every stage, on tiny models and tiny data.

For each of the eight training scripts: SIGTERM saves a checkpoint and --resume repeats the losses and weights of an
uninterrupted run; a write killed half-way, a NaN loss, or a step that leaves NaN weights never replaces the last good
last.pt; --lr -1, --batch-size 0, a corrupt or foreign last.pt and an --out-dir that cannot be written are one-line
errors. For every script that reads a checkpoint or data: a corrupt checkpoint, another stage's checkpoint, a missing
one, and missing data are one-line errors. The stage test files go deeper into each stage; this file runs the same
checks over all of them, so a gap in one stage shows up as one failing parameter.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import (REPO_ROOT, assert_bad_checkpoints_rejected, assert_one_line_error, cli, write_tiny_data,
                      write_tiny_lm_data, write_tiny_multi30k)
from scripts.common import UserError, load_checkpoint, save_checkpoint
from stage1_mlp import evaluate as evaluate1, predict as predict1, train as train1
from stage2_rnn_lstm import benchmark as benchmark2, evaluate as evaluate2, generate as generate2, train as train2
from stage3_attention_seq2seq import evaluate as evaluate3, train as train3, translate as translate3
from stage4_transformer import benchmark as benchmark4, evaluate as evaluate4, train as train4, translate as translate4
from stage5_gpt import chat as chat5, evaluate_chat as evaluate_chat5, quantize as quantize5, sft as sft5
from stage5_gpt import (benchmark as benchmark5, evaluate as evaluate5, finetune as finetune5, generate as generate5,
                        train as train5)
from stage6_bert import evaluate as evaluate6, fill_mask as fill_mask6, finetune as finetune6, pretrain as pretrain6
from test_stage6_finetune import make_pretrain_checkpoint, write_tiny_glue
from test_stage6_pretrain import corpus_text


# ----------------------------------------------------------------------------- the eight training scripts, tiny

def _out(out: Path) -> list:
    return ["--out-dir", out, "--result", out / "result.json"]


# name -> (the script's module, its flags for a tiny run given the data paths `d` and an output folder).
# Each run has several steps in its first epoch, and dropout on, so that an exact resume has random state to restore.
TRAINERS = {
    "stage1/train": (train1, lambda d, out: [
        "--dataset", "imdb", "--data-dir", d["data"], *_out(out), "--epochs", "2", "--batch-size", "32",
        "--lr", "0.01"]),
    "stage2/train": (train2, lambda d, out: [
        "--data-dir", d["data"], *_out(out), "--epochs", "1", "--batch-size", "4", "--bptt", "64", "--emb-dim", "16",
        "--hidden-dim", "32", "--n-layers", "2", "--dropout", "0.1", "--lr", "1e-2", "--warmup-steps", "5"]),
    "stage3/train": (train3, lambda d, out: [
        "--data-dir", d["data"], *_out(out), "--epochs", "1", "--batch-size", "16", "--emb-dim", "16",
        "--hidden-dim", "32", "--dropout", "0.1", "--lr", "1e-2", "--warmup-steps", "5", "--beam-size", "1"]),
    "stage4/train": (train4, lambda d, out: [
        "--data-dir", d["data"], *_out(out), "--epochs", "1", "--batch-tokens", "400", "--d-model", "32",
        "--n-heads", "4", "--layers", "1", "--d-ff", "64", "--dropout", "0.1", "--lr", "3e-3", "--warmup-steps", "5",
        "--beam-size", "1"]),
    "stage5/train": (train5, lambda d, out: [
        "--data-dir", d["data"], *_out(out), "--epochs", "1", "--batch-size", "8", "--block-size", "32",
        "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--dropout", "0.1", "--lr", "3e-3",
        "--warmup-steps", "5", "--eval-interval", "4"]),
    "stage5/finetune": (finetune5, lambda d, out: [
        "--checkpoint", d["gpt"], "--data-dir", d["data"], *_out(out), "--epochs", "1", "--batch-size", "16",
        "--lr", "3e-3", "--warmup-steps", "5", "--dropout", "0.1"]),
    "stage6/pretrain": (pretrain6, lambda d, out: [
        "--corpus", d["corpus"], "--data-dir", d["root"] / "no_data", *_out(out), "--vocab-size", "150",
        "--max-len", "32", "--hidden", "32", "--layers", "1", "--heads", "2", "--batch-size", "8", "--lr", "3e-3",
        "--warmup-steps", "5", "--epochs", "1", "--eval-interval", "4", "--dropout", "0.1"]),
    "stage6/finetune": (finetune6, lambda d, out: [
        "--task", "sst2", "--data-dir", d["glue"], "--checkpoint", d["bert"], *_out(out), "--epochs", "1",
        "--batch-size", "16", "--lr", "1e-3", "--device", "cpu"]),
}


def train_argv(name: str, d: dict, out: Path, *extra) -> list[str]:
    return [str(a) for a in [*TRAINERS[name][1](d, out), *extra]]


def tiny_stage_data(root: Path) -> dict:
    """The tiny data of every stage, a pre-trained GPT (one step) for Stage 5 fine-tuning, a random pre-trained BERT
    for Stage 6 fine-tuning, under `root`: what TRAINERS' flags read (tests/test_tracking.py uses them too)."""
    data = write_tiny_data(root / "data")  # imdb, glue/sst2, ag_news
    write_tiny_lm_data(data)
    write_tiny_multi30k(data)
    corpus = root / "animals.txt"
    corpus.write_text(corpus_text(), encoding="utf-8")
    gpt = root / "gpt"
    train5.main([str(a) for a in ["--data-dir", data, *_out(gpt), "--max-steps", "1", "--eval-interval", "1",
                                  "--batch-size", "8", "--block-size", "32", "--n-layer", "1", "--n-head", "2",
                                  "--n-embd", "32"]])
    return {"root": root, "data": data, "corpus": corpus, "gpt": gpt / "best.pt",
            "glue": write_tiny_glue(root / "glue_data", tasks=["sst2"]),
            "bert": make_pretrain_checkpoint(root / "bert")}


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> dict:
    """tiny_stage_data, written once for the module; never modify them."""
    return tiny_stage_data(tmp_path_factory.mktemp("robust"))


def on_training_loss(monkeypatch, action) -> None:
    """Send every loss computed with gradients on (validation runs under no_grad) through action(call number, loss).
    Every stage computes its losses with F.cross_entropy, looked up at call time."""
    real, calls = F.cross_entropy, []

    def patched(*args, **kwargs):
        loss = real(*args, **kwargs)
        if not torch.is_grad_enabled():
            return loss
        calls.append(1)
        return action(len(calls), loss)
    monkeypatch.setattr(F, "cross_entropy", patched)


def sigterm_at(n: int):
    def action(call: int, loss):
        if call == n:
            # with Python's default handler this would end the whole pytest session
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "the script does not catch SIGTERM"
            signal.raise_signal(signal.SIGTERM)
        return loss
    return action


@pytest.fixture(scope="module")
def finished(d, tmp_path_factory):
    """name -> the folder of an uninterrupted tiny run of that training script (run on first use, then shared)."""
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            out = tmp_path_factory.mktemp("finished")
            TRAINERS[name][0].main(train_argv(name, d, out))
            runs[name] = out
        return runs[name]
    return get


@pytest.fixture(scope="module")
def stopped(d, tmp_path_factory):
    """name -> the folder of the same run, stopped by SIGTERM at its second training loss (exit 130, last.pt saved).
    Tests copy it before they resume it."""
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            out = tmp_path_factory.mktemp("stopped")
            with pytest.MonkeyPatch.context() as mp:
                on_training_loss(mp, sigterm_at(2))
                with pytest.raises(SystemExit) as e:
                    TRAINERS[name][0].main(train_argv(name, d, out))
            assert e.value.code == 130
            log = next(out.glob("*.log")).read_text()
            assert "stopped by SIGTERM" in log and "--resume" in log
            runs[name] = out
        return runs[name]
    return get


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- Ctrl-C / SIGTERM and --resume

@pytest.mark.parametrize("name", TRAINERS)
def test_sigterm_then_resume_equals_an_uninterrupted_run(name, d, finished, stopped, tmp_path):
    stop = load_checkpoint(stopped(name) / "last.pt")["state"]
    full = load_checkpoint(finished(name) / "last.pt")
    assert 0 < stop["step"] < full["state"]["step"]  # stopped mid-run, between two steps
    out = copy_run(stopped(name), tmp_path / "run")
    TRAINERS[name][0].main(train_argv(name, d, out, "--resume"))
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["state"]["history"] == full["state"]["history"]
    assert weights_equal(resumed["model"], full["model"])


# ----------------------------------------------------------------------------- last.pt is never corrupt or diverged

class Killed(BaseException):
    """Stands for SIGKILL: a BaseException, which no `except Exception` in a script catches, so the run ends inside
    the write (test_sigkill_mid_write_... below sends a real SIGKILL once)."""


@pytest.mark.parametrize("name", TRAINERS)
def test_a_write_killed_half_way_leaves_last_pt_intact(name, d, stopped, tmp_path, monkeypatch):
    out = copy_run(stopped(name), tmp_path / "run")
    before = (out / "last.pt").read_bytes()
    real_save = torch.save

    def killed_while_saving_last(obj, f, *args, **kwargs):
        if Path(getattr(f, "name", "")).name.startswith("last.pt"):
            f.write(b"the first bytes of a checkpoint")
            raise Killed
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", killed_while_saving_last)
    step = load_checkpoint(out / "last.pt")["state"]["step"]
    with pytest.raises(Killed):
        TRAINERS[name][0].main(train_argv(name, d, out, "--resume", "--max-steps", step + 1))
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.parametrize("name", TRAINERS)
def test_a_nan_loss_stops_with_advice_and_keeps_last_pt(name, d, stopped, tmp_path, monkeypatch, capsys):
    out = copy_run(stopped(name), tmp_path / "run")
    before = (out / "last.pt").read_bytes()
    on_training_loss(monkeypatch, lambda call, loss: loss * float("nan"))
    code, err = cli(TRAINERS[name][0].main, train_argv(name, d, out, "--resume"), capsys)
    assert_one_line_error(code, err, r"the loss became nan at step \d+; try a lower --lr")
    assert (out / "last.pt").read_bytes() == before


class NaNGradient(torch.autograd.Function):
    """The loss unchanged, its gradient NaN: a step whose loss looks fine but leaves NaN weights (an overflow in the
    backward pass)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize("name", TRAINERS)
def test_nan_weights_are_never_saved_over_last_pt(name, d, stopped, tmp_path, monkeypatch, capsys):
    """The step after the stop leaves NaN weights and --max-steps then saves: save_checkpoint refuses them."""
    out = copy_run(stopped(name), tmp_path / "run")
    before = {f.name: f.read_bytes() for f in out.glob("*.pt")}
    on_training_loss(monkeypatch, lambda call, loss: NaNGradient.apply(loss))
    step = load_checkpoint(out / "last.pt")["state"]["step"]
    code, err = cli(TRAINERS[name][0].main, train_argv(name, d, out, "--resume", "--max-steps", step + 1), capsys)
    assert_one_line_error(code, err, r"not saving .*: the model's weights hold NaN or inf .*try a lower --lr")
    assert {f.name: f.read_bytes() for f in out.glob("*.pt")} == before


def test_save_checkpoint_refuses_nan_weights(tmp_path):
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, tmp_path / "last.pt")
    with pytest.raises(UserError, match=r"not saving .*last\.pt: .*NaN or inf"):
        save_checkpoint({"model": {"w": torch.tensor([1.0, float("inf")])}, "config": {}}, tmp_path / "last.pt")
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    save_checkpoint({"model": {"ids": torch.arange(3), "w": torch.zeros(1)}, "config": {}}, tmp_path / "ok.pt")


@pytest.mark.slow
def test_sigkill_mid_write_leaves_last_pt_intact_and_resumable(d, tmp_path):
    """A real SIGKILL while last.pt is being written (Stage 1; every stage writes through the same save_checkpoint):
    the old last.pt is untouched, a stray temporary file is all that is left, and --resume carries on."""
    out = tmp_path / "run"
    train1.main(train_argv("stage1/train", d, out, "--max-steps", "3"))
    before = (out / "last.pt").read_bytes()
    killer = ("import os, runpy, signal, sys, torch\n"
              "def save(obj, f, *a, **k):\n"
              "    f.write(b'the first bytes of a checkpoint'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
              "torch.save = save\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", killer, "stage1_mlp/train.py",
                           *train_argv("stage1/train", d, out, "--resume", "--max-steps", "5")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "last.pt").read_bytes() == before
    assert [p.name for p in out.glob("last.pt.tmp*")]  # killed mid-write: only the temporary file is half-written
    train1.main(train_argv("stage1/train", d, out, "--resume", "--max-steps", "5"))
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 5


# ----------------------------------------------------------------------------- bad input: one line, non-zero exit

# every script with --lr or --batch-size, and the arguments it needs besides (nothing is read before the flags fail)
NUMBER_FLAGS = [(train1, []), (train2, []), (train3, []), (train4, []), (train5, []), (finetune5, []),
                (pretrain6, []), (finetune6, ["--task", "sst2"])]
BATCH_SIZE_ONLY = [(evaluate1, []), (evaluate2, []), (evaluate3, []), (evaluate4, []), (evaluate5, []),
                   (evaluate6, []), (benchmark2, []), (benchmark4, []), (benchmark5, [])]


def _id(module) -> str:
    """stage1_mlp.train -> stage1/train"""
    return module.__name__.split("_")[0] + "/" + module.__name__.split(".")[-1]


@pytest.mark.parametrize("flags,pattern", [(["--lr", "-1"], r"argument --lr: must be a finite number > 0"),
                                           (["--lr", "inf"], r"argument --lr: must be a finite number > 0"),
                                           (["--batch-size", "0"], r"argument --batch-size: must be > 0")],
                         ids=["lr-1", "lr-inf", "batch-size0"])
@pytest.mark.parametrize("module,needed", NUMBER_FLAGS, ids=[_id(m) for m, _ in NUMBER_FLAGS])
def test_bad_numbers_are_one_line_errors(module, needed, flags, pattern, tmp_path, capsys):
    code, err = cli(module.main, [*needed, "--out-dir", str(tmp_path / "out"), *flags], capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module,needed", BATCH_SIZE_ONLY, ids=[_id(m) for m, _ in BATCH_SIZE_ONLY])
def test_batch_size_zero_is_a_one_line_error(module, needed, capsys):
    code, err = cli(module.main, [*needed, "--batch-size", "0"], capsys)
    assert_one_line_error(code, err, r"argument --batch-size: must be > 0")


@pytest.mark.parametrize("name", TRAINERS)
def test_resume_from_a_corrupt_or_foreign_last_pt(name, d, tmp_path, capsys):
    corrupt, foreign = tmp_path / "corrupt", tmp_path / "foreign"
    corrupt.mkdir()
    (corrupt / "last.pt").write_bytes(b"\x00not a checkpoint" * 40)
    save_checkpoint({"stage": "some_other_stage", "model": {}, "config": {}}, foreign / "last.pt")
    for out, pattern in [(corrupt, r"cannot read checkpoint .*last\.pt: it is corrupt"),
                         (foreign, r"last\.pt was written by some_other_stage, not stage\d_")]:
        code, err = cli(TRAINERS[name][0].main, train_argv(name, d, out, "--resume"), capsys)
        assert_one_line_error(code, err, pattern)


@pytest.mark.parametrize("name", TRAINERS)
def test_an_out_dir_that_cannot_be_written(name, d, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    code, err = cli(TRAINERS[name][0].main, train_argv(name, d, tmp_path / "a_file" / "run"), capsys)
    assert_one_line_error(code, err, r"cannot write the log .*a_file/run/\w+\.log: .*\(check --out-dir\)")


# every script that reads a checkpoint, with the arguments it needs besides
CHECKPOINT_SCRIPTS = [(evaluate1, []), (predict1, ["a fine film"]), (evaluate2, []), (generate2, []), (evaluate3, []),
                      (translate3, ["A dog."]), (evaluate4, []), (translate4, ["A dog."]), (evaluate5, []),
                      (generate5, []), (finetune5, ["--out-dir", "{tmp}/ft"]), (evaluate6, []),
                      (fill_mask6, ["a [MASK] ."]), (finetune6, ["--task", "sst2", "--out-dir", "{tmp}/ft"]),
                      (sft5, ["--out-dir", "{tmp}/sft"]), (evaluate_chat5, []), (chat5, ["--message", "hi"]),
                      (quantize5, [])]


@pytest.mark.parametrize("module,needed", CHECKPOINT_SCRIPTS, ids=[_id(m) for m, _ in CHECKPOINT_SCRIPTS])
def test_corrupt_foreign_and_missing_checkpoints(module, needed, tmp_path, capsys):
    stage = module.__name__.split(".")[0]
    good = tmp_path / "good.pt"  # load_checkpoint is the first thing to read it: any checkpoint will do to cut short
    save_checkpoint({"stage": stage, "model": {"w": torch.zeros(500)}, "config": {}}, good)
    assert_bad_checkpoints_rejected(module.main, good, tmp_path, capsys, stage,
                                    [a.format(tmp=tmp_path) for a in needed])


@pytest.fixture
def offline(monkeypatch):
    """No downloads: every stage fetches with urllib.request.urlopen or datasets.load_dataset."""
    import urllib.request

    import datasets

    def no_network(*args, **kwargs):
        raise OSError("no network in this test")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(datasets, "load_dataset", no_network)


# evaluate.py of each stage, and the training run whose best.pt it scores
EVALUATORS = [(evaluate1, "stage1/train"), (evaluate2, "stage2/train"), (evaluate3, "stage3/train"),
              (evaluate4, "stage4/train"), (evaluate5, "stage5/train"), (evaluate6, "stage6/finetune")]


@pytest.mark.parametrize("module,name", EVALUATORS, ids=[_id(m) for m, _ in EVALUATORS])
def test_evaluate_with_missing_data(module, name, finished, offline, tmp_path, capsys):
    code, err = cli(module.main, ["--checkpoint", str(finished(name) / "best.pt"), "--data-dir",
                                  str(tmp_path / "empty")], capsys)
    assert_one_line_error(code, err, r"not found in .*empty")


# ----------------------------------------------------------------------------- prompts
# Stages 1, 2, 3 and 6 test their empty and over-long prompts in their own files; these are the other two.

def test_stage4_translate_empty_and_over_long(finished, capsys):
    ckpt = str(finished("stage4/train") / "best.pt")
    for sentence, pattern in [("   ", r"empty sentence"), ("x" * 2000, r"2000 characters; the limit is 1000"),
                              ("a " * 300, r"300 tokens; the limit is 200")]:
        assert_one_line_error(*cli(translate4.main, [sentence, "--checkpoint", ckpt], capsys), pattern)


def test_stage5_generate_empty_and_over_long_prompts(finished, capsys):
    """An empty prompt is allowed (generation starts from a new line); an over-long one is cut to the model's context,
    with a note. Neither is an error."""
    model, tok, _ = evaluate5.load_model(finished("stage5/train") / "best.pt", torch.device("cpu"))
    args = generate5.parse_args(["--max-new-tokens", "5"])
    empty, long = io.StringIO(), io.StringIO()
    generate5.generate(model, tok, "", args, torch.device("cpu"), out=empty)
    assert len(empty.getvalue()) == 5 + 1  # five characters and the closing new line
    generate5.generate(model, tok, "ROMEO " * 40, args, torch.device("cpu"), out=long)
    assert long.getvalue().startswith("ROMEO ROMEO") and "the model reads its last 32" in capsys.readouterr().err


def test_an_unwritable_result_file_is_a_user_error_that_keeps_the_metrics(tmp_path):
    """The last thing a run does is write its result; failing there must not end in a traceback, and must still say
    what the run measured (its checkpoints are already saved)."""
    from scripts.common import write_result
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write the result file .*\"accuracy\": 0\.9"):
        write_result(blocker / "result.json", stage="stage1_mlp", dataset="imdb", split="test",
                     metrics={"accuracy": 0.9}, headline="accuracy", train_seconds=1.0, device="cpu", params=1,
                     command="python stage1_mlp/train.py")
