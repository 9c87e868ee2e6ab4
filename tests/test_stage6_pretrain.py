"""Stage 6 pre-training: the masking statistics, NSP pairs and packed windows, reading and caching the corpus, the
patched downloads, and pretrain.py end to end on tiny files: it learns, writes the checkpoint contract, resumes exactly,
saves on SIGTERM, gives one-line errors, and two processes under torchrun match one."""
from __future__ import annotations

import csv
import gzip
import json
import math
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import (REPO_ROOT, TINY_WIKI, assert_one_line_error, cli, run_script, run_to_end,
                      signal_mid_training)
from scripts import common
from scripts.common import UserError, load_checkpoint
from stage6_bert import data, documents, pretrain
from stage6_bert.data import Corpus, MixedExamples, PackedWindows, SentencePairs, collate, mask_batch, mask_tokens
from stage6_bert.model import BertConfig, BertPretrain
from stage6_bert.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, WordPieceTokenizer

STAGE = "stage6_bert"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A tiny corpus with something to learn: each document is about one animal, and each animal eats one food.
FOODS = {"cat": "fish", "dog": "bone", "cow": "grass", "bird": "seed", "bee": "honey", "fox": "hen"}
TEMPLATES = ["the {a} eats {f} .", "a {a} likes the {f} .", "my {a} sleeps all day .", "the {a} is very {adj} .",
             "every {a} wants more {f} !", "is the {a} hungry ?"]


def corpus_text(n_docs: int = 40, seed: int = 0) -> str:
    """BERT's input format: one sentence per line, a blank line between documents."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        animal = list(FOODS)[d % len(FOODS)]
        lines = [rng.choice(TEMPLATES).format(a=animal, f=FOODS[animal], adj=rng.choice(["big", "small", "old"]))
                 for _ in range(rng.randint(4, 8))]
        docs.append("\n".join(lines))
    return "\n\n".join(docs) + "\n"


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "animals.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


def pretrain_args(corpus, out_dir, *extra: str) -> list[str]:
    return ["--corpus", str(corpus), "--data-dir", str(out_dir.parent / "no_data"), "--out-dir", str(out_dir),
            "--result", str(out_dir / "result.json"), "--vocab-size", "150", "--max-len", "32", "--hidden", "32",
            "--layers", "2", "--heads", "2", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5",
            "--epochs", "3", *extra]


def history(out_dir):
    return load_checkpoint(out_dir / "last.pt", stage=STAGE)["state"]["history"]


def numbered_corpus(n_docs: int = 20, seed: int = 0) -> Corpus:
    """Every token a different id, in order (5, 6, 7, ...): a token's id says where in the corpus it comes from.
    Some sentences are longer than a segment, to be cut."""
    rng = random.Random(seed)
    docs, next_id = [], 5
    for _ in range(n_docs):
        doc = []
        for _ in range(rng.randint(3, 8)):
            n = rng.choice([2, 3, 5, 7, 9, 25])
            doc.append(list(range(next_id, next_id + n)))
            next_id += n
        docs.append(doc)
    return Corpus.from_token_lists(docs)


# ----------------------------------------------------------------------------- masking

def test_mask_tokens_statistics():
    """About 15% of the real tokens are chosen; of those about 80% [MASK], 10% random, 10% unchanged; never a
    special token; labels -100 elsewhere; the input is not changed; the same generator state gives the same masks."""
    V, draws = 1000, 20
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (64, 128), generator=g)
    ids[:, 0], ids[:, 60], ids[:, 100:] = CLS_ID, SEP_ID, PAD_ID
    special = ids < 5
    before = ids.clone()
    chosen = as_mask = as_random = as_is = 0
    for _ in range(draws):
        inputs, labels = mask_tokens(ids, special, V, g, 0.15)
        assert torch.equal(ids, before)
        sel = labels != -100
        assert not (sel & special).any()
        assert torch.equal(labels[sel], ids[sel]) and (labels[~sel] == -100).all()
        assert torch.equal(inputs[~sel], ids[~sel])     # what is not chosen is left alone
        assert (inputs[special] == ids[special]).all()
        assert (inputs[sel & (inputs != MASK_ID)] >= 5).all()  # a random token is never special
        chosen += sel.sum().item()
        as_mask += (inputs[sel] == MASK_ID).sum().item()
        as_is += (inputs[sel] == ids[sel]).sum().item()
        as_random += ((inputs[sel] != MASK_ID) & (inputs[sel] != ids[sel])).sum().item()
    real = (~special).sum().item() * draws
    assert chosen / real == pytest.approx(0.15, abs=0.005)
    assert as_mask / chosen == pytest.approx(0.8, abs=0.015)
    assert as_random / chosen == pytest.approx(0.1, abs=0.015)  # (a random draw of the same token counts as kept)
    assert as_is / chosen == pytest.approx(0.1, abs=0.015)
    a = mask_tokens(ids, special, V, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, V, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mask_batch_never_chooses_special_tokens():
    ids = np.array([CLS_ID, 7, UNK_ID, 9, SEP_ID, 11, UNK_ID, SEP_ID])
    batch = collate([(ids, np.zeros_like(ids), None), (ids[:5], np.zeros(5, dtype=np.int64), None)])
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        masked = mask_batch(batch, 50, g, mask_prob=0.9)
        chosen = masked["mlm_labels"] != -100
        assert set(batch["input_ids"][chosen].tolist()) <= {7, 9, 11}  # never [CLS], [SEP], [PAD] or [UNK]
    assert torch.equal(batch["attention_mask"], torch.tensor([[1] * 8, [1] * 5 + [0] * 3]))
    assert batch["input_ids"][1, 5:].tolist() == [PAD_ID] * 3 and "nsp_labels" not in batch


# ----------------------------------------------------------------------------- examples

def test_nsp_pairs():
    """Half the B segments are random (from another document), half the true next segment; segment ids 0 for
    [CLS] A [SEP] and 1 for B [SEP]; nothing longer than max_len; the segments hold every token once, in order."""
    corpus = numbered_corpus()
    docs = list(range(len(corpus)))
    doc_of = {t: d for d in docs for t in corpus.ids[slice(*corpus.doc_range(d))].tolist()}
    max_len = 24
    pairs = SentencePairs(corpus, docs, max_len)
    every = np.concatenate([pairs.segment(k) for k in range(len(pairs.starts))])
    assert np.array_equal(every, corpus.ids.astype(np.int64))
    g = torch.Generator().manual_seed(0)
    labels = []
    for _ in range(20):
        for i in range(len(pairs)):
            ids, segments, label = pairs.example(i, g)
            assert len(ids) <= max_len and ids[0] == CLS_ID and ids[-1] == SEP_ID
            sep = int(np.flatnonzero(ids == SEP_ID)[0])
            a, b = ids[1:sep], ids[sep + 1:-1]
            assert len(a) and len(b) and SEP_ID not in b
            assert segments.tolist() == [0] * (sep + 1) + [1] * (len(b) + 1)
            for seg in (a, b):  # a segment is a run of one document's text
                assert np.all(np.diff(seg) == 1) and doc_of[int(seg[0])] == doc_of[int(seg[-1])]
            if label == data.IS_NEXT:
                assert b[0] == a[-1] + 1 and doc_of[int(b[0])] == doc_of[int(a[0])]
            else:
                assert label == data.NOT_NEXT and doc_of[int(b[0])] != doc_of[int(a[0])]
            labels.append(label)
    assert np.mean(labels) == pytest.approx(0.5, abs=0.05)
    batch = collate([pairs.example(i, g) for i in range(4)])
    assert batch["nsp_labels"].shape == (4,) and batch["token_type_ids"].max() == 1
    short = Corpus.from_token_lists([[[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]])
    assert len(SentencePairs(short, [0, 1], 128)) == 2  # two short sentences still make a pair


def test_sop_pairs_are_one_documents_neighbours_in_order_or_swapped():
    """Sentence-order prediction: A and B are always two neighbouring segments of one document; label 0 keeps their
    order, label 1 swaps them, each about half of the time."""
    corpus = numbered_corpus()
    docs = list(range(len(corpus)))
    doc_of = {t: d for d in docs for t in corpus.ids[slice(*corpus.doc_range(d))].tolist()}
    pairs = SentencePairs(corpus, docs, 24, objective="sop")
    g = torch.Generator().manual_seed(0)
    labels = []
    for _ in range(20):
        for i in range(len(pairs)):
            ids, segments, label = pairs.example(i, g)
            sep = int(np.flatnonzero(ids == SEP_ID)[0])
            a, b = ids[1:sep], ids[sep + 1:-1]
            assert doc_of[int(a[0])] == doc_of[int(b[0])] and segments.tolist() == [0] * (sep + 1) + [1] * (len(b) + 1)
            if label == data.IN_ORDER:
                assert b[0] == a[-1] + 1
            else:
                assert label == data.SWAPPED and a[0] == b[-1] + 1
            labels.append(label)
    assert np.mean(labels) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="objective 'mlm'"):
        SentencePairs(corpus, docs, 24, objective="mlm")


def test_a_mix_draws_pairs_at_the_share_asked_and_labels_the_windows_no_label():
    corpus = numbered_corpus()
    docs = list(range(len(corpus)))
    packed = PackedWindows(corpus, docs, 16)
    mixed = MixedExamples(packed, SentencePairs(corpus, docs, 16, objective="sop"), 0.3)
    assert len(mixed) == len(packed)
    g = torch.Generator().manual_seed(0)
    drawn = [mixed.example(i % len(mixed), g) for i in range(2000)]
    paired = [label != data.NO_LABEL for _, _, label in drawn]
    assert np.mean(paired) == pytest.approx(0.3, abs=0.03)
    for i, (ids, segments, label) in enumerate(drawn[:200]):
        if label == data.NO_LABEL:   # not a pair: packed window i, all of it segment 0
            assert np.array_equal(ids, packed.example(i % len(mixed))[0]) and not segments.any()
    batch = collate(drawn[:16])
    assert batch["nsp_labels"].tolist() == [label for _, _, label in drawn[:16]]
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="0 < pair_share < 1"):
            MixedExamples(packed, SentencePairs(corpus, docs, 16), share)


def test_packing_without_nsp():
    """Windows of max_len - 2 tokens of running text, a [SEP] between documents, in [CLS] ... [SEP], segment 0."""
    corpus = numbered_corpus(6)
    docs = [1, 3, 4]
    packed = PackedWindows(corpus, docs, 16)
    inner = []
    for i in range(len(packed)):
        ids, segments, label = packed.example(i)
        assert ids[0] == CLS_ID and ids[-1] == SEP_ID and label is None and not segments.any()
        assert len(ids) == 16 or i == len(packed) - 1
        inner += ids[1:-1].tolist()
    expected = []
    for d in docs:
        expected += corpus.ids[slice(*corpus.doc_range(d))].tolist() + [SEP_ID]
    assert inner == expected[:-1]


# ----------------------------------------------------------------------------- reading, caching, downloading

def test_documents_and_sentences():
    wiki = " \n = First = \n \n The king . The river ! \n \n = = Section = = \n Why ? Yes . \n = Second = \n Two . \n"
    assert documents.wikitext_documents(wiki) == [["First", "The king .", "The river !", "Section", "Why ?", "Yes ."],
                                             ["Second", "Two ."]]
    assert documents.text_documents("a b. c d.\nline two\n\n\nnext doc\n") == [["a b.", "c d.", "line two"], ["next doc"]]
    assert documents.text_documents("one review. Two\nanother review\n") == [["one review.", "Two"], ["another review"]]
    assert documents.split_documents(4) == ([0, 2], [1, 3])
    train, val = documents.split_documents(1000)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 1000
    with pytest.raises(UserError, match="at least 4"):
        documents.split_documents(3)
    tok = WordPieceTokenizer(SPECIAL_TOKENS + ["the", "cat", "<", ">", "unk"])
    assert data.encode_sentence(tok, "the <unk> cat <unk>") == [5, UNK_ID, 6, UNK_ID]  # one [UNK], not < unk >
    assert data.encode_sentence(tok, "the < unk > cat") == [5, 7, 9, 8, 6]


def test_prepare_trains_the_tokenizer_once_and_caches_the_ids(corpus_file, tmp_path):
    out, lines = tmp_path / "run", []
    tok, corpus, summary = data.prepare(tmp_path, out, corpus=[str(corpus_file)], vocab_size=150, log=lines.append)
    assert any("training a WordPiece" in line for line in lines) and any("encoding" in line for line in lines)
    assert (out / "tokenizer.json").is_file() and (out / summary["cache"]).is_file()
    docs = documents.text_documents(corpus_file.read_text())
    assert len(corpus) == len(docs) and corpus.ids.dtype == np.uint16
    first = docs[0]
    assert corpus.ids[slice(*corpus.doc_range(0))].tolist() == [i for s in first for i in tok.encode(s)]
    lines.clear()
    tok2, corpus2, summary2 = data.prepare(tmp_path, out, corpus=[str(corpus_file)], vocab_size=150, log=lines.append)
    assert summary2 == summary and not any(line.startswith(("encoding", "training")) for line in lines)
    assert np.array_equal(corpus2.ids, corpus.ids) and np.array_equal(corpus2.doc_starts, corpus.doc_starts)
    # another tokenizer (--tokenizer) means other ids: a new cache file
    other = WordPieceTokenizer.train(corpus_file.read_text(), 120)
    other.save(tmp_path / "other.json")
    _, _, summary3 = data.prepare(tmp_path, out, corpus=[str(corpus_file)], tokenizer_file=tmp_path / "other.json",
                                  log=lines.append)
    assert summary3["fingerprint"] != summary["fingerprint"] and summary3["vocab_size"] == len(other)
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "other.json").read_bytes()


def hub_rows(text: str) -> list[dict]:
    """WikiText on the hub: one row per line, newline included; whitespace-only lines became ""."""
    return [{"text": "" if not line.strip() else line} for line in text.splitlines(keepends=True)]


REVIEWS = ['A "great" film, truly.<br /><br />Loved it. Really!', "Awful, boring; I hated it. Never again.",
           "Café crème: superb. Ten out of ten.", "Dull. Dull. Dull.", "The cast was fine. The plot was not."]


def test_download_path_is_patched_and_stores_the_offline_format(tmp_path, monkeypatch):
    import datasets
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        if path == "Salesforce/wikitext":
            assert name == "wikitext-2-v1"
            return {"train": hub_rows(TINY_WIKI["train"]), "validation": hub_rows(TINY_WIKI["valid"]),
                    "test": hub_rows(TINY_WIKI["test"])}
        assert (path, name) == ("stanfordnlp/imdb", None)
        return {"unsupervised": [{"text": t, "label": -1} for t in REVIEWS], "train": [], "test": []}
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    root = tmp_path / "data"
    assert documents.load_wikitext_train(root) == TINY_WIKI["train"]
    stored = gzip.open(root / "wikitext-2" / "wiki.valid.tokens.gz", "rt", encoding="utf-8", newline="").read()
    assert stored == TINY_WIKI["valid"]
    assert documents.load_imdb_unsup(root, 3) == [r.replace("<br />", " ") for r in REVIEWS[:3]]
    with gzip.open(root / "imdb" / "unsup.csv.gz", "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["text", "label", "id", "rating"] and rows[1] == [REVIEWS[0], "-1", "0", "0"]
    assert len(rows) == len(REVIEWS) + 1
    _, corpus, _ = data.prepare(root, tmp_path / "run", imdb_unsup=5, vocab_size=200, log=lambda *a: None)
    assert len(corpus) == 1 + 5  # one WikiText article and five reviews
    assert calls == [("Salesforce/wikitext", "wikitext-2-v1"), ("stanfordnlp/imdb", None)]  # local from then on


def test_missing_data_without_network_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(UserError, match=r"'imdb' not found in .*imdb \(expected unsup.csv.gz\).*Couldn't reach"):
        documents.load_imdb_unsup(tmp_path, 10)
    code, err = cli(pretrain.main, ["--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, r"data set 'wikitext-2' not found in .*Couldn't reach")


# ----------------------------------------------------------------------------- pretrain.py end to end

def test_tiny_pretraining_learns_and_writes_the_checkpoint_contract(corpus_file, tmp_path):
    out = tmp_path / "run"
    pretrain.main(pretrain_args(corpus_file, out, "--epochs", "8", "--eval-interval", "10"))
    for name in ["best.pt", "last.pt", "tokenizer.json", "train.log", "result.json"]:
        assert (out / name).is_file(), name
    assert len(list(out.glob("corpus_*.npz"))) == 1
    assert (out / "result.png").read_bytes()[:8] == PNG_MAGIC
    h = history(out)
    losses = [v for _, v in h["train_loss"]]
    assert np.mean(losses[-5:]) < losses[0] - 1.0  # from about ln(vocab): it learns
    r = json.loads((out / "result.json").read_text())
    assert r["stage"] == STAGE and r["headline_metric"] == "val_mlm_loss" and r["split"] == "val"
    assert r["metrics"]["val_mlm_loss"] == pytest.approx(min(v for _, v in h["val_mlm_loss"]), abs=1e-3)
    assert 0 < r["metrics"]["val_mlm_acc"] <= 1 and r["tokens_per_second"] > 0 and len(r["fill_in"]) == 3
    assert "val MLM loss" in (out / "train.log").read_text() and "the movie was [MASK] . ->" in (out / "train.log").read_text()
    # the contract finetune.py reads
    for name, with_optimizer in (("best.pt", False), ("last.pt", True)):
        ckpt = load_checkpoint(out / name, stage=STAGE)
        assert ckpt["kind"] == "masked_lm" and ckpt["tokenizer"] == "tokenizer.json"
        assert {"config", "model", "args", "state"} <= set(ckpt) and ("optimizer" in ckpt) == with_optimizer
        model = BertPretrain(BertConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])  # strict
        tok = WordPieceTokenizer.load(out / ckpt["tokenizer"])
        assert len(tok) == ckpt["config"]["vocab_size"] and ckpt["config"]["max_position"] == 32


def test_nsp_run_reports_nsp_accuracy(corpus_file, tmp_path):
    out = tmp_path / "run"
    pretrain.main(pretrain_args(corpus_file, out, "--nsp", "--epochs", "2"))
    r = json.loads((out / "result.json").read_text())
    assert {"val_mlm_loss", "val_nsp_loss", "val_nsp_acc"} <= set(r["metrics"])
    assert len(history(out)["val_nsp_acc"]) == len(history(out)["val_mlm_loss"]) > 0


def test_a_mixed_sop_run_reports_sop_accuracy_and_names_its_folder(corpus_file, tmp_path):
    out = tmp_path / "run"
    pretrain.main(pretrain_args(corpus_file, out, "--sop", "--pair-share", "0.5", "--epochs", "2"))
    r = json.loads((out / "result.json").read_text())
    assert {"val_mlm_loss", "val_sop_loss", "val_sop_acc"} <= set(r["metrics"]) and "val_nsp_acc" not in r["metrics"]
    assert len(history(out)["val_sop_acc"]) == len(history(out)["val_mlm_loss"]) > 0
    assert "packed text with 50 % sentence pairs, MLM + SOP" in (out / "train.log").read_text()
    names = {tuple(flags): pretrain.run_name(pretrain.parse_args(flags)) for flags in
             [[], ["--nsp"], ["--sop"], ["--sop", "--pair-share", "0.5"], ["--nsp", "--pair-share", "0.25"]]}
    assert list(names.values()) == ["pretrain", "pretrain_nsp", "pretrain_sop", "pretrain_sop_mix50",
                                    "pretrain_nsp_mix25"]


@pytest.mark.parametrize("nsp", [[], ["--nsp"], ["--sop", "--pair-share", "0.5"]], ids=["packed", "nsp", "sop-mix"])
def test_resume_is_exact(corpus_file, tmp_path, nsp):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--dropout", "0.1", "--accum-steps", "2", "--eval-interval", "4", *nsp]
    pretrain.main(pretrain_args(corpus_file, a, *args))
    pretrain.main(pretrain_args(corpus_file, b, *args, "--max-steps", "3"))
    pretrain.main(pretrain_args(corpus_file, b, *args, "--resume"))
    ckpt_a, ckpt_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ckpt_b["state"]["history"] == ckpt_a["state"]["history"]
    for name in ckpt_a["model"]:
        assert torch.equal(ckpt_a["model"][name], ckpt_b["model"][name]), name


@pytest.mark.skipif(not common.cpu_has_native_bf16(), reason="this CPU has no bf16 instructions (AVX512-BF16 or AMX)")
def test_cpu_bf16_is_on_close_to_fp32_and_resumes_exactly(corpus_file, tmp_path):
    """--cpu-bf16 rounds the matrix products to bf16: the losses differ from fp32's (so it is on), by rounding only
    (the same model learns); the flag is kept in the checkpoint, so a resume without it continues in bf16, exactly."""
    fp32, bf16, resumed = tmp_path / "fp32", tmp_path / "bf16", tmp_path / "resumed"
    args = ["--epochs", "1", "--max-steps", "4", "--eval-interval", "2"]
    pretrain.main(pretrain_args(corpus_file, fp32, *args))
    pretrain.main(pretrain_args(corpus_file, bf16, *args, "--cpu-bf16"))
    losses_fp32 = [v for _, v in history(fp32)["train_loss"]]
    losses_bf16 = [v for _, v in history(bf16)["train_loss"]]
    assert losses_bf16 != losses_fp32 and losses_bf16 == pytest.approx(losses_fp32, abs=0.05)
    pretrain.main(pretrain_args(corpus_file, resumed, "--epochs", "1", "--max-steps", "2", "--eval-interval", "2",
                                "--cpu-bf16"))
    pretrain.main(pretrain_args(corpus_file, resumed, *args, "--resume"))
    assert history(resumed) == history(bf16)


def test_cpu_bf16_without_bf16_instructions_is_one_line(corpus_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)  # where autocast_for looks it up
    code, err = cli(pretrain.main, pretrain_args(corpus_file, tmp_path / "r", "--max-steps", "1", "--cpu-bf16"), capsys)
    assert_one_line_error(code, err, r"--cpu-bf16: this CPU has no bf16 instructions")


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues(corpus_file, tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(corpus_file, out, "--epochs", "100000", "--eval-interval", "3")
    proc = signal_mid_training(f"{STAGE}/pretrain.py", args, out, "step 3:", signal.SIGTERM, tmp_path / "stderr")
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130 and "Traceback" not in err and "stopped by SIGTERM" in err, err[-3000:]
    step = load_checkpoint(out / "last.pt", stage=STAGE)["state"]["step"]
    pretrain.main(pretrain_args(corpus_file, out, "--resume", "--max-steps", str(step + 2)))
    assert load_checkpoint(out / "last.pt")["state"]["step"] == step + 2


def test_schedule_warms_up_then_decays_linearly(corpus_file, tmp_path):
    args = pretrain.parse_args(pretrain_args(corpus_file, tmp_path, "--warmup-steps", "10", "--lr", "1e-3"))
    assert pretrain.lr_at(0, 0, args, 110) == pytest.approx(1e-4)
    assert pretrain.lr_at(9, 0, args, 110) == pytest.approx(1e-3)
    assert pretrain.lr_at(60, 0, args, 110) == pytest.approx(0.5e-3)
    assert pretrain.lr_at(110, 0, args, 110) == 0.0
    args.time_budget = 1
    assert pretrain.lr_at(10, 30, args, 10 ** 9) == pytest.approx(0.5e-3)  # half the budget used: half the decay


def test_bad_input_gives_one_line(corpus_file, tmp_path, capsys):
    for extra, pattern in [(["--batch-size", "0"], r"--batch-size: must be > 0"),
                           (["--lr", "-1"], r"--lr: must be a finite number > 0"),
                           (["--mask-prob", "1.5"], r"--mask-prob: must be in \[0, 1\)"),
                           (["--mask-prob", "0"], r"--mask-prob must be > 0"),
                           (["--hidden", "30", "--heads", "4"], r"must be divisible by --heads"),
                           (["--batch-size", "6", "--accum-steps", "4"], r"multiple of --accum-steps"),
                           (["--batch-size", "512"], r"fewer than --batch-size 512"),
                           (["--resume"], r"checkpoint not found"),
                           (["--tokenizer", str(tmp_path / "none.json")], r"tokenizer file not found"),
                           (["--pair-share", "0.5"], r"--pair-share needs a sentence-pair task"),
                           (["--sop", "--pair-share", "0"], r"--pair-share 0 leaves no pairs"),
                           (["--nsp", "--sop"], r"argument --sop: not allowed with argument --nsp")]:
        code, err = cli(pretrain.main, pretrain_args(corpus_file, tmp_path / "r", *extra), capsys)
        assert_one_line_error(code, err, pattern)
    code, err = cli(pretrain.main, pretrain_args(tmp_path / "missing.txt", tmp_path / "r2"), capsys)
    assert_one_line_error(code, err, r"corpus file not found: .*missing.txt")
    few = tmp_path / "few.txt"
    few.write_text("one doc.\n\ntwo docs.\n")
    code, err = cli(pretrain.main, pretrain_args(few, tmp_path / "r3"), capsys)
    assert_one_line_error(code, err, r"2 document\(s\); pre-training needs at least 4")


@pytest.mark.slow
def test_help_and_module_form():
    for cmd in ([sys.executable, f"{STAGE}/pretrain.py", "--help"], [sys.executable, "-m", f"{STAGE}.pretrain", "--help"]):
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "--mask-prob" in proc.stdout and "--nsp" in proc.stdout, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_two_processes_match_one(corpus_file, tmp_path):
    """Distributed data parallel: each process takes its half of the same global batch (the same masks), and the loss
    is normalised by the masked tokens of the whole batch, so the losses equal a one-process run's (dropout off)."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--epochs", "2", "--max-steps", "5", "--eval-interval", "5", "--dropout", "0", "--device", "cpu"]
    pretrain.main(pretrain_args(corpus_file, one, *args))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       f"{STAGE}/pretrain.py", *pretrain_args(corpus_file, two, *args)],
                      cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses_one = [v for _, v in history(one)["train_loss"]]
    losses_two = [v for _, v in history(two)["train_loss"]]
    assert len(losses_one) == 5 and losses_two == pytest.approx(losses_one, abs=1e-4)
    assert [v for _, v in history(two)["val_mlm_loss"]] == pytest.approx(
        [v for _, v in history(one)["val_mlm_loss"]], abs=1e-4)


@pytest.mark.slow
@pytest.mark.real_data("wikitext-2", "imdb")
def test_quick_run_on_real_data(real_data_dir, tmp_path):
    """--quick on WikiText-2 + IMDb unsup: runs end to end and ends well below the loss of a uniform guess."""
    proc = run_script("pretrain", "--quick", "--imdb-unsup", "100", "--out-dir", tmp_path / "run",
                      "--result", tmp_path / "result.json", data_dir=real_data_dir, timeout=600, stage=STAGE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["quick"] is True and r["dataset"] == "wikitext2+imdb_unsup"
    assert r["metrics"]["val_mlm_loss"] < math.log(r["corpus"]["vocab_size"]) - 0.5  # uniform guess: ln(vocab)
