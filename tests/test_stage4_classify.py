"""Stage 4's sentence classifier: the model (shapes, padding changes nothing, the encoder is the translator's), the
whole-sentence validation split, SST-2 reading and download (patched), a --quick run on tiny files, a run at the
reference settings (it records its reference run), predict.py's load_predictor, exact resume, SIGTERM, and one-line
errors for bad input and bad checkpoints."""
from __future__ import annotations

import gzip
import json
import random
import signal

import pytest
import torch

from conftest import assert_one_line_error, cli, run_script, signal_mid_training
from scripts.common import UserError, load_checkpoint, resolved_config, save_checkpoint
from stage4_transformer import classify, predict
from stage4_transformer.data import load_sst2, pad, sentence_split
from stage4_transformer.model import ClassifierConfig, Transformer, TransformerClassifier, TransformerConfig

STAGE = "stage4_transformer"


def tiny_model(**kw) -> TransformerClassifier:
    torch.manual_seed(0)
    cfg = dict(vocab_size=30, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.1, max_len=20)
    return TransformerClassifier(ClassifierConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("pool,norm", [("mean", "pre"), ("first", "post")])
def test_shapes_and_padding_does_not_change_a_prediction(pool, norm):
    model = tiny_model(pool=pool, norm=norm)
    sentences = [[2, 5, 6, 7, 8, 9, 3], [2, 11, 3], [2, 12, 13, 14, 3]]
    batch = pad(sentences)                                    # (3, 7), right-padded with 0
    logits = model(batch)
    assert logits.shape == (3, 2)
    for i, s in enumerate(sentences):
        alone = model(torch.tensor([s]))                      # (1, 2): no padding at all
        assert torch.allclose(alone[0], logits[i], atol=1e-5)
    longer = torch.cat([batch, torch.zeros(3, 5, dtype=torch.long)], 1)  # five more pads change nothing either
    assert torch.allclose(model(longer), logits, atol=1e-5)


def test_the_encoder_is_the_translators():
    """Copied into a whole Transformer, the classifier's encoder gives the same states as Transformer.encode."""
    model = tiny_model(dropout=0.0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_heads=2, n_enc_layers=2, n_dec_layers=1,
                            d_ff=32, dropout=0.0, max_len=20)
    translator = Transformer(cfg).eval()
    mine = {k.replace("embed.", "src_embed.", 1) if k.startswith("embed.") else k: v
            for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = translator.load_state_dict(mine, strict=False)
    assert not unexpected and all(k.startswith(("tgt_embed", "decoder", "dec_norm", "out")) for k in missing)
    ids = pad([[2, 5, 6, 7, 3], [2, 8, 3]])
    memory, mask, _ = translator.encode(ids)                  # (2, 5, 16)
    real = mask[:, 0, 0, :, None].float()
    pooled = (memory * real).sum(1) / real.sum(1)             # (2, 16)
    assert torch.allclose(model.head(pooled), model(ids), atol=1e-5)


def test_sentence_split_holds_out_whole_sentences_and_drops_their_phrases():
    sentences = ["a fine and moving film", "the party was dull", "an art house bore", "great acting all round",
                 "not worth the ticket", "a quiet little gem", "dull and long", "moving"]
    texts = []
    for s in sentences:  # each sentence and every phrase of it, as in SST-2's train set (duplicates included)
        w = s.split()
        texts += [" ".join(w[a:b]) for a in range(len(w)) for b in range(a + 1, len(w) + 1)]
    train, val = sentence_split(texts, 3, random.Random(0))
    assert len(val) == 3 and not set(train) & set(val)
    for i in val:  # a validation row is a whole sentence: no other row contains it
        assert not any(j != i and f" {texts[i]} " in f" {texts[j]} " for j in range(len(texts)))
    for i in train:  # no training row is a phrase of a validation sentence
        assert not any(f" {texts[i]} " in f" {texts[v]} " for v in val)
    dropped = set(range(len(texts))) - set(train) - set(val)
    assert all(any(f" {texts[d]} " in f" {texts[v]} " for v in val) for d in dropped)
    assert sentence_split(texts, 3, random.Random(0)) == (train, val)   # the same rng gives the same split
    with pytest.raises(UserError, match="whole sentences"):
        sentence_split(texts, 50, random.Random(0))
    # words, not characters: "art" is not inside "party"; a row that occurs twice is not a whole sentence
    texts = ["the party was dull", "party", "art", "was dull", "art "]
    assert sentence_split(texts, 1, random.Random(0)) == ([2, 4], [0])


def test_sst2_reader_and_patched_download(tmp_path, monkeypatch):
    import datasets
    calls = []
    rows = {"train": [{"sentence": 'a " great film ', "label": 1, "idx": 0},
                      {"sentence": "dull", "label": 0, "idx": 1}],
            "validation": [{"sentence": "loved it", "label": 1, "idx": 0}], "test": [{"sentence": "x", "label": -1}]}

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return rows
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_sst2(tmp_path, "train") == (['a " great film ', "dull"], [1, 0])
    assert load_sst2(tmp_path, "dev") == (["loved it"], [1])
    assert calls == [("nyu-mll/glue", "sst2")]  # the second split is read from the files the first call wrote
    with gzip.open(tmp_path / "glue" / "sst2" / "dev.tsv.gz", "rt", encoding="utf-8", newline="") as f:
        assert f.read() == "sentence\tlabel\nloved it\t1\n"

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(UserError, match=r"data set 'sst2' not found in .*sst2 \(expected train.tsv.gz.*Couldn't reach"):
        load_sst2(tmp_path / "empty", "train")
    with pytest.raises(UserError, match="has no 'test' split"):
        load_sst2(tmp_path, "test")


def run_args(data_dir, out, *extra) -> list[str]:
    return ["--data-dir", str(data_dir), "--out-dir", str(out), "--quick", "--epochs", "4", "--batch-size", "16",
            "--d-model", "32", "--n-heads", "2", "--layers", "1", "--d-ff", "64", "--lr", "3e-3",
            "--warmup-steps", "5", *extra]


@pytest.fixture(scope="module")
def trained(shared_tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("classify")
    classify.main(run_args(shared_tiny_data_dir, out))
    return out


def test_quick_run_learns_and_writes_its_outputs(trained):
    for name in ["best.pt", "last.pt", "vocab.json", "train.log", "result.json"]:
        assert (trained / name).is_file(), name
    assert (trained / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((trained / "result.json").read_text())
    assert r["stage"] == STAGE and r["dataset"] == "sst2" and r["split"] == "dev" and r["headline_metric"] == "accuracy"
    assert {"accuracy", "macro_f1", "best_val_accuracy"} == r["metrics"].keys()
    assert r["metrics"]["accuracy"] >= 0.8  # the tiny SST-2 has cue words; chance is 0.5
    assert r["command"].startswith("python stage4_transformer/classify.py ") and r["params"] > 0
    assert r["sizes"] == {"train": 180, "val": 20, "dev": 60, "train_phrases_of_val_dropped": 0}
    assert "run" not in r and r["hparams"] == resolved_config(classify.parse_args(run_args("d", trained)))
    assert load_checkpoint(trained / "best.pt")["kind"] == "classifier"


def test_the_reference_settings_record_their_run(shared_tiny_data_dir, tmp_path):
    """The declared command's settings (only where-flags added) are the reference run: the result names it."""
    classify.main(["--data-dir", str(shared_tiny_data_dir), "--out-dir", str(tmp_path), "--device", "cpu"])
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["run"] == "sst2_classifier" and r["command"] == "python stage4_transformer/classify.py"
    assert str(tmp_path) not in json.dumps(r["hparams"])


def test_load_predictor_gives_class_probabilities(trained):
    classify_texts = predict.load_predictor(trained / "best.pt", "cpu")
    probs = classify_texts(["great wonderful loved film .", "awful boring dull plot .", "the"])
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3))
    assert probs[0, 1] > 0.5 > probs[1, 1]
    assert torch.equal(classify_texts(["the"])[0], probs[2])  # alone or in a batch: the same answer
    assert classify_texts([]).shape == (0, 2)
    assert classify_texts(["great " * 300]).shape == (1, 2)  # longer than max_len: cut, not an error


def test_resume_is_exact(shared_tiny_data_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--epochs", "2", "--dropout", "0.3"]
    classify.main(run_args(shared_tiny_data_dir, a, *args))
    per_epoch = len(load_checkpoint(a / "last.pt")["state"]["history"]["train_loss"]) // 2
    classify.main(run_args(shared_tiny_data_dir, b, *args, "--max-steps", "3"))
    assert json.loads((b / "result.json").read_text())["steps"] == 3  # a --max-steps run still reports, to out-dir
    classify.main(run_args(shared_tiny_data_dir, b, *args, "--resume", "--max-steps", str(per_epoch + 2)))
    classify.main(run_args(shared_tiny_data_dir, b, *args, "--resume"))
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    assert all(torch.equal(ckpt_a["model"][k], ckpt_b["model"][k]) for k in ckpt_a["model"])
    assert len(ckpt_b["state"]["commands"]) == 3


@pytest.mark.slow
def test_sigterm_saves_last_pt_and_resume_finishes(shared_tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    args = run_args(shared_tiny_data_dir, out, "--epochs", "500")
    proc = signal_mid_training("stage4_transformer/classify.py", args, out, "epoch 1:", signal.SIGTERM,
                               tmp_path / "stderr.txt")
    assert proc.returncode == 130
    state = load_checkpoint(out / "last.pt")["state"]
    assert state["step"] > 0 and "stopped by SIGTERM" in (out / "train.log").read_text()
    classify.main(run_args(shared_tiny_data_dir, out, "--resume", "--max-steps", str(state["step"] + 1)))
    assert load_checkpoint(out / "last.pt")["state"]["step"] == state["step"] + 1


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, shared_tiny_data_dir, trained):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    code, err = cli(classify.main, ["--data-dir", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, r"data set 'sst2' not found in .*offline")
    for flags, pattern in [(["--lr", "-1"], r"--lr: must be a finite number > 0"),
                           (["--batch-size", "0"], r"--batch-size: must be > 0"),
                           (["--d-model", "30", "--n-heads", "4"], r"divisible"),
                           (["--dropout", "1.5"], r"--dropout: must be in \[0, 1\)")]:
        code, err = cli(classify.main, run_args(shared_tiny_data_dir, tmp_path / "o", *flags), capsys)
        assert_one_line_error(code, err, pattern)
    # --resume with a corrupt last.pt, another stage's, a translator's, or none
    bad = tmp_path / "bad"
    bad.mkdir()
    translator = {"stage": STAGE, "model": {}, "config": {"src_vocab_size": 9, "tgt_vocab_size": 9}, "optimizer": {}}
    truncated = (trained / "last.pt").read_bytes()[:500]
    for content, pattern in [(lambda p: p.write_bytes(truncated), "cannot read checkpoint"),
                             (lambda p: save_checkpoint({"stage": "stage2_rnn_lstm", "model": {}, "config": {}}, p),
                              "written by stage2_rnn_lstm, not stage4_transformer"),
                             (lambda p: save_checkpoint(translator, p), "not the last.pt of a classify.py run"),
                             (lambda p: p.unlink(), "checkpoint not found")]:
        content(bad / "last.pt")
        code, err = cli(classify.main, run_args(shared_tiny_data_dir, bad, "--resume"), capsys)
        assert_one_line_error(code, err, pattern)
    save_checkpoint({**translator, "kind": "translator"}, bad / "last.pt")
    code, err = cli(classify.main, run_args(shared_tiny_data_dir, bad, "--resume"), capsys)
    assert_one_line_error(code, err, "holds a translator, not a classifier")
    save_checkpoint({**translator, "kind": "translator"}, bad / "translator.pt")
    with pytest.raises(UserError, match="holds a translator, not a classifier"):
        predict.load_predictor(bad / "translator.pt", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True])
def test_help_works_both_ways(module, tmp_path):
    proc = run_script("classify", "--help", data_dir=tmp_path, module=module, stage=STAGE)
    assert proc.returncode == 0 and "--pool" in proc.stdout and "--val-size" in proc.stdout, proc.stderr
