"""Stage 2 SST-2 classifier: the model (shapes, padding changes nothing, scratch = torch), the whole-sentence
validation split, the sentence vocabulary (JSON), the SST-2 reader and its download path (a patched
`datasets.load_dataset`), classify.py end to end on tiny files (result file, the reference-run record, exact resume
after --max-steps and after SIGTERM), its default --out-dir, and one-line errors for bad input. predict.py (the
trained model for other scripts) is tested in test_stage2_predict.py.

Every run writes into tmp_path (--out-dir and --result), so nothing lands in runs/ or the committed results, and the
data are the tiny files conftest.py writes: nothing is downloaded and no real data set is copied.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

from conftest import assert_one_line_error, cli, run_script, tiny_rows
from scripts.common import REPO_ROOT, UserError, load_checkpoint, reference_command, resolved_config, save_checkpoint
from stage2_rnn_lstm import classify
from stage2_rnn_lstm.data import (SentenceVocab, length_batches, load_sst2, make_batch, sentence_split, sst2_splits,
                                  tokenize_sentence)
from stage2_rnn_lstm.model import ClassifierConfig, RNNClassifier

STAGE = "stage2_rnn_lstm"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_args(data_dir, out_dir, *extra: str) -> list[str]:
    """A small, fast run with every output inside out_dir (later flags override earlier ones)."""
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--result", str(out_dir / "result.json"),
            "--epochs", "3", "--batch-size", "16", "--emb-dim", "16", "--hidden-dim", "32", "--lr", "1e-2",
            "--dropout", "0.1", "--min-freq", "1", *extra]


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("impl", ["scratch", "torch"])
@pytest.mark.parametrize("model_type", ["rnn", "lstm", "gru"])
def test_forward_shapes_and_padding_changes_nothing(impl, model_type):
    """A sentence's scores are the same alone and right-padded in a batch with a longer one."""
    torch.manual_seed(0)
    model = RNNClassifier(ClassifierConfig(vocab_size=20, model_type=model_type, emb_dim=8, hidden_dim=12,
                                           n_layers=2, impl=impl)).eval()
    short, long = [3, 4, 5], [6, 7, 8, 9, 10, 11, 2]
    ids, lengths = make_batch([short, long])                           # (2, 7), (2,)
    assert ids.shape == (2, 7) and lengths.tolist() == [3, 7] and ids[0, 3:].eq(0).all()
    batch = model(ids, lengths)
    assert batch.shape == (2, 2)
    alone = model(*make_batch([short]))
    assert torch.allclose(batch[0], alone[0], atol=1e-6)
    assert torch.allclose(batch[1], model(*make_batch([long]))[0], atol=1e-6)


def test_scratch_and_torch_classifiers_are_one_function():
    """The same weights give the same scores with the hand-written cells and with nn.LSTM."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=20, emb_dim=8, hidden_dim=12, n_layers=2)
    ours = RNNClassifier(ClassifierConfig(**cfg, impl="scratch"))
    ref = RNNClassifier(ClassifierConfig(**cfg, impl="torch"))
    ref.load_state_dict(ours.state_dict())
    ids, lengths = make_batch([[1, 2, 3], [4, 5, 6, 7, 8]])
    assert torch.allclose(ours.eval()(ids, lengths), ref.eval()(ids, lengths), atol=1e-5)


# ----------------------------------------------------------------------------- data

def test_sentence_split_holds_out_whole_sentences_and_drops_their_phrases():
    texts = ["a great movie", "great movie", "great", "a great", "a dull film", "dull film", "film",
             "the party", "art", "movie of the year", "of the"]
    for seed in range(20):
        train, val = sentence_split(texts, 2, random.Random(seed))
        assert len(val) == 2 and not set(train) & set(val)
        for v in val:  # whole: no other row contains it
            assert not any(i != v and f" {texts[v]} " in f" {t} " for i, t in enumerate(texts))
        phrases = {" ".join(texts[v].split()[a:b]) for v in val
                   for a in range(len(texts[v].split())) for b in range(a + 1, len(texts[v].split()) + 1)}
        assert not any(texts[i] in phrases for i in train)                    # no phrase of a held-out sentence
        assert sorted(train + val) == sorted(set(range(len(texts))) - {i for i in range(len(texts))
                                                                       if i not in val and texts[i] in phrases})
    # "art" is a word of its own, not a part of "party": it is whole, and "the party" held out does not drop it
    train, val = sentence_split(["the party", "art"], 1, random.Random(0))
    assert sorted(train + val) == [0, 1]
    with pytest.raises(UserError, match="asks for 5 whole sentences, but the training set has only 1"):
        sentence_split(["a b", "a", "b"], 5, random.Random(0))


def test_tokenize_sentence_meets_sst2s_form():
    assert tokenize_sentence("It's great! I didn't like Mr. Smith's film, ok?") == \
        ["it", "'s", "great", "!", "i", "did", "n't", "like", "mr.", "smith", "'s", "film", ",", "ok", "?"]
    sst = "it 's a does n't ... \" the u.s. , mr. e.t. 1/2 *** -- ( wow ) ."
    assert tokenize_sentence(sst) == sst.split()   # already tokenised: unchanged
    assert tokenize_sentence("I loved it.") == ["i", "loved", "it", "."]


def test_vocab_json_round_trip(tmp_path):
    v = SentenceVocab.build(["a good film", "a bad film", "good", "rare"], min_freq=2)
    assert v.itos[:2] == ["<pad>", "<unk>"] and set(v.itos[2:]) == {"a", "good", "film"}
    assert v.encode("a rare good film !") == [v.stoi["a"], 1, v.stoi["good"], v.stoi["film"], 1]
    assert v.encode("") == [1]                      # never empty: a sentence always has a last token
    v.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text())["itos"] == v.itos   # plain JSON
    w = SentenceVocab.load(tmp_path / "vocab.json")
    assert w.itos == v.itos and w.fingerprint() == v.fingerprint()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read vocabulary"):
        SentenceVocab.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="vocabulary not found"):
        SentenceVocab.load(tmp_path / "missing.json")


@pytest.mark.slow
def test_vocab_order_is_the_same_in_every_process():
    """Words tied in count get the same ids whatever PYTHONHASHSEED is: the same command gives the same model."""
    code = ("import json; from stage2_rnn_lstm.data import SentenceVocab; "
            "print(json.dumps(SentenceVocab.build([f'w{i} x{i % 7} y z' for i in range(300)]).itos))")
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    itos = json.loads(outputs.pop())
    assert itos[2:4] == ["y", "z"] and itos[4:11] == [f"x{k}" for k in range(7)]   # by count, then alphabetical


def test_length_batches_cover_every_row_once_and_repeat_with_the_seed():
    lengths = [random.Random(i).randint(1, 50) for i in range(1000)]
    batches = length_batches(lengths, 16, random.Random(3))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == length_batches(lengths, 16, random.Random(3))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 5   # sorted within pools: a batch holds sentences of similar length


def test_sst2_splits_hold_out_whole_sentences(tiny_data_dir):
    data, vocab, summary = sst2_splits(tiny_data_dir, 20, 1)
    sentences, labels = load_sst2(tiny_data_dir, "train")
    assert len(data["val"][1]) == 20 and len(data["dev"][1]) == len(load_sst2(tiny_data_dir, "dev")[1])
    assert len(data["train"][1]) + 20 <= len(labels) and summary.startswith("SST-2: ")
    again, _, _ = sst2_splits(tiny_data_dir, 20, 1)
    assert again == data                                   # the split is fixed, whatever the run's --seed
    small, _, _ = sst2_splits(tiny_data_dir, 5, 1, vocab, limits=(50, 10))
    assert len(small["dev"][1]) == 10 and len(small["train"][1]) + 5 <= 50
    with pytest.raises(UserError, match="--val-size 50 must leave training rows"):
        sst2_splits(tiny_data_dir, 50, 1, limits=(50, 10))


def test_reads_sst2_tsv_with_bare_quotes(tiny_data_dir):
    sentences, labels = load_sst2(tiny_data_dir, "train")
    assert list(zip(sentences, labels)) == tiny_rows("sst2", "train")
    assert any(s.startswith('" ') for s in sentences)


def hub_sst2():
    """What `datasets.load_dataset("nyu-mll/glue", "sst2")` gives, with the tiny rows (dev = the hub's validation)."""
    return {hub: [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(tiny_rows("sst2", split))]
            for hub, split in [("train", "train"), ("validation", "test"), ("test", "test")]}


def test_download_writes_the_local_format(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return hub_sst2()
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert list(zip(*load_sst2(tmp_path, "dev"))) == tiny_rows("sst2", "test")
    assert list(zip(*load_sst2(tmp_path, "train"))) == tiny_rows("sst2", "train")
    assert calls == [("nyu-mll/glue", "sst2")]      # once: train was read from the file the download wrote
    assert "downloading nyu-mll/glue" in capsys.readouterr().err
    lines = gzip.open(tmp_path / "glue" / "sst2" / "train.tsv.gz", "rt", encoding="utf-8", newline="").read()
    assert lines.split("\n")[0] == "sentence\tlabel" and lines.endswith("\n") and "\r" not in lines


def test_missing_data_offline_is_one_line_error(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    code, err = cli(classify.main, run_args(tmp_path / "nowhere", tmp_path / "run"), capsys)
    assert_one_line_error(code, err, r"SST-2 not found in .*sst2 \(expected train.tsv.gz, dev.tsv.gz\).*Couldn't reach")


# ----------------------------------------------------------------------------- classify.py end to end

def test_quick_run_writes_outputs_and_predicts(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    classify.main(run_args(tiny_data_dir, out, "--quick"))
    for name in ["best.pt", "last.pt", "vocab.json", "classify.log", "result.json"]:
        assert (out / name).is_file(), name
    assert (out / "result.png").read_bytes()[:8] == PNG_MAGIC
    r = json.loads((out / "result.json").read_text())
    assert r["stage"] == STAGE and r["dataset"] == "sst2" and r["split"] == "dev" and r["headline_metric"] == "accuracy"
    assert set(r["metrics"]) == {"accuracy", "macro_f1"} and 0 <= r["best_val_accuracy"] <= 1
    assert r["command"].startswith("python stage2_rnn_lstm/classify.py --data-dir")
    assert r["sizes"]["val"] == 20 and r["sizes"]["dev"] == 60 and r["params"] > 0
    assert r["metrics"]["accuracy"] >= 0.8   # the tiny rows' cue words are easy to learn

    assert "run" not in r and r["hparams"] == resolved_config(classify.parse_args(run_args(tiny_data_dir, out,
                                                                                           "--quick")))
    assert load_checkpoint(out / "best.pt", stage=STAGE)["kind"] == "classifier"


def test_a_reference_run_records_its_name_and_declared_command(tiny_data_dir, tmp_path, monkeypatch):
    """When the settings resolve to a declared run, the result file names it and records the declared command (the
    one to paste), whatever where-flags and spelling this command line used."""
    out = tmp_path / "run"
    argv = run_args(tiny_data_dir, out, "--epochs", "1")
    declared = [classify.SCRIPT, *argv[6:]]                      # the same run without --data-dir/--out-dir/--result
    monkeypatch.setattr(classify, "REFERENCE_RUNS", {"tiny_sst2": declared})
    classify.main(argv + ["--lr", "0.01"])                      # 1e-2 spelt another way is the same run
    r = json.loads((out / "result.json").read_text())
    assert r["run"] == "tiny_sst2" and r["command"] == reference_command(declared)
    assert list(r)[:2] == ["stage", "run"] and r["hparams"] == resolved_config(classify.parse_args(declared[1:]))


@pytest.mark.parametrize("argv,out_dir", [
    ([], "runs/stage2_rnn_lstm/sst2_classifier"),
    (["--model-type", "gru"], "runs/stage2_rnn_lstm/sst2_classifier_gru"),
    (["--model-t", "rnn"], "runs/stage2_rnn_lstm/sst2_classifier_rnn"),        # argparse's abbreviation
    (["--out-dir", "elsewhere", "--model-type", "gru"], "elsewhere"),
    (["--out", "elsewhere", "--model-type", "gru"], "elsewhere"),                  # abbreviated too
    (["--out-dir=runs/stage2_rnn_lstm/sst2_classifier", "--model-type", "gru"], "runs/stage2_rnn_lstm/sst2_classifier"),
])
def test_default_out_dir_follows_the_cell_unless_given(argv, out_dir):
    assert classify.parse_args(argv).out_dir == out_dir


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Send this process SIGTERM while the loop builds batch `step` (counting from 1), as `kill` would."""
    calls = {"n": 0}
    real = classify.make_batch

    def make_batch(seqs, pad_id=0):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(seqs, pad_id)
    monkeypatch.setattr(classify, "make_batch", make_batch)


@pytest.mark.parametrize("stop", ["max_steps", "sigterm"])
def test_resume_is_exact(tiny_data_dir, tmp_path, monkeypatch, stop):
    """A run stopped mid-epoch (by --max-steps, or by SIGTERM: exit 130 with last.pt saved) and resumed gives the
    uninterrupted run's losses, validation scores and weights."""
    a, b = tmp_path / "a", tmp_path / "b"
    classify.main(run_args(tiny_data_dir, a))
    if stop == "max_steps":
        classify.main(run_args(tiny_data_dir, b, "--max-steps", "5"))
    else:
        interrupt_at_step(monkeypatch, 5)
        with pytest.raises(SystemExit) as e:
            classify.main(run_args(tiny_data_dir, b))
        assert e.value.code == 130
        monkeypatch.undo()
    assert load_checkpoint(b / "last.pt", stage=STAGE)["state"]["step"] == 5
    classify.main(run_args(tiny_data_dir, b, "--resume"))
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["metrics"] == rb["metrics"] and len(rb["resumed_with"]) == 1


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("flags,pattern", [
    (["--lr", "-1"], r"argument --lr: must be a finite number > 0"),
    (["--batch-size", "0"], r"argument --batch-size: must be > 0"),
    (["--dropout", "1.5"], r"argument --dropout: must be in \[0, 1\)"),
    (["--model-type", "transformer"], r"argument --model-type/--model_type: invalid choice"),
])
def test_bad_flags(capsys, flags, pattern):
    code, err = cli(classify.main, flags, capsys)
    assert_one_line_error(code, err, pattern)


def test_bad_checkpoints(tiny_data_dir, tmp_path, capsys):
    """--resume: a truncated file, another stage's checkpoint, a Stage 2 language model, a best.pt (no optimizer)."""
    out = tmp_path / "run"
    classify.main(run_args(tiny_data_dir, out, "--epochs", "1"))
    good = (out / "last.pt").read_bytes()
    lm = {"stage": STAGE, "kind": "language_model", "model": {}, "config": {"vocab_size": 3}}   # train.py's kind
    for write, pattern in [
        (lambda p: p.write_bytes(good[:500]), r"cannot read checkpoint .*corrupt"),
        (lambda p: save_checkpoint({"stage": "stage1_mlp", "model": {}, "config": {}}, p),
         r"written by stage1_mlp, not stage2_rnn_lstm"),
        (lambda p: save_checkpoint(lm, p), r"holds a language model, not a classifier"),
        (lambda p: p.write_bytes((out / "best.pt").read_bytes()), r"is not the last.pt of a classify.py run"),
    ]:
        write(out / "last.pt")
        code, err = cli(classify.main, run_args(tiny_data_dir, out, "--resume"), capsys)
        assert_one_line_error(code, err, pattern)


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True])
def test_help(tmp_path, module):
    proc = run_script("classify", "--help", data_dir=tmp_path, module=module, stage=STAGE)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--model-type" in proc.stdout, proc.stderr
