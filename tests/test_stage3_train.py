"""Stage 3 scripts end to end on tiny data: training learns the tiny dictionary language, exact resume, SIGINT,
evaluate.py (BLEU, signature, attention maps), translate.py (arguments, stdin, interactive, unknown words, bad
input), bad checkpoints, --help, and a --quick run on the real Multi30k when MY_LLM_DATA points at it.

Every run writes into tmp_path (--out-dir), so the committed results are never touched. The tests that start a
process are marked slow.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from conftest import (assert_bad_checkpoints_rejected, assert_one_line_error, cli, run_script, signal_mid_training,
                      write_tiny_multi30k)
from scripts.common import REPO_ROOT, load_checkpoint, reference_command, reference_run_name, resolved_config
from stage3_attention_seq2seq import evaluate, train, translate
from stage3_attention_seq2seq.reference_runs import REFERENCE_RUNS, TRANSLATOR_CHECKPOINT

STAGE = "stage3_attention_seq2seq"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_args(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """A small, fast run with every output inside out_dir (later flags override earlier ones)."""
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--result", str(out_dir / "result.json"),
            "--epochs", "3", "--batch-size", "16", "--emb-dim", "24", "--hidden-dim", "48", "--dropout", "0.0",
            "--lr", "1e-2", "--warmup-steps", "5", "--beam-size", "3", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """train.main: en -> fr with Bahdanau attention on the tiny Multi30k (the scripts as scripts: the slow tests)."""
    data_dir = write_tiny_multi30k(tmp_path_factory.mktemp("mt") / "data")
    out = tmp_path_factory.mktemp("run")
    train.main(train_args(data_dir, out, "--epochs", "25"))
    out.joinpath("data_dir").write_text(str(data_dir))
    return out


def test_run_writes_all_outputs_and_learns(trained):
    for name in ["best.pt", "last.pt", "vocab_src.json", "vocab_tgt.json", "train.log", "result.json",
                 "test2016.hyp.txt", "test2017.hyp.txt", "val.hyp.txt"]:
        assert (trained / name).is_file(), name
    assert (trained / "result.png").read_bytes()[:8] == PNG_MAGIC
    r = json.loads((trained / "result.json").read_text())
    assert r["stage"] == STAGE and r["headline_metric"] == "bleu" and r["split"] == "test2016"
    assert {"bleu", "bleu_lc", "test2017_bleu", "test2017_bleu_lc", "val_bleu"} <= r["metrics"].keys()
    assert "tok:13a" in r["sacrebleu_signature"]["cased"] and "case:lc" in r["sacrebleu_signature"]["lowercased"]
    assert r["decoding"] == {"beam_size": 3, "length_penalty": 0.6}
    assert r["metrics"]["bleu"] > 50  # the tiny dictionary language is learnt
    assert "run" not in r and r["hparams"] == resolved_config(train.parse_args(train_args(Path("d"), Path("o"),
                                                                                           "--epochs", "25")))
    assert load_checkpoint(trained / "best.pt", kind="translator")["kind"] == "translator"
    val_bleu = [v for _, v in load_checkpoint(trained / "last.pt")["state"]["history"]["val_bleu"]]
    assert len(val_bleu) == 25 and max(val_bleu) > val_bleu[0]


@pytest.mark.parametrize("attention", ["luong", "none"])
def test_other_attentions_train(tiny_mt_data_dir, tmp_path, attention):
    train.main(train_args(tiny_mt_data_dir, tmp_path, "--attention", attention, "--epochs", "1"))
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["config"]["attention"] == attention
    assert "noattn" in train.run_name(train.parse_args(["--attention", "none"]))


def test_other_directions_and_tatoeba(tiny_mt_data_dir, tmp_path):
    train.main(train_args(tiny_mt_data_dir, tmp_path / "a", "--src", "de", "--tgt", "en", "--epochs", "1"))
    r = json.loads((tmp_path / "a" / "result.json").read_text())
    assert r["headline_metric"] == "bleu_lc" and r["dataset"] == "multi30k de-en"
    train.main(train_args(tiny_mt_data_dir, tmp_path / "b", "--dataset", "tatoeba", "--src", "fr", "--tgt", "en",
                          "--epochs", "1"))
    r = json.loads((tmp_path / "b" / "result.json").read_text())
    assert r["split"] == "test" and "bleu" in r["metrics"]


def test_resume_is_exact(tiny_mt_data_dir, tmp_path):
    """--max-steps stops (mid-epoch and at an epoch's end) then --resume give one run's losses and weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--epochs", "2", "--dropout", "0.3", "--teacher-forcing", "0.8", "--attention", "luong"]
    train.main(train_args(tiny_mt_data_dir, a, *args))
    per_epoch = len(load_checkpoint(a / "last.pt")["state"]["history"]["train_loss"]) // 2
    train.main(train_args(tiny_mt_data_dir, b, *args, "--max-steps", "3"))
    train.main(train_args(tiny_mt_data_dir, b, *args, "--resume", "--max-steps", str(per_epoch)))
    train.main(train_args(tiny_mt_data_dir, b, *args, "--resume"))
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name


def test_resume_of_another_run_is_refused(tiny_mt_data_dir, tmp_path, capsys):
    train.main(train_args(tiny_mt_data_dir, tmp_path, "--max-steps", "2"))
    code, err = cli(train.main, train_args(tiny_mt_data_dir, tmp_path, "--attention", "none", "--resume"), capsys)
    assert_one_line_error(code, err, r"is a multi30k_en_fr run, not multi30k_en_fr_noattn")


@pytest.mark.slow
def test_sigint_saves_and_resume_continues(tiny_mt_data_dir, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_mt_data_dir, out, "--epochs", "100000")
    proc = signal_mid_training(f"{STAGE}/train.py", args, out, "epoch 1:", signal.SIGINT, tmp_path / "stderr")
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130 and "Traceback" not in err and "stopped by SIGINT" in err, err[-3000:]
    step = load_checkpoint(out / "last.pt", stage=STAGE)["state"]["step"]
    train.main(train_args(tiny_mt_data_dir, out, "--resume", "--max-steps", str(step + 2)))
    assert load_checkpoint(out / "last.pt")["state"]["step"] == step + 2


# ----------------------------------------------------------------------------- evaluate.py and translate.py

def test_evaluate_matches_the_training_report_and_draws_maps(trained, tmp_path, capsys):
    data_dir = trained.joinpath("data_dir").read_text()
    evaluate.main(["--checkpoint", str(trained / "best.pt"), "--data-dir", data_dir, "--json", "--maps", "0,3",
                   "--maps-dir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    r = json.loads((trained / "result.json").read_text())
    assert out["test2016"]["bleu"] == r["metrics"]["bleu"] and out["test2017"]["bleu"] == r["metrics"]["test2017_bleu"]
    assert out["test2016"]["signature"] == r["sacrebleu_signature"]["cased"]
    for i in (0, 3):
        assert (tmp_path / f"test2016_{i}.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("flags,pattern", [
    (["--split", "test9"], r"multi30k has no 'test9' split"),
    (["--maps", "0,x"], r"--maps takes sentence numbers"),
    (["--maps", "5000"], r"--maps: test2016 has sentences 0 to 29"),
])
def test_evaluate_bad_flags(trained, capsys, flags, pattern):
    data_dir = trained.joinpath("data_dir").read_text()
    code, err = cli(evaluate.main, ["--checkpoint", str(trained / "best.pt"), "--data-dir", data_dir, *flags], capsys)
    assert_one_line_error(code, err, pattern)


def _translate(trained: Path, *args, stdin: str = ""):
    return run_script("translate", "--checkpoint", trained / "best.pt", *args, data_dir=trained, stage=STAGE,
                      stdin=stdin)


@pytest.mark.slow
def test_translate_arguments_stdin_and_maps(trained, tmp_path):
    a = _translate(trained, "A big dog runs.", "The small cat sleeps today.", "--json", "--attention-map",
                   tmp_path / "m.png")
    assert a.returncode == 0, a.stderr
    lines = [json.loads(line) for line in a.stdout.splitlines()]
    assert [x["source"] for x in lines] == ["A big dog runs.", "The small cat sleeps today."]
    words = lines[0]["translation"].rstrip(".").split()
    assert words[0] == "Un" and words[2] == "grand"  # "A big dog" -> "Un <noun> grand": the adjective moves
    assert (tmp_path / "m_1.png").is_file() and (tmp_path / "m_2.png").is_file()
    b = _translate(trained, "--beam-size", "1", stdin="A big dog runs.\n\nThe small cat sleeps today.\n")
    assert b.returncode == 0 and len(b.stdout.splitlines()) == 2


@pytest.mark.slow
def test_translate_unknown_words_and_interactive(trained):
    a = _translate(trained, "A purple dog runs.")
    assert a.returncode == 0 and "not in the en vocabulary, read as <unk>: purple" in a.stderr
    b = _translate(trained, "--interactive", stdin="A big dog runs.\n" + "x" * 2000 + "\nThe cat eats.\n\n")
    assert b.returncode == 0, b.stderr
    assert "the limit is 1000" in b.stderr and "Traceback" not in b.stderr
    answers = [line for line in b.stdout.replace("en> ", "\n").splitlines() if line.strip()]
    assert len(answers) == 2 and answers[1].startswith("Le ")


@pytest.mark.slow
@pytest.mark.parametrize("args,stdin,pattern", [
    (["   "], "", r"empty sentence"),
    ([], "\n\n", r"stdin had no sentences"),
])
def test_translate_bad_input(trained, args, stdin, pattern):
    proc = _translate(trained, *args, stdin=stdin)
    assert_one_line_error(proc.returncode, proc.stderr, pattern)


@pytest.mark.parametrize("script", [evaluate, translate])
def test_bad_checkpoints(trained, tmp_path, capsys, script):
    assert_bad_checkpoints_rejected(script.main, trained / "best.pt", tmp_path, capsys, "stage3_attention_seq2seq",
                                    ["A dog."] if script is translate else [])


@pytest.mark.parametrize("flags,pattern", [
    (["--attention", "dot"], r"argument --attention: invalid choice"),
    (["--hidden-dim", "33"], r"--hidden-dim must be even"),
    (["--teacher-forcing", "1.5"], r"--teacher-forcing is a probability"),
    (["--src", "en", "--tgt", "en"], r"multi30k needs two different languages"),
])
def test_train_bad_flags(tiny_mt_data_dir, tmp_path, capsys, flags, pattern):
    code, err = cli(train.main, train_args(tiny_mt_data_dir, tmp_path, *flags), capsys)
    assert_one_line_error(code, err, pattern)


def test_train_missing_data_offline(tmp_path, capsys, monkeypatch):
    from stage3_attention_seq2seq import data
    monkeypatch.setattr(data, "fetch", lambda url: (_ for _ in ()).throw(OSError("offline")))
    code, err = cli(train.main, ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, r"data set 'multi30k' not found .*offline")


@pytest.mark.slow
def test_quick_defaults_yield_to_typed_flags():
    """--quick lowers the lr and the warmup for a short run; a flag the user typed wins, abbreviated or not."""
    assert (train.parse_args([]).lr, train.parse_args([]).warmup_steps) == (1e-3, 200)
    quick = train.parse_args(["--quick"])
    assert (quick.lr, quick.warmup_steps) == (train.QUICK_LR, train.QUICK_WARMUP)
    typed = train.parse_args(["--quick", "--lr=5e-4", "--warmup", "50"])  # --warmup: argparse's abbreviation
    assert (typed.lr, typed.warmup_steps) == (5e-4, 50)


def test_reference_runs_are_declared_for_every_published_result():
    """Every results/*.json has a declared run, each declaration parses and writes into runs/<its name>, and the
    published file records its run name, the declared command, and exactly the configuration it resolves to."""
    results = REPO_ROOT / STAGE / "results"
    assert set(REFERENCE_RUNS) == {p.stem for p in results.glob("*.json")}
    for name, argv in REFERENCE_RUNS.items():
        assert argv[0] == f"{STAGE}/train.py"
        assert not {"--out-dir", "--result", "--data-dir", "--device"} & set(argv), name  # where-flags stay out
        args = train.parse_args(argv[1:])
        assert args.out_dir == f"runs/{STAGE}/{name}" and train.run_name(args) == name
        assert reference_run_name(REFERENCE_RUNS, f"{STAGE}/train.py", train.parse_args, args) == name
        r = json.loads((results / f"{name}.json").read_text())
        assert (r["run"], r["command"], r["hparams"]) == (name, reference_command(argv), resolved_config(args))
        assert r["data_dir"] == "$MY_LLM_DATA"
    other = train.parse_args(["--epochs", "8", "--beam-size", "4"])  # a changed setting: an experiment
    assert reference_run_name(REFERENCE_RUNS, f"{STAGE}/train.py", train.parse_args, other) is None


def test_translator_checkpoint_is_what_the_en_fr_run_writes():
    """evaluate.py's and translate.py's default checkpoint is the best.pt of the declared en -> fr run."""
    assert f"{train.parse_args(REFERENCE_RUNS['multi30k_en_fr'][1:]).out_dir}/best.pt" == TRANSLATOR_CHECKPOINT
    assert evaluate.parse_args([]).checkpoint == translate.parse_args([]).checkpoint == TRANSLATOR_CHECKPOINT


@pytest.mark.parametrize("module", [False, True])
@pytest.mark.parametrize("script", ["train", "evaluate", "translate"])
def test_help(tmp_path, script, module):
    proc = run_script(script, "--help", data_dir=tmp_path, module=module, stage=STAGE)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr


@pytest.mark.slow
@pytest.mark.real_data("multi30k")
def test_quick_run_on_real_data(real_data_dir, tmp_path):
    """--quick on the real Multi30k files: it reads them, trains on a slice, and scores the test sets; the result
    goes to <out-dir>/result.json and names the data directory as $MY_LLM_DATA."""
    proc = run_script("train", "--quick", "--epochs", "1", "--out-dir", tmp_path / "run", "--emb-dim", "32",
                      "--hidden-dim", "64", "--beam-size", "2", data_dir=real_data_dir, stage=STAGE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "run" / "result.json").read_text())
    assert r["quick"] is True and r["sizes"]["train"] == train.QUICK_TRAIN and r["data_dir"] == "$MY_LLM_DATA"
    assert r["metrics"]["bleu"] >= 0 and r["vocab_sizes"]["fr"] > 100
