"""Stage 4 scripts end to end on tiny data: training learns the tiny dictionary language, gradient accumulation,
exact resume, SIGTERM, --quick defaults, evaluate.py (BLEU, signature, per-layer per-head maps), translate.py, bad input
and bad checkpoints, --help, the benchmark, and a --quick run on the real Multi30k when MY_LLM_DATA points at it."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from conftest import (assert_bad_checkpoints_rejected, assert_one_line_error, cli, run_script, signal_mid_training,
                      write_tiny_multi30k)
from scripts.common import load_checkpoint, resolved_config
from stage4_transformer import benchmark, evaluate, train, translate
from stage4_transformer.data import token_batches

STAGE = "stage4_transformer"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_args(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir),
            "--epochs", "3", "--batch-tokens", "400", "--d-model", "32", "--n-heads", "4", "--layers", "2",
            "--d-ff", "64", "--dropout", "0.0", "--lr", "3e-3", "--warmup-steps", "20", "--beam-size", "3", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    data_dir = write_tiny_multi30k(tmp_path_factory.mktemp("mt") / "data")
    out = tmp_path_factory.mktemp("run")
    train.main(train_args(data_dir, out, "--epochs", "15"))
    out.joinpath("data_dir").write_text(str(data_dir))
    return out


def test_run_writes_all_outputs_and_learns(trained):
    for name in ["best.pt", "last.pt", "vocab.json", "train.log", "result.json", "test2016.hyp.txt", "test2017.hyp.txt"]:
        assert (trained / name).is_file(), name
    assert (trained / "result.png").read_bytes()[:8] == PNG_MAGIC
    r = json.loads((trained / "result.json").read_text())
    assert r["stage"] == STAGE and r["headline_metric"] == "bleu" and r["split"] == "test2016"
    assert "run" not in r and r["command"].startswith("python stage4_transformer/train.py --data-dir ")
    assert r["hparams"] == resolved_config(train.parse_args(train_args(Path("d"), trained, "--epochs", "15")))
    assert load_checkpoint(trained / "best.pt")["kind"] == "translator"
    assert {"bleu", "bleu_lc", "test2017_bleu", "test2017_bleu_lc", "val_bleu"} <= r["metrics"].keys()
    assert "tok:13a" in r["sacrebleu_signature"]["cased"]
    assert r["config"]["share_embeddings"] is True and r["config"]["norm"] == "pre"
    assert r["metrics"]["bleu"] > 60  # the tiny dictionary language is learnt


def test_quick_defaults_yield_to_typed_flags_even_abbreviated():
    assert (train.parse_args([]).lr, train.parse_args([]).warmup_steps) == (1.5e-3, 300)
    quick = train.parse_args(["--quick"])
    assert (quick.lr, quick.warmup_steps) == (train.QUICK_LR, train.QUICK_WARMUP)
    typed = train.parse_args(["--quick", "--warmup", "7", "--lr=0.5"])  # --warmup: argparse's prefix of --warmup-steps
    assert (typed.lr, typed.warmup_steps) == (0.5, 7)


def test_default_out_dir_and_result_follow_the_run_name():
    assert train.parse_args([]).out_dir == "runs/stage4_transformer/multi30k_en_fr"
    args = train.parse_args(["--src", "de", "--tgt", "en", "--norm", "post"])
    assert args.out_dir == "runs/stage4_transformer/multi30k_de_en_postnorm" and args.result is None
    assert train.parse_args(["--out-dir", "elsewhere"]).out_dir == "elsewhere"


def test_token_batches_respect_the_budget():
    lengths = [((i * 7) % 23 + 2, (i * 5) % 19 + 2) for i in range(500)]
    batches = token_batches(lengths, 120, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * (max(lengths[i][0] for i in b) + max(lengths[i][1] for i in b)) <= 120 for b in batches)
    assert batches == token_batches(lengths, 120, seed=1)
    assert all(len(b) <= 5 for b in token_batches(lengths, 10 ** 9, seed=1, max_sentences=5))


def test_post_norm_sentence_batches_accumulation(tiny_mt_data_dir, tmp_path):
    train.main(train_args(tiny_mt_data_dir, tmp_path, "--norm", "post", "--pos", "learned", "--batch-size", "16",
                          "--accum-steps", "2", "--schedule", "cosine", "--no-share-embeddings", "--epochs", "1",
                          "--src", "de", "--tgt", "en"))
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["config"]["norm"] == "post" and r["config"]["share_embeddings"] is False
    assert r["headline_metric"] == "bleu_lc"
    steps = load_checkpoint(tmp_path / "last.pt")["state"]["step"]
    assert steps == -(-240 // 16 // 2)  # 15 batches of 16 sentences, 2 per optimizer step


def test_resume_is_exact(tiny_mt_data_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--epochs", "2", "--dropout", "0.2", "--accum-steps", "2"]
    train.main(train_args(tiny_mt_data_dir, a, *args))
    per_epoch = len(load_checkpoint(a / "last.pt")["state"]["history"]["train_loss"]) // 2
    train.main(train_args(tiny_mt_data_dir, b, *args, "--max-steps", "2"))
    train.main(train_args(tiny_mt_data_dir, b, *args, "--resume", "--max-steps", str(per_epoch)))
    train.main(train_args(tiny_mt_data_dir, b, *args, "--resume"))
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name


def test_average_last_keeps_k_epochs_and_reports_the_better(tiny_mt_data_dir, tmp_path):
    train.main(train_args(tiny_mt_data_dir, tmp_path, "--epochs", "4", "--average-last", "3"))
    kept = sorted(f.name for f in (tmp_path / "epochs").glob("*.pt"))
    assert kept == ["epoch002.pt", "epoch003.pt", "epoch004.pt"]
    final = json.loads((tmp_path / "result.json").read_text())["final_weights"]
    best = load_checkpoint(tmp_path / "last.pt")["state"]["best_val_bleu"]
    if final["weights"] == "averaged.pt":  # chosen only when it beats the best single epoch on val
        assert final["val_bleu_greedy"] > best and (tmp_path / "averaged.pt").is_file()
        assert final["epochs"] == ["epoch002", "epoch003", "epoch004"]
    else:
        assert final == {"weights": "best.pt", "val_bleu_greedy": best}
    weights = [load_checkpoint(tmp_path / "epochs" / k)["model"] for k in kept]
    mean = train.average_weights(sorted((tmp_path / "epochs").glob("*.pt")))
    name = next(iter(mean))
    assert torch.allclose(mean[name], sum(w[name] for w in weights) / 3)


def test_time_budget_stops_with_a_validated_checkpoint(tiny_mt_data_dir, tmp_path):
    train.main(train_args(tiny_mt_data_dir, tmp_path, "--epochs", "50", "--time-budget", "0.0001",
                          "--schedule", "cosine"))
    state = load_checkpoint(tmp_path / "last.pt")["state"]
    assert state["step"] == 1 and state["epoch"] == 1 and len(state["history"]["val_bleu"]) == 1
    assert "time budget of 0.0001 minutes used up at step 1" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "result.json").is_file()


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues(tiny_mt_data_dir, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_mt_data_dir, out, "--epochs", "100000")
    proc = signal_mid_training(f"{STAGE}/train.py", args, out, "epoch 1:", signal.SIGTERM, tmp_path / "stderr")
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130 and "Traceback" not in err and "stopped by SIGTERM" in err, err[-3000:]
    step = load_checkpoint(out / "last.pt", stage=STAGE)["state"]["step"]
    train.main(train_args(tiny_mt_data_dir, out, "--resume", "--max-steps", str(step + 2)))
    assert load_checkpoint(out / "last.pt")["state"]["step"] == step + 2


def test_evaluate_matches_training_and_draws_maps(trained, tmp_path, capsys):
    data_dir = trained.joinpath("data_dir").read_text()
    for kind in ("cross", "encoder", "decoder"):
        evaluate.main(["--checkpoint", str(trained / "best.pt"), "--data-dir", data_dir, "--json", "--maps", "1",
                       "--map-kind", kind, "--maps-dir", str(tmp_path)])
        out = json.loads(capsys.readouterr().out)
        assert (tmp_path / f"test2016_1_{kind}.png").read_bytes()[:8] == PNG_MAGIC
    r = json.loads((trained / "result.json").read_text())
    assert out["test2016"]["bleu"] == r["metrics"]["bleu"] and out["test2017"]["bleu"] == r["metrics"]["test2017_bleu"]


@pytest.mark.slow
def test_translate_arguments_stdin_interactive(trained, tmp_path):
    a = run_script("translate", "--checkpoint", trained / "best.pt", "A big dog runs.", "A purple cat.", "--json",
                   "--attention-map", tmp_path / "m.png", data_dir=trained, stage=STAGE)
    assert a.returncode == 0, a.stderr
    assert [json.loads(x)["source"] for x in a.stdout.splitlines()] == ["A big dog runs.", "A purple cat."]
    assert "read as <unk>: purple" in a.stderr and (tmp_path / "m_2.png").is_file()
    b = run_script("translate", "--checkpoint", trained / "best.pt", "--interactive", data_dir=trained, stage=STAGE,
                   stdin="A big dog runs.\n   \n")
    assert b.returncode == 0 and "Traceback" not in b.stderr
    c = run_script("translate", "--checkpoint", trained / "best.pt", data_dir=trained, stage=STAGE, stdin="\n")
    assert_one_line_error(c.returncode, c.stderr, r"stdin had no sentences")


@pytest.mark.parametrize("script", [evaluate, translate])
def test_bad_checkpoints(trained, tmp_path, capsys, script):
    assert_bad_checkpoints_rejected(script.main, trained / "best.pt", tmp_path, capsys, "stage4_transformer",
                                    ["A dog."] if script is translate else [])


@pytest.mark.parametrize("flags,pattern", [
    (["--d-model", "30", "--n-heads", "4"], r"--d-model 30 must be divisible by --n-heads 4"),
    (["--norm", "sandwich"], r"argument --norm: invalid choice"),
    (["--src", "fr", "--tgt", "fr"], r"Multi30k needs two different languages"),
    (["--average-last", "1"], r"--average-last must be 0 \(off\) or at least 2, got 1"),
])
def test_train_bad_flags(tiny_mt_data_dir, tmp_path, capsys, flags, pattern):
    code, err = cli(train.main, train_args(tiny_mt_data_dir, tmp_path, *flags), capsys)
    assert_one_line_error(code, err, pattern)


def test_train_missing_data_offline(tmp_path, capsys, monkeypatch):
    from stage4_transformer import data
    monkeypatch.setattr(data, "fetch", lambda url: (_ for _ in ()).throw(OSError("offline")))
    code, err = cli(train.main, ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, r"data set 'multi30k' not found .*offline")


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True])
@pytest.mark.parametrize("script", ["train", "evaluate", "translate", "benchmark"])
def test_help(tmp_path, script, module):
    proc = run_script(script, "--help", data_dir=tmp_path, module=module, stage=STAGE)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


def test_benchmark_runs_and_records_its_command(tmp_path):
    flags = ["--vocab-size", "100", "--d-model", "16", "--n-heads", "2", "--layers", "1", "--d-ff", "32",
             "--batch-size", "4", "--steps", "1", "--warmup", "0", "--rounds", "1"]
    benchmark.main([*flags, "--json", str(tmp_path / "b.json")])
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["tokens_per_second"]["ours"] > 0 and r["ratio_ours_over_torch"] > 0
    assert r["stage"] == STAGE and "run" not in r
    assert r["command"].startswith("python stage4_transformer/benchmark.py --vocab-size 100 ")
    assert r["config"] == resolved_config(benchmark.parse_args(flags)) and "json" not in r["config"]
    assert benchmark.parse_args([]).json == "runs/stage4_transformer/benchmark.json"


@pytest.mark.slow
@pytest.mark.real_data("multi30k")
def test_quick_run_on_real_data(real_data_dir, tmp_path):
    proc = run_script("train", "--quick", "--epochs", "1", "--out-dir", tmp_path / "run", "--result", tmp_path / "r.json",
                      "--d-model", "32", "--n-heads", "4", "--layers", "1", "--d-ff", "64", "--beam-size", "2",
                      data_dir=real_data_dir, stage=STAGE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["quick"] is True and r["sizes"]["train"] == train.QUICK_TRAIN and r["vocab_size"] > 100
