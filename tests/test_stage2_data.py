"""Stage 2 data: the two corpora in their offline formats, the download path, vocabularies, streams and windows."""
from __future__ import annotations

import gzip
import io
import json

import pytest
import torch

from conftest import TINY_PLAY, TINY_WIKI
from scripts.common import UserError
from stage2_rnn_lstm import data
from stage2_rnn_lstm.data import EOS, Vocab, batchify, get_window, load_text, tokenize


def test_tiny_shakespeare_split_is_nanogpts(tiny_lm_data_dir):
    """First 90 % of the characters train, the rest val; together they are the whole file."""
    train = load_text("tiny_shakespeare", tiny_lm_data_dir, "train")
    val = load_text("tiny_shakespeare", tiny_lm_data_dir, "val")
    assert len(train) == int(len(TINY_PLAY) * 0.9) and train + val == TINY_PLAY


def test_tiny_shakespeare_has_no_test_split(tiny_lm_data_dir):
    with pytest.raises(UserError, match="no 'test' split"):
        load_text("tiny_shakespeare", tiny_lm_data_dir, "test")


def test_wikitext_splits_and_tokens(tiny_lm_data_dir):
    """Each line's words, then <eos>; blank lines give a lone <eos>, as in PyTorch's word_language_model."""
    text = load_text("wikitext2", tiny_lm_data_dir, "val")
    assert text == TINY_WIKI["valid"]
    tokens = tokenize(text, "word")
    assert tokens[:6] == [EOS, "=", "Article", "valid", "=", EOS]
    assert tokens.count(EOS) == text.count("\n")


def test_char_vocab_sorted_round_trip(tmp_path):
    v = Vocab.build("hello world\n", "char")
    assert v.itos == sorted(set("hello world\n"))
    assert v.decode(v.encode("low\n")) == "low\n"
    v.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text())["vocab_type"] == "char"
    assert Vocab.load(tmp_path / "vocab.json").itos == v.itos


def test_char_vocab_unknown_is_an_error():
    v = Vocab.build("abc", "char")
    assert v.unknown("abXcY") == ["X", "Y"]
    with pytest.raises(UserError, match=r"2 char\(s\) not in the vocabulary: 'X', 'Y'"):
        v.encode("abXcY")


def test_word_vocab_maps_unknown_to_unk():
    v = Vocab.build(" the <unk> king \n the king \n", "word")
    assert v.itos == ["the", "king", EOS, "<unk>"]  # most frequent first; ties in order of first appearance
    assert v.encode("the queen") == [0, 3, 2]
    assert v.decode(v.encode("the king\nthe king")) == "the king\nthe king\n"


def test_vocab_load_errors(tmp_path):
    with pytest.raises(UserError, match="vocabulary not found"):
        Vocab.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read vocabulary"):
        Vocab.load(tmp_path / "bad.json")


def test_batchify_makes_contiguous_streams():
    """26 tokens into 4 streams of 6: each row is a contiguous piece, the 2 left over are dropped."""
    streams = batchify(torch.arange(26), 4)
    assert streams.tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17],
                                [18, 19, 20, 21, 22, 23]]
    with pytest.raises(UserError, match="too few"):
        batchify(torch.arange(5), 4)


def test_get_window_targets_are_inputs_shifted():
    streams = batchify(torch.arange(26), 2)  # (2, 13)
    x, y = get_window(streams, 0, 5)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y, x + 1)
    x, y = get_window(streams, 10, 5)        # the last window is shorter: 13 - 1 - 10 = 2 tokens
    assert x.shape == (2, 2) and y[0].tolist() == [11, 12]


def test_missing_data_offline_is_one_line_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    with pytest.raises(UserError, match=r"not found in .*tiny_shakespeare \(expected input.txt.gz\).*unreachable"):
        load_text("tiny_shakespeare", tmp_path, "train")


def test_corrupt_file_is_user_error(tiny_lm_data_dir):
    (tiny_lm_data_dir / "tiny_shakespeare" / "input.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read .*input.txt.gz"):
        load_text("tiny_shakespeare", tiny_lm_data_dir, "train")


# ----------------------------------------------------------------------------- the download path (patched)

def test_download_tiny_shakespeare_writes_offline_format(tmp_path, monkeypatch, capsys):
    """The original char-rnn file, fetched by URL, lands as input.txt.gz; later reads use the local copy."""
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(TINY_PLAY.encode("utf-8"))
    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    assert load_text("tiny_shakespeare", tmp_path, "val") == TINY_PLAY[int(len(TINY_PLAY) * 0.9):]
    assert calls == [data.DATASETS["tiny_shakespeare"]["url"]]
    assert gzip.open(tmp_path / "tiny_shakespeare" / "input.txt.gz", "rt").read() == TINY_PLAY
    load_text("tiny_shakespeare", tmp_path, "train")
    assert len(calls) == 1  # no second download
    assert "downloading" in capsys.readouterr().err


def test_download_wikitext_writes_offline_format(tmp_path, monkeypatch):
    """Hub rows are lines with their newline; blank lines are "" on the hub and " \\n" in the files."""
    import datasets

    def hub_rows(text):
        return [{"text": "" if line == " \n" else line} for line in text.splitlines(keepends=True)]
    fake = {"train": hub_rows(TINY_WIKI["train"]), "validation": hub_rows(TINY_WIKI["valid"]),
            "test": hub_rows(TINY_WIKI["test"])}
    seen = []

    def fake_load_dataset(path, name=None, **kwargs):
        seen.append((path, name))
        return fake
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_text("wikitext2", tmp_path, "test") == TINY_WIKI["test"]
    assert seen == [("Salesforce/wikitext", "wikitext-2-v1")]
    for split, file in [("train", "wiki.train.tokens.gz"), ("valid", "wiki.valid.tokens.gz")]:
        assert gzip.open(tmp_path / "wikitext-2" / file, "rt", newline="").read() == TINY_WIKI[split]
