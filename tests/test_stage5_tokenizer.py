"""Stage 5 tokenizer: byte-level BPE gives back any text exactly, learns the merges a plain recount would, and gives
the same ids as Hugging Face `tokenizers` loaded with its vocabulary and merges."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import regex

from conftest import assert_one_line_error, cli, run_script
from scripts.common import UserError
from stage5_gpt import tokenizer as tk
from stage5_gpt.tokenizer import BYTE_TO_CHAR, EOT, GPT2_PATTERN, BPETokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It's the dog's bone, isn't it? We'll see, they've said, I'm sure you'd agree.",
    'In 1998, 12,345 people paid $3.50 each; 42% said "yes"!',
    "  Indented line with\ttabs\tand   several   spaces  ",
    "Café naïve résumé — “curly quotes” and ‘single’ ones…",
    "日本語のテキストと中文文本。",
    "Emoji: 🙂🚀 👨‍👩‍👧 🇫🇷",
    "def f(x):\n    return x ** 2  # code\n",
    " = = Heading = = ",
    "the the the thee three there their then",
]
CORPUS = "\n\n".join(SENTENCES * 20)

TRICKY = [
    "", " ", "a", "hello world", "  two leading spaces", "trailing spaces   ", "multiple    inner   spaces",
    "line\nbreaks\n\n\nand\r\nCRLF\rCR\n", "\ttabs\t\tand\x0bvertical\x0cform feeds",
    "nbsp\u00a0and\u2009thin\u3000ideographic spaces", "file\x1cgroup\x1drecord\x1eunit\x1fseparators",
    "It's we'll they'RE I'M o'clock '' 's", "naïve café ÅNGSTRÖM ß ﬁ ligature",
    "emoji 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣", "中文 日本語 한국어 العربية עברית हिन्दी",
    "numbers 3.14159 1,000,000 ٣٤ ½ ⅷ ²", "\x00\x01 control \x7f chars \u200b zero width \ufeff BOM",
    "combining e\u0301 vs é", "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 𝟘𝟙", "mixed\u2028line\u2029separators\x85next line",
    "<|endoftext|> special <|endoftext|><|endoftext|> in text", "<|endoftext", "endoftext|>", "x" * 500,
    " ".join(["word"] * 200), "\n" * 7 + " " * 5 + "\t",
]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, 350, progress=False)


def first_difference(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"lengths {len(a)} and {len(b)}, first difference at token {i}: {a[i:i + 5]} vs {b[i:i + 5]}"


# ----------------------------------------------------------------------------- bytes and pre-tokens

def test_byte_table_is_gpt2s():
    """256 distinct printable characters; the printable bytes stand for themselves, a space is "Ġ", a newline "Ċ"."""
    assert len(set(BYTE_TO_CHAR.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in BYTE_TO_CHAR.values())
    assert BYTE_TO_CHAR[ord("A")] == "A" and BYTE_TO_CHAR[ord("~")] == "~"
    assert (BYTE_TO_CHAR[0], BYTE_TO_CHAR[ord(" ")], BYTE_TO_CHAR[ord("\n")]) == ("Ā", "Ġ", "Ċ")
    assert BYTE_TO_CHAR[0xAD] == "Ń"  # the soft hyphen is the one non-printable byte in the Latin-1 range


def test_pre_tokenizer_splits_like_gpt2(tok):
    assert tok.pre_tokenize("Hello world's  end!!\n") == ["Hello", " world", "'s", " ", " end", "!!", "\n"]
    assert tok.pre_tokenize("I'm 25 years, ok?") == ["I", "'m", " 25", " years", ",", " ok", "?"]
    for text in TRICKY:
        assert "".join(tok.pre_tokenize(text)) == text  # nothing is ever dropped


def test_ids_bytes_first_then_merges_then_specials(tok):
    assert len(tok) == tok.vocab_size == 350
    assert all(tok.token_to_id(BYTE_TO_CHAR[b]) == b for b in range(256))
    assert tok.decode([ord("A")]) == "A" and tok.id_to_token(32) == "Ġ"
    assert tok.special_tokens == {EOT: 349} and tok.token_to_id(EOT) == 349
    assert sorted(tok.vocab.values()) == list(range(349))
    for a, b in tok.merges:  # every merge makes a token of the vocabulary, learned after its two parts
        assert tok.vocab[a + b] > max(tok.vocab[a], tok.vocab[b])


# ----------------------------------------------------------------------------- training

def test_most_frequent_pair_is_merged_first_and_ties_go_to_smaller_ids():
    assert BPETokenizer.train("ab ab ab cd", 258, progress=False).merges == [("a", "b")]
    # every pair occurs once: (Ġ, c) wins, as " " (id 32) is smaller than "a" (97)
    assert BPETokenizer.train("ab cd", 258, progress=False).merges == [("Ġ", "c")]


def naive_merges(text: str, n_new_tokens: int) -> list[tuple[str, str]]:
    """The textbook algorithm: recount every pair over every word after every merge (slow but obviously right)."""
    words = Counter(regex.findall(GPT2_PATTERN, text))
    segments = {w: [BYTE_TO_CHAR[b] for b in w.encode("utf-8")] for w in words}
    ids = {BYTE_TO_CHAR[b]: b for b in range(256)}
    merges = []
    while len(ids) < 256 + n_new_tokens:
        counts = Counter()
        for w, f in words.items():
            for pair in zip(segments[w], segments[w][1:]):
                counts[pair] += f
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], ids[p[0]], ids[p[1]]))
        merges.append((a, b))
        ids.setdefault(a + b, len(ids))
        for w, seg in segments.items():
            out, i = [], 0
            while i < len(seg):
                if seg[i:i + 2] == [a, b]:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            segments[w] = out
    return merges


@pytest.mark.parametrize("text", [CORPUS, "aaaaaa aaa bbbbbbb abababab aabbaabb " * 5 + CORPUS[:2000]])
def test_incremental_counts_learn_the_same_merges_as_a_full_recount(text):
    fast = BPETokenizer.train(text, 256 + 150, special_tokens=(), progress=False)
    assert fast.merges == naive_merges(text, 150)
    assert len(fast) == 256 + 150


def test_training_stops_when_no_pairs_are_left():
    t = BPETokenizer.train("ab", 1000, progress=False)
    assert t.merges == [("a", "b")] and len(t) == 258 and t.special_tokens == {EOT: 257}


def test_merges_never_cross_word_or_special_token_boundaries():
    t = BPETokenizer.train("dog. dog! dog?<|endoftext|>" * 50, 400, progress=False)
    new_tokens = [t.decode([i]) for i in range(256, len(t) - 1)]
    assert " dog" in new_tokens
    assert not any(any(c.isalpha() for c in s) and any(c in ".!?<|>" for c in s) for s in new_tokens), new_tokens
    assert not any("endoftext" in s for s in new_tokens)  # special tokens are cut out before counting


def test_bad_vocab_size_is_a_user_error():
    with pytest.raises(UserError, match=r"vocab size 256 is too small.*257"):
        BPETokenizer.train("abc", 256, progress=False)
    with pytest.raises(UserError, match="too small"):
        BPETokenizer.train("abc", 100, special_tokens=(), progress=False)
    assert len(BPETokenizer.train("abc", 256, special_tokens=(), progress=False)) == 256  # bytes only: allowed


def test_training_compresses(tok):
    """More merges, fewer tokens; with merges to spare, every pre-token of the training text becomes one token."""
    assert len(tok.encode(CORPUS)) < 0.6 * len(CORPUS.encode("utf-8"))
    big = BPETokenizer.train(CORPUS, 5000, progress=False)
    assert len(big) < 5000  # it ran out of pairs
    assert len(big.encode(CORPUS)) == len(big.pre_tokenize(CORPUS)) < len(tok.encode(CORPUS))


# ----------------------------------------------------------------------------- encode and decode

@pytest.mark.parametrize("allowed", [(), "all"])
def test_round_trip_tricky_text(tok, allowed):
    for text in TRICKY:
        ids = tok.encode(text, allowed_special=allowed)
        assert all(0 <= i < len(tok) for i in ids)
        assert tok.decode(ids) == text, repr(text)


def test_special_tokens_are_single_ids_only_when_allowed(tok):
    eot = tok.special_tokens[EOT]
    text = "a dog<|endoftext|>The fox"
    allowed = tok.encode(text, allowed_special="all")
    assert allowed == tok.encode("a dog") + [eot] + tok.encode("The fox")
    assert tok.encode(text, allowed_special={EOT}) == tok.encode(text, allowed_special=EOT) == allowed
    as_text = tok.encode(text)  # the default: a special token in the text is plain text
    assert eot not in as_text and len(as_text) > len(allowed) and tok.decode(as_text) == text
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|pad|>"})


def test_several_special_tokens():
    t = BPETokenizer.train(CORPUS, 300, special_tokens=(EOT, "<|pad|>"), progress=False)
    assert t.special_tokens == {EOT: 298, "<|pad|>": 299}
    ids = t.encode("<|pad|>x<|endoftext|>", allowed_special={EOT})
    assert ids[-1] == 298 and 299 not in ids and t.decode(ids) == "<|pad|>x<|endoftext|>"
    assert t.encode("<|pad|><|endoftext|>", allowed_special="all") == [299, 298]


def test_decode_unknown_id_and_cut_characters(tok):
    with pytest.raises(ValueError, match="unknown token id 350"):
        tok.decode([1, 350])
    ids = tok.encode("☃")  # three bytes, none of them merged in this small vocabulary
    assert len(ids) == 3 and tok.decode(ids[:2]) == "\ufffd" and tok.decode(ids) == "☃"


# ----------------------------------------------------------------------------- files

def test_save_and_load_give_identical_ids(tok, tmp_path):
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["format"], data["version"], data["pattern"]) == ("my_llm-byte-bpe", 1, GPT2_PATTERN)
    assert data["special_tokens"] == {EOT: 349} and len(data["vocab"]) == 349
    assert data["merges"][0] == list(tok.merges[0]) and all(len(m) == 2 for m in data["merges"])
    loaded = BPETokenizer.load(path)
    assert (loaded.vocab, loaded.merges, loaded.special_tokens) == (tok.vocab, tok.merges, tok.special_tokens)
    for text in TRICKY + [CORPUS]:
        assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_bad_tokenizer_files_are_user_errors(tok, tmp_path):
    with pytest.raises(UserError, match="tokenizer file not found"):
        BPETokenizer.load(tmp_path / "missing.json")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read tokenizer"):
        BPETokenizer.load(tmp_path / "garbage.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(UserError, match="is not a my_llm-byte-bpe version 1 tokenizer file"):
        BPETokenizer.load(tmp_path / "other.json")
    tok.save(tmp_path / "good.json")
    data = json.loads((tmp_path / "good.json").read_text(encoding="utf-8"))
    data["merges"].append(["no such token", "x"])
    (tmp_path / "corrupt.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match="corrupt"):
        BPETokenizer.load(tmp_path / "corrupt.json")


# ----------------------------------------------------------------------------- the Hugging Face twin

def test_same_ids_as_hugging_face_tokenizers(tok):
    pytest.importorskip("tokenizers")
    hf = tok.to_hf()
    for text in TRICKY + [CORPUS]:
        ids = tok.encode(text, allowed_special="all")  # HF always cuts out its special tokens
        hf_ids = hf.encode(text).ids
        assert hf_ids == ids, f"{text[:60]!r}: {first_difference(hf_ids, ids)}"
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)


def read_gz(path: Path, max_lines: int | None = None) -> str:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read() if max_lines is None else "".join(f.readline() for _ in range(max_lines))


@pytest.mark.real_data("wikitext-2")
def test_same_ids_as_hugging_face_on_wikitext2_test(real_data_dir):
    """A 2,000-token vocabulary learned on the first 2 MB of WikiText-2 train; the whole test split encoded by both."""
    pytest.importorskip("tokenizers")
    train = read_gz(real_data_dir / "wikitext-2/wiki.train.tokens.gz")[:2_000_000]
    test = read_gz(real_data_dir / "wikitext-2/wiki.test.tokens.gz")
    t = BPETokenizer.train(train, 2000, progress=False)
    ids = t.encode(test)
    hf_ids = t.to_hf().encode(test).ids
    assert hf_ids == ids, first_difference(hf_ids, ids)
    assert t.decode(ids) == test
    assert len(test.encode("utf-8")) / len(ids) > 3.0  # a real vocabulary: over 3 bytes per token on unseen text


@pytest.mark.parametrize("relative", [
    pytest.param(relative, marks=pytest.mark.real_data(relative.rsplit("/", 1)[0]), id=relative) for relative in [
        "wikitext-2/wiki.valid.tokens.gz", "tiny_shakespeare/input.txt.gz", "imdb/test.csv.gz", "imdb/unsup.csv.gz",
        "multi30k/train.de.gz", "multi30k/train.fr.gz", "tatoeba_eng_fra/fra.txt.gz", "glue/sst2/dev.tsv.gz",
        "glue/cola/train.tsv.gz", "glue/mrpc/train.tsv.gz", "ag_news/test.csv.gz"]
])
def test_round_trip_on_real_data(tok, relative, real_data_dir):
    """The first 300 lines of every data set: decode(encode(x)) == x, and Hugging Face agrees on the ids."""
    text = read_gz(real_data_dir / relative, max_lines=300)
    assert len(text) > 1000
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    try:
        hf = tok.to_hf()
    except ImportError:
        return
    hf_ids = hf.encode(text).ids
    assert hf_ids == ids, first_difference(hf_ids, ids)


# ----------------------------------------------------------------------------- command line

def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("no network in tests")
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    code, err = cli(tk.main, ["--input", str(tmp_path / "missing.txt")], capsys)
    assert code == 2
    assert_one_line_error(code, err, r"input file not found: .*missing\.txt")
    (tmp_path / "small.txt").write_text("hello world\n")
    code, err = cli(tk.main, ["--input", str(tmp_path / "small.txt"), "--vocab-size", "200"], capsys)
    assert code == 2
    assert_one_line_error(code, err, r"vocab size 200 is too small")
    code, err = cli(tk.main, ["--dataset", "wikitext2", "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line_error(code, err, r"data set 'wikitext2' not found in .*wikitext-2 \(expected wiki\.train")


def test_cli_trains_on_a_dataset(tiny_lm_data_dir, tmp_path, capsys):
    out = tmp_path / "bpe.json"
    tk.main(["--dataset", "tiny_shakespeare", "--data-dir", str(tiny_lm_data_dir), "--vocab-size", "300",
             "--out", str(out)])
    printed = capsys.readouterr().out
    assert "merges/s" in printed and "bytes/token" in printed and "example:" in printed
    t = BPETokenizer.load(out)
    assert len(t) == 300 and t.decode(t.encode("ROMEO:\nBut soft!")) == "ROMEO:\nBut soft!"


def test_cli_writes_its_figures_as_json(tiny_lm_data_dir, tmp_path, capsys):
    pytest.importorskip("tokenizers")
    out, figures = tmp_path / "bpe.json", tmp_path / "results" / "tokenizer.json"
    tk.main(["--dataset", "tiny_shakespeare", "--data-dir", str(tiny_lm_data_dir), "--vocab-size", "300",
             "--out", str(out), "--compare-hf", "--json", str(figures)])
    r = json.loads(figures.read_text(encoding="utf-8"))
    t = BPETokenizer.load(out)
    assert (r["vocab_size"], r["merges"], r["tokenizer"]) == (300, len(t.merges), str(out))
    assert r["identical_to_hf"] is True and r["round_trip"] is True and r["train_seconds"] >= 0
    assert r["held_out_tokens"] > 0 and r["held_out_bytes_per_token"] > 1
    assert r["command"].startswith("python stage5_gpt/tokenizer.py --dataset tiny_shakespeare")
    assert "headline_metric" not in r and "run" not in r  # a side file, and not the reference run
    tk.main(["--dataset", "tiny_shakespeare", "--data-dir", str(tiny_lm_data_dir), "--vocab-size", "300",
             "--out", str(out)])
    assert json.loads(out.with_suffix(".result.json").read_text())["vocab_size"] == 300  # by default: beside --out


def test_cli_does_not_import_the_data_module():
    """data.py imports the tokenizer; the tokenizer's --dataset mode reads the corpus through corpus.py instead, so
    the stage's imports never go round in a circle."""
    import ast
    source = (Path(tk.__file__)).read_text(encoding="utf-8")
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert "stage5_gpt.data" not in imported and "stage5_gpt.corpus" in imported


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True])
def test_script_runs_both_ways(tmp_path, module):
    """`python stage5_gpt/tokenizer.py` and `python -m stage5_gpt.tokenizer`, from the repo root."""
    (tmp_path / "corpus.txt.gz").write_bytes(gzip.compress(CORPUS.encode("utf-8")))
    out = tmp_path / "bpe.json"
    proc = run_script("tokenizer", "--input", tmp_path / "corpus.txt.gz", "--vocab-size", "300", "--out", out,
                      data_dir=tmp_path, module=module, stage="stage5_gpt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    assert BPETokenizer.load(out).merges == BPETokenizer.train(CORPUS, 300, progress=False).merges
    missing = run_script("tokenizer", "--input", tmp_path / "nope.txt", data_dir=tmp_path, module=module,
                         stage="stage5_gpt")
    assert missing.returncode == 2
    assert_one_line_error(missing.returncode, missing.stderr, r"input file not found")
