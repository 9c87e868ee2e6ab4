"""Stage 5 data: the readers on files in the offline formats, the downloads (patched to serve data shaped like the
real sources), the character tokenizer, SST-2 and its split and batches for fine-tuning (fine-tuning itself:
test_stage5_finetune.py)."""
from __future__ import annotations

import gzip
import io
import random
import urllib.request

import pytest

from conftest import TINY_PLAY, TINY_WIKI, write_tiny_data, write_tiny_lm_data
from scripts.common import UserError
from stage5_gpt import data


def test_tiny_shakespeare_split_is_nanogpts(tmp_path):
    root = write_tiny_lm_data(tmp_path)
    train_text, val_text = data.load_text("tiny_shakespeare", root, "train"), data.load_text("tiny_shakespeare", root, "val")
    cut = int(len(TINY_PLAY) * 0.9)
    assert train_text == TINY_PLAY[:cut] and val_text == TINY_PLAY[cut:]
    with pytest.raises(UserError, match="has no 'test' split"):
        data.load_text("tiny_shakespeare", root, "test")


def test_download_tiny_shakespeare_from_the_original_url(tmp_path, monkeypatch):
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(TINY_PLAY.encode("utf-8"))
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    text = data.load_text("tiny_shakespeare", tmp_path, "val")
    assert calls == [data.DATASETS["tiny_shakespeare"]["url"]]
    stored = gzip.open(tmp_path / "tiny_shakespeare" / "input.txt.gz", "rt", encoding="utf-8", newline="").read()
    assert stored == TINY_PLAY and text == TINY_PLAY[int(len(TINY_PLAY) * 0.9):]
    data.load_text("tiny_shakespeare", tmp_path, "train")
    assert len(calls) == 1  # the second read is local


def test_download_wikitext2_from_the_hub(tmp_path, monkeypatch):
    """The hub has one row per line, newline included; whitespace-only lines became ""."""
    import datasets

    def hub_rows(text):
        return [{"text": "" if not line.strip() else line} for line in text.splitlines(keepends=True)]

    def fake_load_dataset(path, name=None, **kwargs):
        assert (path, name) == ("Salesforce/wikitext", "wikitext-2-v1")
        return {"train": hub_rows(TINY_WIKI["train"]), "validation": hub_rows(TINY_WIKI["valid"]),
                "test": hub_rows(TINY_WIKI["test"])}
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert data.load_text("wikitext2", tmp_path, split) == TINY_WIKI[name]
    assert (tmp_path / "wikitext-2" / "wiki.valid.tokens.gz").is_file()


def test_missing_data_without_network_is_one_clear_error(tmp_path, monkeypatch):
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(UserError, match=r"not found in .*wikitext-2 \(expected .*\).*Couldn't reach"):
        data.load_text("wikitext2", tmp_path, "train")
    with pytest.raises(UserError, match=r"SST-2 not found in .*sst2.*Couldn't reach"):
        data.load_sst2(tmp_path, "train")


def test_sst2_reader_and_download(tmp_path, monkeypatch):
    root = write_tiny_data(tmp_path / "local")
    sentences, labels = data.load_sst2(root, "dev")
    assert len(sentences) == len(labels) == 60 and set(labels) == {0, 1}
    assert any(s.startswith('" ') for s in sentences)  # a bare quote does not swallow the next rows
    import datasets
    rows = {"train": [{"sentence": 'a " great film', "label": 1}, {"sentence": "dull", "label": 0}],
            "validation": [{"sentence": "loved it", "label": 1}]}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: rows)
    assert data.load_sst2(tmp_path / "dl", "train") == (['a " great film', "dull"], [1, 0])
    assert data.load_sst2(tmp_path / "dl", "dev") == (["loved it"], [1])


def test_char_tokenizer_round_trip_and_errors(tmp_path):
    tok = data.CharTokenizer.train("hello world\n")
    assert tok.decode(tok.encode("hello")) == "hello" and len(tok) == len(set("hello world\n"))
    assert tok.chars == sorted(tok.chars)
    with pytest.raises(UserError, match=r"character\(s\) not in the vocabulary: 'z'"):
        tok.encode("zoo")
    tok.save(tmp_path / "t.json")
    assert data.load_tokenizer(tmp_path / "t.json").chars == tok.chars
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read tokenizer"):
        data.load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(UserError, match="tokenizer file not found"):
        data.load_tokenizer(tmp_path / "none.json")


def test_sst2_length_batches_cover_every_sentence_once_with_little_padding():
    rng = random.Random(0)
    seqs = [[1] * rng.randint(1, 60) for _ in range(1000)]
    batches = data.length_batches(seqs, 16, random.Random(3), pool=10)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == data.length_batches(seqs, 16, random.Random(3), pool=10)  # same rng, same batches
    assert batches != data.length_batches(seqs, 16, random.Random(4), pool=10)
    padded = sum(len(b) * max(len(seqs[i]) for i in b) for b in batches)
    shuffled = list(range(1000))
    random.Random(3).shuffle(shuffled)
    unsorted = sum(len(b) * max(len(seqs[i]) for i in b) for b in (shuffled[i:i + 16] for i in range(0, 1000, 16)))
    assert padded < 0.75 * unsorted


def test_sst2_validation_is_whole_sentences_not_their_phrases():
    """SST-2 train holds each sentence's phrases: a held-out sentence's phrases must leave train."""
    texts = ["a great film .", "a great film", "great film", "great", "a dull movie .", "dull movie", "dull",
             "movie", "the end .", "the end", "film", "a dull movie ."]   # the last: a duplicate, never whole
    for seed in range(5):
        train_rows, val_rows = data.sentence_split(texts, 2, random.Random(seed))
        assert sorted(val_rows) == [0, 8]                    # the only rows no other row contains
        assert sorted(train_rows) == [4, 5, 6, 7, 11]        # "a great film", "great film", "great", "film",
        #                                                      "the end" are inside a held-out sentence
    with pytest.raises(UserError, match="only 2"):
        data.sentence_split(texts, 3, random.Random(0))
