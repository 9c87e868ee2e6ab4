"""Stage 3 data: reversible tokens, vocabularies, batches, readers of the offline formats, and the download path
(patched, since nothing can be downloaded here)."""
from __future__ import annotations

import gzip
import io
import zipfile

import pytest

from conftest import MULTI30K_SIZES, tiny_parallel, write_tiny_multi30k
from scripts.common import UserError
from stage3_attention_seq2seq import data
from stage3_attention_seq2seq.data import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocab, batch_order, detokenize, load_pairs,
                                           make_batch, normalize, tokenize)

SENTENCES = [
    "Two young, White males are outside near many bushes.",
    "Un homme en t-shirt orange regarde l'appareil photo\u202f!",
    "Zwei Männer stehen am Herd und bereiten Essen zu.",
    "He said: \"it's 3.5 km (about 2 miles)\" -- ok?!",
    "  spaces   everywhere\tand\ttabs  ",
    "Qu'est-ce que c'est\u00a0? «\u00a0Bonjour\u00a0»",
]


@pytest.mark.parametrize("text", SENTENCES)
def test_detokenize_undoes_tokenize(text):
    assert detokenize(tokenize(text)) == normalize(text)
    assert normalize(text) == " ".join(text.split())


def test_tokens_mark_spaces_and_split_punctuation():
    assert tokenize("Un homme, assis.") == ["▁Un", "▁homme", ",", "▁assis", "."]
    assert tokenize("l'été !") == ["▁l", "'", "été", "▁!"]
    assert tokenize("") == []


@pytest.mark.real_data("multi30k")
def test_real_multi30k_round_trips(real_data_dir):
    for lang in ("en", "de", "fr"):
        for src, _ in load_pairs("multi30k", real_data_dir, "test2016", lang, "en" if lang != "en" else "fr"):
            assert detokenize(tokenize(src)) == normalize(src)
            assert normalize(src).split() == src.split()  # normalizing changes whitespace only


def test_vocab_specials_frequency_and_unk(tmp_path):
    v = Vocab.build(["a b b c", "b c"], "en", min_freq=2)
    assert v.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert v.itos[4:] == ["▁b", "▁c"]  # "a" (once) is dropped, the rest by frequency
    assert v.encode("b a c") == [4, UNK_ID, 5, EOS_ID]
    assert v.encode("b", add_eos=False) == [4]
    assert v.unknown("b a zz c") == ["a", "zz"]
    assert v.decode([4, UNK_ID, 5, EOS_ID, 4]) == "b <unk> c"  # stops at <eos>
    v.save(tmp_path / "v.json")
    w = Vocab.load(tmp_path / "v.json")
    assert w.itos == v.itos and w.lang == "en" and w.fingerprint() == v.fingerprint()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read vocabulary"):
        Vocab.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="vocabulary not found"):
        Vocab.load(tmp_path / "missing.json")


def test_make_batch_shifts_targets():
    b = make_batch([[5, 6, EOS_ID], [7, EOS_ID]], [[8, 9, EOS_ID], [10, EOS_ID]])
    assert b["src"].tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert b["src_len"].tolist() == [3, 2]
    assert b["tgt_in"].tolist() == [[BOS_ID, 8, 9], [BOS_ID, 10, PAD_ID]]
    assert b["tgt_out"].tolist() == [[8, 9, EOS_ID], [10, EOS_ID, PAD_ID]]


def test_batch_order_covers_everything_once_and_repeats_with_the_seed():
    lengths = [(i * 7) % 23 + 1 for i in range(1000)]
    a = batch_order(lengths, 32, seed=3)
    assert sorted(i for b in a for i in b) == list(range(1000))
    assert a == batch_order(lengths, 32, seed=3) and a != batch_order(lengths, 32, seed=4)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 3  # batches hold sentences of similar length
    assert batch_order(lengths, 32, seed=0, shuffle=False) == batch_order(lengths, 32, seed=9, shuffle=False)


def test_multi30k_reader(tiny_mt_data_dir):
    pairs = load_pairs("multi30k", tiny_mt_data_dir, "train", "en", "fr")
    triples = tiny_parallel(MULTI30K_SIZES["train"], "train")
    assert pairs == [(en, fr) for en, _, fr in triples]
    assert load_pairs("multi30k", tiny_mt_data_dir, "test2017", "de", "en")[0] == \
        tiny_parallel(MULTI30K_SIZES["test_2017_flickr"], "test_2017_flickr")[0][1::-1]
    for split, n in [("val", 30), ("test2016", 30), ("test2017", 20)]:
        assert len(load_pairs("multi30k", tiny_mt_data_dir, split, "en", "de")) == n


def test_tatoeba_reader_splits_by_english_sentence(tiny_mt_data_dir):
    splits = {s: load_pairs("tatoeba", tiny_mt_data_dir, s, "en", "fr") for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 600
    english = {s: {en for en, _ in v} for s, v in splits.items()}
    assert not (english["train"] & english["val"]) and not (english["train"] & english["test"])
    assert load_pairs("tatoeba", tiny_mt_data_dir, "val", "fr", "en") == [(f, e) for e, f in splits["val"]]


def test_bad_requests(tiny_mt_data_dir):
    with pytest.raises(UserError, match="two different languages"):
        load_pairs("multi30k", tiny_mt_data_dir, "train", "en", "en")
    with pytest.raises(UserError, match="two different languages"):
        load_pairs("tatoeba", tiny_mt_data_dir, "train", "en", "de")
    with pytest.raises(UserError, match="no 'test' split"):
        load_pairs("multi30k", tiny_mt_data_dir, "test", "en", "fr")
    with pytest.raises(UserError, match="unknown dataset"):
        load_pairs("wmt", tiny_mt_data_dir, "train", "en", "fr")
    # a truncated gzip file, and files that are not line-aligned
    path = tiny_mt_data_dir / "multi30k" / "val.fr.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match="cannot read .*val.fr.gz"):
        load_pairs("multi30k", tiny_mt_data_dir, "val", "en", "fr")
    with gzip.open(tiny_mt_data_dir / "multi30k" / "val.de.gz", "wt", encoding="utf-8") as f:
        f.write("nur eine Zeile\n")
    with pytest.raises(UserError, match="different numbers of lines"):
        load_pairs("multi30k", tiny_mt_data_dir, "val", "en", "de")


def test_multi30k_download_when_missing(tmp_path, monkeypatch):
    """The download fetches every raw .gz file of the official repo and stores it unchanged."""
    source = write_tiny_multi30k(tmp_path / "source") / "multi30k"
    urls = []

    def fake_fetch(url):
        urls.append(url)
        assert url.startswith("https://raw.githubusercontent.com/multi30k/dataset/")
        return (source / url.rsplit("/", 1)[1]).read_bytes()
    monkeypatch.setattr(data, "fetch", fake_fetch)
    target = tmp_path / "empty"
    pairs = load_pairs("multi30k", target, "test2016", "en", "fr")
    assert len(urls) == 12
    assert pairs == load_pairs("multi30k", tmp_path / "source", "test2016", "en", "fr")
    assert sorted(p.name for p in (target / "multi30k").iterdir()) == sorted(p.name for p in source.iterdir())
    assert not list((target / "multi30k").glob("*.part"))


def test_tatoeba_download_when_missing(tmp_path, monkeypatch):
    """The d2l zip holds fra-eng/fra.txt (and macOS metadata); it is stored as fra.txt.gz."""
    lines = "Go.\tVa !\nHi.\tSalut !\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__MACOSX/fra-eng/._fra.txt", b"junk")
        z.writestr("fra-eng/fra.txt", lines)
    monkeypatch.setattr(data, "fetch", lambda url: buf.getvalue())
    pairs = [p for s in ("train", "val", "test") for p in load_pairs("tatoeba", tmp_path, s, "en", "fr")]
    assert sorted(pairs) == [("Go.", "Va !"), ("Hi.", "Salut !")]
    assert gzip.decompress((tmp_path / "tatoeba_eng_fra" / "fra.txt.gz").read_bytes()).decode() == lines


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    def offline(url):
        raise OSError("network is unreachable")
    monkeypatch.setattr(data, "fetch", offline)
    with pytest.raises(UserError, match=r"not found in .*multi30k.*download failed \(network is unreachable\)"):
        load_pairs("multi30k", tmp_path, "train", "en", "fr")
    assert not (tmp_path / "multi30k").exists() or not list((tmp_path / "multi30k").iterdir())


@pytest.mark.real_data("multi30k")
def test_real_multi30k_counts(real_data_dir):
    sizes = {"train": 29_000, "val": 1_014, "test2016": 1_000, "test2017": 1_000}
    for split, n in sizes.items():
        pairs = load_pairs("multi30k", real_data_dir, split, "en", "fr")
        assert len(pairs) == n and all(s and t for s, t in pairs)
