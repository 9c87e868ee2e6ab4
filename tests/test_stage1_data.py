"""Stage 1 data: tokenizer, n-grams, vocabulary, bags, splits and the three file readers."""
from __future__ import annotations

import csv
import gzip
import json
import logging

import pytest
import torch

from conftest import N_TEST, N_TRAIN, tiny_rows
from scripts.common import UserError
from stage1_mlp.data import (Bags, Vocab, dataset_info, load_split, ngrams, phrase_groups, subsample, tokenize,
                             train_val_split)


# ----------------------------------------------------------------------------- tokenize

def test_tokenize_lower_cases():
    """Upper and mixed case become lower case."""
    assert tokenize("GREAT Film") == ["great", "film"]


def test_tokenize_removes_html_breaks():
    """IMDb's <br /> tags (and <br>, <BR/>) split words and leave no tokens behind."""
    assert tokenize("Great film!<br /><br />10/10") == ["great", "film", "!", "10", "/", "10"]
    assert tokenize("one<br>two<BR/>three") == ["one", "two", "three"]


def test_tokenize_punctuation_marks_are_single_tokens():
    """Each punctuation mark is its own token, repeated marks stay separate."""
    assert tokenize("Wow!! Really, (truly).") == ["wow", "!", "!", "really", ",", "(", "truly", ")", "."]


def test_tokenize_keeps_inner_apostrophes():
    """Apostrophes inside a word stay in it; leading or trailing ones are punctuation."""
    assert tokenize("I don't think it's bad") == ["i", "don't", "think", "it's", "bad"]
    assert tokenize("the actors' 'work'") == ["the", "actors", "'", "'", "work", "'"]


def test_tokenize_unicode_letters():
    """Accented and non-Latin letters are word characters and are lower-cased too."""
    assert tokenize("Café NAÏVE Straße Ñandú") == ["café", "naïve", "straße", "ñandú"]
    assert tokenize("Это хорошо!") == ["это", "хорошо", "!"]


# ----------------------------------------------------------------------------- ngrams

def test_ngrams_unigrams_then_bigrams_in_order():
    """Default n=2: the tokens first, then each adjacent pair in text order."""
    assert ngrams(["a", "b", "c"]) == ["a", "b", "c", "a b", "b c"]


def test_ngrams_n1_and_n3():
    """n=1 gives the tokens only; n=3 adds the trigrams after the bigrams."""
    assert ngrams(["a", "b", "c"], 1) == ["a", "b", "c"]
    assert ngrams(["a", "b", "c", "d"], 3) == ["a", "b", "c", "d", "a b", "b c", "c d", "a b c", "b c d"]


def test_ngrams_short_inputs():
    """Too few tokens for a bigram gives just the tokens; no tokens gives nothing."""
    assert ngrams(["a"]) == ["a"]
    assert ngrams([]) == []


# ----------------------------------------------------------------------------- Vocab

def test_vocab_unk_is_id_zero():
    """<unk> is the first entry, with id 0."""
    v = Vocab.build(["good film", "good movie"], min_freq=1)
    assert v.itos[0] == "<unk>" and v.stoi["<unk>"] == 0


def test_vocab_min_freq_counts_documents_not_occurrences():
    """An n-gram repeated inside one text counts once: it needs min_freq different texts."""
    v = Vocab.build(["bad bad bad bad", "good film", "good movie"], min_freq=2)
    assert "good" in v.stoi
    assert "bad" not in v.stoi and "bad bad" not in v.stoi


def test_vocab_sorted_by_frequency_then_alphabet():
    """Entries after <unk> are ordered by document frequency, ties alphabetically."""
    v = Vocab.build(["c a", "c b", "b d a", "a"], ngram=1, min_freq=1)  # a: 3 texts, b and c: 2, d: 1
    assert v.itos == ["<unk>", "a", "b", "c", "d"]


def test_vocab_max_size_cuts_ties_alphabetically():
    """The cut falls inside a tie the same way in every process: sorted first, then cut."""
    v = Vocab.build(["c", "b", "a"], ngram=1, min_freq=1, max_size=2)
    assert v.itos == ["<unk>", "a", "b"]


def test_encode_unknown_unigram_maps_to_unk():
    """A word the vocabulary never saw becomes id 0."""
    v = Vocab.build(["great film", "great film"], min_freq=2)
    assert v.encode("great zzzz") == [v.stoi["great"], 0]


def test_encode_drops_unknown_bigrams():
    """A bigram of known words that was not in the vocabulary is dropped, not mapped to <unk>."""
    v = Vocab.build(["great film", "great film"], min_freq=2)
    assert "great film" in v.stoi and "film great" not in v.stoi
    assert v.encode("film great") == [v.stoi["film"], v.stoi["great"]]


def test_encode_distinct_ngrams_in_first_appearance_order():
    """Each n-gram id appears once per text, in the order it first occurs; <unk> too."""
    v = Vocab.build(["great film", "great film", "film great"], ngram=2, min_freq=1)
    g, f = v.stoi["great"], v.stoi["film"]
    assert v.encode("film great great film xx yy") == [f, g, 0, v.stoi["film great"], v.stoi["great film"]]


def test_encode_empty_text_is_empty_bag():
    """An empty or all-whitespace text has no n-grams at all (an empty bag)."""
    v = Vocab.build(["a b", "a b"])
    assert v.encode("") == [] and v.encode("   ") == []


def test_vocab_save_load_round_trip(tmp_path):
    """A saved and reloaded vocabulary is the same: entries, n-gram length, encodings; non-ASCII kept as is."""
    v = Vocab.build(["café crème great", "café crème awful", "great film"], ngram=2, min_freq=1)
    v.save(tmp_path / "vocab.json")
    assert "café crème" in (tmp_path / "vocab.json").read_text(encoding="utf-8")
    w = Vocab.load(tmp_path / "vocab.json")
    assert w.itos == v.itos and w.ngram == v.ngram and w.stoi == v.stoi
    assert w.encode("great café crème zz") == v.encode("great café crème zz")
    assert w.fingerprint() == v.fingerprint()


def test_vocab_fingerprint_changes_with_vocab():
    """Different entries (or the same entries in another order) give another fingerprint."""
    a = Vocab(["<unk>", "good", "bad"], 2)
    assert a.fingerprint() == Vocab(["<unk>", "good", "bad"], 2).fingerprint()
    assert a.fingerprint() != Vocab(["<unk>", "good", "bad", "film"], 2).fingerprint()
    assert a.fingerprint() != Vocab(["<unk>", "bad", "good"], 2).fingerprint()


@pytest.mark.parametrize("content", ["{not json", '{"ngram": 2}', "[1, 2, 3]", ""])
def test_vocab_load_corrupt_json_is_user_error(tmp_path, content):
    """Broken JSON, or JSON without the expected keys, is a UserError naming the file."""
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match="vocab.json"):
        Vocab.load(path)


def test_vocab_load_missing_file_is_user_error(tmp_path):
    """A missing vocabulary file is a UserError, not a FileNotFoundError traceback."""
    with pytest.raises(UserError, match="not found"):
        Vocab.load(tmp_path / "nope.json")


def test_vocab_built_on_train_split_only(tiny_data_dir):
    """prepare_data builds the vocabulary on the training part only: words only in val or test rows get no entry."""
    from stage1_mlp.train import parse_args, prepare_data

    args = parse_args(["--dataset", "imdb", "--data-dir", str(tiny_data_dir), "--seed", "3"])
    # rewrite the tiny IMDb files with marker words in validation rows and in test rows only
    _, val_idx = train_val_split(N_TRAIN, args.val_fraction, args.seed)
    val_rows = set(val_idx.tolist())
    train_rows = [(t + (" valonlyword" if i in val_rows else " trainword"), y)
                  for i, (t, y) in enumerate(tiny_rows("imdb", "train"))]
    test_rows = [(t + " testonlyword", y) for t, y in tiny_rows("imdb", "test")]
    for file, rows in [("train.csv.gz", train_rows), ("test.csv.gz", test_rows)]:
        with gzip.open(tiny_data_dir / "imdb" / file, "wt", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label", "id", "rating"])
            w.writerows([t, y, i, 1] for i, (t, y) in enumerate(rows))

    bags, vocab, _ = prepare_data(args, tiny_data_dir, None, logging.getLogger("test"))
    assert "trainword" in vocab.stoi
    assert "valonlyword" not in vocab.stoi and "testonlyword" not in vocab.stoi
    assert (len(bags["train"]), len(bags["val"]), len(bags["test"])) == (N_TRAIN - len(val_idx), len(val_idx), N_TEST)


# ----------------------------------------------------------------------------- Bags

def test_bags_batch_matches_manual_concatenation():
    """batch(index) gives the concatenated ids of the chosen texts, their start offsets and labels, in index order."""
    texts = ["great film", "awful film awful", "", "great great plot", "plot"]
    labels = [1, 0, 1, 1, 0]
    v = Vocab.build(texts, min_freq=1)
    bags = Bags.from_texts(texts, labels, v)
    index = torch.tensor([3, 2, 0, 4])
    ids, offsets, y = bags.batch(index)
    encoded = [v.encode(texts[i]) for i in index.tolist()]
    assert ids.tolist() == [i for e in encoded for i in e]
    assert offsets.tolist() == [0, len(encoded[0]), len(encoded[0]), len(encoded[0]) + len(encoded[2])]
    assert y.tolist() == [labels[i] for i in index.tolist()]
    assert ids.dtype == offsets.dtype == y.dtype == torch.long


def test_bags_from_texts_layout():
    """starts has N+1 entries and the ids between starts[i] and starts[i+1] are encode(text i)."""
    texts = ["good", "bad movie", "good bad movie"]
    v = Vocab.build(texts, min_freq=1)
    bags = Bags.from_texts(texts, [1, 0, 0], v)
    assert len(bags) == 3 and bags.starts.tolist()[0] == 0 and len(bags.starts) == 4
    for i, t in enumerate(texts):
        assert bags.ids[bags.starts[i]:bags.starts[i + 1]].tolist() == v.encode(t)


# ----------------------------------------------------------------------------- splits

def test_train_val_split_disjoint_and_complete():
    """Train and validation indices do not overlap and together cover 0..n-1; val has round(n * fraction)."""
    train, val = train_val_split(103, 0.1, seed=5)
    assert len(val) == 10 and len(train) == 93
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(103))


def test_train_val_split_deterministic_per_seed():
    """The same seed gives the same split; another seed gives another split."""
    a_train, a_val = train_val_split(200, 0.2, seed=1)
    b_train, b_val = train_val_split(200, 0.2, seed=1)
    c_train, c_val = train_val_split(200, 0.2, seed=2)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert not torch.equal(a_val, c_val)


def test_train_val_split_keeps_at_least_one_val_example():
    """Even a tiny data set gets one validation example."""
    train, val = train_val_split(4, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 3


# SST-2 style rows: two sentences, each followed by some of its own phrases (the real file mixes them freely)
PHRASE_ROWS = ["the acting is superb .", "is superb", "superb", "a dull , lifeless film", "lifeless film",
               "dull", "the acting", "a dull , lifeless film"]


def test_phrase_groups_put_each_phrase_with_its_sentence():
    """Every phrase joins the row of the longest text holding it; a sentence is the head of its own group."""
    groups = phrase_groups(PHRASE_ROWS)
    assert groups == [0, 0, 0, 3, 3, 3, 0, 3]  # the repeated sentence (row 7) joins the first copy's group


def test_phrase_groups_matches_whole_tokens_only():
    """'superb' is a phrase of 'is superb', but 'super' (a substring, not a token run) is not."""
    assert phrase_groups(["is superb", "super"]) == [0, 1]


def test_train_val_split_with_groups_keeps_groups_together():
    """With groups, no group is split between train and validation, and every row lands on one side."""
    groups = [i // 5 for i in range(100)]  # 20 groups of 5 rows
    train, val = train_val_split(100, 0.2, seed=3, groups=groups)
    train_groups = {groups[i] for i in train.tolist()}
    val_groups = {groups[i] for i in val.tolist()}
    assert train_groups.isdisjoint(val_groups)
    assert len(val_groups) == 4 and len(val) == 20
    assert sorted(train.tolist() + val.tolist()) == list(range(100))


def test_subsample_random_slice_keeps_pairs():
    """subsample picks k random rows (both classes of sorted data) with their labels, in order, fixed per seed."""
    texts = [f"text {i}" for i in range(100)]
    labels = [0] * 50 + [1] * 50  # sorted by label, like the IMDb files
    t, y = subsample(texts, labels, 20, seed=7)
    assert len(t) == len(y) == 20
    assert set(y) == {0, 1}
    positions = [int(s.split()[1]) for s in t]
    assert positions == sorted(positions)
    assert all(labels[p] == lab for p, lab in zip(positions, y))
    assert subsample(texts, labels, 20, seed=7) == (t, y)
    assert subsample(texts, labels, 20, seed=8) != (t, y)


def test_subsample_k_larger_than_data_returns_all():
    """Asking for more rows than there are returns every row unchanged."""
    assert subsample(["a", "b"], [0, 1], 5, seed=0) == (["a", "b"], [0, 1])


# ----------------------------------------------------------------------------- readers

def test_read_imdb(tiny_data_dir):
    """IMDb CSV: all rows, labels 0/1, texts byte for byte (with <br /> and quotes) as written."""
    for split, n in [("train", N_TRAIN), ("test", N_TEST)]:
        texts, labels = load_split("imdb", tiny_data_dir, split)
        expected = tiny_rows("imdb", split)
        assert len(texts) == len(labels) == n
        assert list(zip(texts, labels)) == expected
    assert any("<br />" in t for t in texts) and any('"' in t for t in texts)


def test_read_sst2_bare_quotes_keep_row_count(tiny_data_dir):
    """SST-2 TSV with bare quotes: every row comes back, quotes kept, where default CSV quoting would merge rows."""
    texts, labels = load_split("sst2", tiny_data_dir, "train")
    assert list(zip(texts, labels)) == tiny_rows("sst2", "train")
    assert any(t.startswith('"') for t in texts)
    # the fixture really exercises the problem: a default-quoting reader loses rows on this file
    with gzip.open(tiny_data_dir / "glue" / "sst2" / "train.tsv.gz", "rt", encoding="utf-8", newline="") as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) != N_TRAIN
    dev_texts, dev_labels = load_split("sst2", tiny_data_dir, "dev")
    assert len(dev_texts) == N_TEST and set(dev_labels) == {0, 1}


def test_read_ag_news_maps_classes_and_joins_title(tiny_data_dir):
    """AG News: class_index 1..4 becomes label 0..3, and text is title + " " + description."""
    texts, labels = load_split("ag_news", tiny_data_dir, "train")
    rows = tiny_rows("ag_news", "train")
    assert len(texts) == N_TRAIN
    assert labels == [c - 1 for c, _, _ in rows]
    assert set(labels) == {0, 1, 2, 3}
    assert texts == [f"{title} {desc}" for _, title, desc in rows]
    assert any('"' in t for t in texts)  # the "" escapes inside quoted fields were undone


def test_dataset_info_lists_eval_split():
    """Each data set names a split it reports on, and that split has a file."""
    for name in ["imdb", "sst2", "ag_news"]:
        info = dataset_info(name)
        assert info["eval_split"] in info["files"]
    assert dataset_info("sst2")["eval_split"] == "dev"


def test_unknown_dataset_is_user_error(tmp_path):
    """An unknown data set name is a UserError that lists the known ones."""
    with pytest.raises(UserError, match="imdb, sst2, ag_news"):
        load_split("mnist", tmp_path, "train")


def test_missing_data_folder_is_user_error(tmp_path, monkeypatch):
    """No files and no network: a UserError naming the folder, the expected files and MY_LLM_DATA."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no network here")
    monkeypatch.setattr(datasets, "load_dataset", no_network)

    with pytest.raises(UserError) as e:
        load_split("imdb", tmp_path, "train")
    message = str(e.value)
    assert calls == [("stanfordnlp/imdb", None)]
    assert str(tmp_path / "imdb") in message
    assert "train.csv.gz" in message and "test.csv.gz" in message
    assert "MY_LLM_DATA" in message and "no network here" in message
    assert "\n" not in message


def test_truncated_data_file_is_user_error(tiny_data_dir):
    """A gzip file cut in half is reported as unreadable (a UserError), not a traceback."""
    path = tiny_data_dir / "imdb" / "train.csv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read"):
        load_split("imdb", tiny_data_dir, "train")


def test_wrong_format_data_file_is_user_error(tiny_data_dir):
    """An IMDb file without the expected header is a UserError pointing at the expected format."""
    with gzip.open(tiny_data_dir / "imdb" / "train.csv.gz", "wt", encoding="utf-8") as f:
        f.write("review,sentiment\nnice,pos\n")
    with pytest.raises(UserError, match="SOURCE.md"):
        load_split("imdb", tiny_data_dir, "train")


def test_vocab_json_is_plain_json(tmp_path):
    """The vocabulary file is plain JSON with the n-gram length and the entry list (no pickle)."""
    Vocab.build(["a b", "a b"]).save(tmp_path / "v.json")
    obj = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    assert obj == {"ngram": 2, "itos": ["<unk>", "a", "a b", "b"]}
