"""Stage 2 scripts end to end on tiny data: training, exact resume (the carried hidden state included), Ctrl-C,
the reference-run record in the result file, --quick defaults, evaluate.py, generate.py (repeatable with a seed,
clear errors for bad prompts), benchmark.py, bad checkpoints, --help, and a --quick run on the real data when
MY_LLM_DATA holds it.

Every run writes into tmp_path (--out-dir and --result), so nothing lands in runs/ or the committed results.
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import assert_bad_checkpoints_rejected, assert_one_line_error, cli, run_script, signal_mid_training
from scripts.common import load_checkpoint, reference_command, resolved_config, save_checkpoint
from stage2_rnn_lstm import benchmark, evaluate, generate, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_args(data_dir: Path, out_dir: Path, *extra: str, dataset: str = "tiny_shakespeare") -> list[str]:
    """A small, fast run with every output inside out_dir (later flags override earlier ones)."""
    return ["--dataset", dataset, "--data-dir", str(data_dir), "--out-dir", str(out_dir),
            "--result", str(out_dir / "result.json"), "--epochs", "3", "--batch-size", "4", "--bptt", "32",
            "--emb-dim", "16", "--hidden-dim", "32", "--n-layers", "2", "--lr", "1e-2", "--warmup-steps", "5", *extra]


@pytest.fixture(scope="module")
def trained_char(tmp_path_factory) -> Path:
    """A char LSTM on the tiny play (train.py's main, in this process; the SIGTERM test runs it as a script)."""
    from conftest import write_tiny_lm_data
    data_dir = write_tiny_lm_data(tmp_path_factory.mktemp("lm") / "data")
    out = tmp_path_factory.mktemp("char_run")
    train.main(train_args(data_dir, out))
    out.joinpath("data_dir").write_text(str(data_dir))
    return out


def test_run_writes_all_outputs_and_learns(trained_char):
    for name in ["best.pt", "last.pt", "vocab.json", "train.log", "result.json"]:
        assert (trained_char / name).is_file(), name
    assert (trained_char / "result.png").read_bytes()[:8] == PNG_MAGIC
    r = json.loads((trained_char / "result.json").read_text())
    assert {"stage", "dataset", "split", "metrics", "train_seconds", "device", "threads", "params", "command",
            "git_commit", "date"} <= r.keys()
    assert r["stage"] == "stage2_rnn_lstm" and r["headline_metric"] == "val_loss" and r["split"] == "val"
    m = r["metrics"]
    assert math.isclose(m["val_ppl"], math.exp(m["val_loss"]), rel_tol=1e-3)
    assert math.isclose(m["val_bpc"], m["val_loss"] / math.log(2), rel_tol=1e-3)
    assert m["val_loss"] < 0.75 * math.log(r["vocab_size"])  # well below a uniform guess over the characters
    assert "run" not in r and r["hparams"]["max_steps"] is None   # an experiment, not a declared reference run
    assert load_checkpoint(trained_char / "best.pt", stage="stage2_rnn_lstm")["kind"] == "language_model"


def test_a_reference_run_records_its_name_and_declared_command(tiny_lm_data_dir, tmp_path, monkeypatch):
    """When the settings resolve to a declared run, the result file names it and records the declared command (the
    one to paste), whatever where-flags, flag order and spelling this command line used."""
    argv = train_args(tiny_lm_data_dir, tmp_path, "--epochs", "1")
    declared = [train.SCRIPT, *argv[:2], *argv[8:]]         # without --data-dir, --out-dir, --result
    monkeypatch.setattr(train, "REFERENCE_RUNS", {"tiny_char": declared})
    train.main(argv + ["--lr", "0.01"])                     # 1e-2 spelt another way is the same run
    r = json.loads((tmp_path / "result.json").read_text())
    assert list(r)[:2] == ["stage", "run"] and r["run"] == "tiny_char"
    assert r["command"] == reference_command(declared)
    assert r["hparams"] == resolved_config(train.parse_args(declared[1:]))


@pytest.mark.parametrize("model_type,impl", [("rnn", "scratch"), ("gru", "torch")])
def test_other_cells_train(tiny_lm_data_dir, tmp_path, model_type, impl):
    train.main(train_args(tiny_lm_data_dir, tmp_path, "--model-type", model_type, "--impl", impl, "--epochs", "1"))
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["config"]["model_type"] == model_type and r["config"]["impl"] == impl


def test_word_level_adaptive_softmax(tiny_lm_data_dir, tmp_path):
    """WikiText-style words, an adaptive softmax, and the test split reported with perplexity as the headline."""
    train.main(train_args(tiny_lm_data_dir, tmp_path, "--adaptive-cutoffs", "5,10", "--bptt", "8",
                          dataset="wikitext2"))
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["headline_metric"] == "test_ppl" and r["split"] == "test"
    assert r["hparams"]["vocab_type"] == "word" and "test_bpc" not in r["metrics"]
    assert r["metrics"]["test_ppl"] < r["vocab_size"] / 2


def test_tied_adaptive_softmax_with_sgd(tiny_lm_data_dir, tmp_path):
    """The classic word-level recipe: plain SGD with a large learning rate, here with a tied adaptive softmax."""
    train.main(train_args(tiny_lm_data_dir, tmp_path, "--adaptive-cutoffs", "5,10", "--bptt", "8", "--tie-weights",
                          "--emb-dim", "32", "--hidden-dim", "32", "--optimizer", "sgd", "--lr", "5", "--clip", "0.25",
                          dataset="wikitext2"))
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["hparams"]["optimizer"] == "sgd" and r["config"]["tie_weights"] is True
    assert r["metrics"]["test_ppl"] < r["vocab_size"] / 2


def test_tied_weights_run(tiny_lm_data_dir, tmp_path):
    train.main(train_args(tiny_lm_data_dir, tmp_path, "--tie-weights", "--emb-dim", "32", "--epochs", "1"))
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["config"]["tie_weights"] is True


def test_resume_is_exact(tiny_lm_data_dir, tmp_path):
    """--max-steps stops (mid-epoch and at an epoch's end) then --resume give one run's losses and weights,
    because the checkpoint holds the hidden state carried between windows."""
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(train_args(tiny_lm_data_dir, a))
    per_epoch = len(load_checkpoint(a / "last.pt")["state"]["history"]["train_loss"]) // 3
    train.main(train_args(tiny_lm_data_dir, b, "--max-steps", "3"))
    assert load_checkpoint(b / "last.pt")["hidden"] is not None  # a mid-epoch state to carry on from
    train.main(train_args(tiny_lm_data_dir, b, "--resume", "--max-steps", str(per_epoch)))
    train.main(train_args(tiny_lm_data_dir, b, "--resume"))
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name


def test_resume_from_a_best_pt_is_a_one_line_error(trained_char, tmp_path, capsys):
    """best.pt has no optimizer state, so it cannot continue a run; a classifier is another kind of checkpoint."""
    data_dir = trained_char.joinpath("data_dir").read_text()
    (tmp_path / "last.pt").write_bytes((trained_char / "best.pt").read_bytes())
    code, err = cli(train.main, train_args(Path(data_dir), tmp_path, "--resume"), capsys)
    assert_one_line_error(code, err, r"is not the last.pt of a train.py run")
    save_checkpoint({"stage": "stage2_rnn_lstm", "kind": "classifier", "model": {}, "config": {}}, tmp_path / "last.pt")
    code, err = cli(train.main, train_args(Path(data_dir), tmp_path, "--resume"), capsys)
    assert_one_line_error(code, err, r"holds a classifier, not a language model")
    code, err = cli(evaluate.main, ["--checkpoint", str(tmp_path / "last.pt")], capsys)
    assert_one_line_error(code, err, r"holds a classifier, not a language model")


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues(tiny_lm_data_dir, tmp_path):
    """SIGTERM during training: exit 130, a loadable last.pt, and --resume carries on from its step."""
    out = tmp_path / "run"
    args = train_args(tiny_lm_data_dir, out, "--epochs", "100000")
    proc = signal_mid_training("stage2_rnn_lstm/train.py", args, out, "epoch 1:", signal.SIGTERM,
                               tmp_path / "stderr")
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130 and "Traceback" not in err and "stopped by SIGTERM" in err, err[-3000:]
    step = load_checkpoint(out / "last.pt", stage="stage2_rnn_lstm")["state"]["step"]
    train.main(train_args(tiny_lm_data_dir, out, "--resume", "--max-steps", str(step + 2)))
    assert load_checkpoint(out / "last.pt")["state"]["step"] == step + 2


# ----------------------------------------------------------------------------- evaluate.py and generate.py

def test_evaluate_reports_loss_ppl_bpc(trained_char, capsys):
    data_dir = trained_char.joinpath("data_dir").read_text()
    evaluate.main(["--checkpoint", str(trained_char / "best.pt"), "--data-dir", data_dir, "--json"])
    out = json.loads(capsys.readouterr().out)
    r = json.loads((trained_char / "result.json").read_text())
    assert math.isclose(out["val"]["loss"], r["metrics"]["val_loss"], abs_tol=1e-3)
    assert set(out["val"]) == {"loss", "ppl", "bpc", "tokens"}


def test_evaluate_unknown_split(trained_char, capsys):
    data_dir = trained_char.joinpath("data_dir").read_text()
    code, err = cli(evaluate.main, ["--checkpoint", str(trained_char / "best.pt"), "--data-dir", data_dir,
                                    "--split", "test"], capsys)
    assert_one_line_error(code, err, r"tiny_shakespeare has no 'test' evaluation split")


def _generate(ckpt: Path, *args: str) -> subprocess.CompletedProcess:
    return run_script("generate", "--checkpoint", ckpt, *args, data_dir=ckpt.parent, stage="stage2_rnn_lstm")


@pytest.mark.slow
def test_generate_is_repeatable_with_a_seed(trained_char):
    ckpt = trained_char / "best.pt"
    a = _generate(ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "60", "--seed", "7")
    b = _generate(ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "60", "--seed", "7")
    c = _generate(ckpt, "--prompt", "ROMEO:", "--max-new-tokens", "60", "--seed", "8")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout != c.stdout
    assert a.stdout.startswith("ROMEO:") and len(a.stdout.rstrip("\n")) >= len("ROMEO:") + 50


@pytest.mark.slow
def test_generate_top_k_1_is_greedy(trained_char):
    """top-k 1 leaves one choice: different seeds give the same text."""
    ckpt = trained_char / "best.pt"
    a = _generate(ckpt, "--top-k", "1", "--max-new-tokens", "40", "--seed", "1")
    b = _generate(ckpt, "--top-k", "1", "--max-new-tokens", "40", "--seed", "2")
    assert a.returncode == 0 and a.stdout == b.stdout


@pytest.mark.parametrize("prompt,pattern", [
    ("ROMEO: ~{}", r"the prompt has 3 char\(s\) this model never saw: '\{', '\}', '~'"),
    ("", r"the prompt is empty"),
])
def test_generate_bad_prompt(trained_char, capsys, prompt, pattern):
    code, err = cli(generate.main, ["--checkpoint", str(trained_char / "best.pt"), "--prompt", prompt], capsys)
    assert_one_line_error(code, err, pattern)


@pytest.mark.slow
def test_generate_interactive_survives_a_bad_prompt(trained_char):
    proc = run_script("generate", "--checkpoint", trained_char / "best.pt", "--interactive", "--max-new-tokens", "5",
                      "--seed", "0", data_dir=trained_char, stage="stage2_rnn_lstm", stdin="ROMEO\n~~~\nJULIET\n\n")
    assert proc.returncode == 0, proc.stderr
    assert "never saw" in proc.stderr and "Traceback" not in proc.stderr
    assert "ROMEO" in proc.stdout and "JULIET" in proc.stdout


def test_quick_uses_its_own_lr_and_warmup_unless_given():
    """--quick has a few dozen steps: it raises the lr and shortens the warmup, unless the flags are given."""
    assert (train.parse_args([]).lr, train.parse_args([]).warmup_steps) == (2e-3, 100)
    quick = train.parse_args(["--quick"])
    assert (quick.lr, quick.warmup_steps) == (train.QUICK_LR, train.QUICK_WARMUP)
    given = train.parse_args(["--quick", "--lr=3e-3", "--warmup-steps", "7"])
    assert (given.lr, given.warmup_steps) == (3e-3, 7)
    abbreviated = train.parse_args(["--quick", "--warm", "7"])   # argparse's prefix of --warmup-steps counts too
    assert (abbreviated.lr, abbreviated.warmup_steps) == (train.QUICK_LR, 7)


def test_word_prompt_without_words_is_an_error(tiny_lm_data_dir, tmp_path, capsys):
    """A prompt of only spaces has no words to continue from: a one-line error, not a crash in the embedding."""
    train.main(train_args(tiny_lm_data_dir, tmp_path, "--epochs", "1", "--bptt", "8", dataset="wikitext2"))
    code, err = cli(generate.main, ["--checkpoint", str(tmp_path / "best.pt"), "--prompt", "   "], capsys)
    assert_one_line_error(code, err, r"the prompt '   ' holds no words")


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("script", [evaluate, generate])
def test_bad_checkpoints(trained_char, tmp_path, capsys, script):
    assert_bad_checkpoints_rejected(script.main, trained_char / "best.pt", tmp_path, capsys, "stage2_rnn_lstm",
                                    [])


@pytest.mark.parametrize("flags,pattern", [
    (["--tie-weights", "--emb-dim", "16", "--hidden-dim", "32"], r"--tie-weights needs --emb-dim == --hidden-dim"),
    (["--adaptive-cutoffs", "10,5"], r"argument --adaptive-cutoffs: expected increasing whole numbers"),
    (["--model-type", "transformer"], r"argument --model-type/--model_type: invalid choice"),
    (["--dataset", "ptb"], r"argument --dataset: invalid choice"),
])
def test_train_bad_flags(capsys, flags, pattern):
    code, err = cli(train.main, flags, capsys)
    assert_one_line_error(code, err, pattern)


def test_train_missing_data_offline(tmp_path, capsys, monkeypatch):
    from stage2_rnn_lstm import data
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    code, err = cli(train.main, ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, r"data set 'tiny_shakespeare' not found .*offline")


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True])
@pytest.mark.parametrize("script", ["train", "evaluate", "generate", "benchmark"])
def test_help(tmp_path, script, module):
    proc = run_script(script, "--help", data_dir=tmp_path, module=module, stage="stage2_rnn_lstm")
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


def test_benchmark_runs(tmp_path, monkeypatch):
    """A tiny benchmark: its figures, its settings without the where-flags, and the command that measured them; a
    run whose settings are a declared one records that run's name and command."""
    argv = ["--hidden-dim", "16", "--emb-dim", "8", "--steps", "1", "--warmup", "0", "--bptt", "8", "--batch-size",
            "2", "--device", "cpu", "--json", str(tmp_path / "b.json")]
    benchmark.main(argv)
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["tokens_per_second"]["scratch"] > 0 and r["ratio_torch_over_scratch"] > 0
    assert "run" not in r and r["command"].startswith("python stage2_rnn_lstm/benchmark.py --hidden-dim 16")
    assert r["config"] == resolved_config(benchmark.parse_args(argv)) and "json" not in r["config"]
    monkeypatch.setattr(benchmark, "REFERENCE_RUNS", {"tiny_bench": [benchmark.SCRIPT, *argv[:-4]]})
    benchmark.main(argv)
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["run"] == "tiny_bench" and r["command"] == reference_command([benchmark.SCRIPT, *argv[:-4]])
    assert benchmark.parse_args(["--model-type", "gru"]).json == "runs/stage2_rnn_lstm/benchmark_gru/result.json"


# ----------------------------------------------------------------------------- the real data (CI)

@pytest.mark.slow
@pytest.mark.parametrize("dataset,extra", [
    pytest.param("tiny_shakespeare", [], marks=pytest.mark.real_data("tiny_shakespeare")),
    pytest.param("wikitext2", ["--adaptive-cutoffs", "2000,10000", "--bptt", "35"],
                 marks=pytest.mark.real_data("wikitext-2")),
])
def test_quick_run_on_real_data(tmp_path, dataset, extra, real_data_dir):
    """--quick on the real files: it reads them, trains on a slice, and ends below a uniform guess."""
    proc = run_script("train", "--quick", "--dataset", dataset, "--out-dir", tmp_path / "run", "--result",
                      tmp_path / "r.json", "--hidden-dim", "64", "--emb-dim", "32", *extra,
                      data_dir=real_data_dir, stage="stage2_rnn_lstm", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["quick"] is True
    assert r["metrics"]["val_loss"] < math.log(r["vocab_size"])
