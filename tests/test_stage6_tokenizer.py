"""Stage 6 tokenizer: BERT's normalisation and pre-tokenisation, greedy longest-match WordPiece, [CLS]/[SEP] pairs,
JSON files, a trainer that learns what a plain recount would, and the same ids as Hugging Face `tokenizers`."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import assert_one_line_error, cli, real_data_root, run_script
from scripts.common import UserError
from stage6_bert import tokenizer as tk
from stage6_bert.data import prepare
from stage6_bert.tokenizer import CLS_ID, PREFIX, SEP_ID, SPECIAL_TOKENS, UNK_ID, WordPieceTokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It's the dog's bone, isn't it? We'll see, they've said.",
    'In 1998, 12,345 people paid $3.50 each; 42% said "yes"!',
    "Café naïve résumé — “curly quotes” and ‘single’ ones…",
    "The unaffable affable fable: un-affable, unable, able.",
    " = = Heading = = ",
]
CORPUS = "\n".join(SENTENCES * 20)

TRICKY = [
    "", " ", "a", "Hello, World!", "  two   spaces\tand\ttabs\nand\r\nCRLF ", "\x00\x01 control \x7f chars \ufffd",
    "zero\u200bwidth \ufeffBOM soft\u00adhyphen", "nbsp\u00a0thin\u2009ideographic\u3000spaces",
    "ÅNGSTRÖM ß ﬁ İstanbul",
    "combining e\u0301 vs é", "ΟΔΟΣ Σίσυφος", "中文 日本語のテキスト 한국어", "emoji 👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "math 𝔘𝔫𝔦 ½ ² ٣٤", "symbols $5 a+b=c <tag> x^2 `code` a|b ~ok", "@-@ @,@ @.@ <unk>", "[CLS] [MASK] ##ab",
    "x" * 150, "unaffable " * 30,
]


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.train(CORPUS, 150)


def hand_made(words: list[str], **settings) -> WordPieceTokenizer:
    return WordPieceTokenizer(SPECIAL_TOKENS + words, **settings)


# ----------------------------------------------------------------------------- normalisation and pre-tokenisation

def test_normalisation_cleans_lowercases_and_strips_accents():
    t = hand_made([])
    assert t.normalize("Héllo WÖRLD, Ça Va?") == "hello world, ca va?"
    assert t.normalize("e\u0301 é") == "e e"  # NFD + drop Mn: composed and decomposed accents go the same way
    assert t.normalize("a\x00b\ufffdc\x07d\u200be\ufeff") == "abcde"  # control and format characters are dropped
    assert t.normalize("a\tb\nc\r\nd\u00a0e\u3000f") == "a b c  d e f"  # every whitespace becomes one " "
    assert t.normalize("中文abc") == " 中  文 abc"  # each Chinese character is padded with spaces
    assert t.normalize("日本語のテキスト") == " 日  本  語 のテキスト"  # kana is not in the CJK ideograph blocks
    assert t.normalize("ΟΔΟΣ") == "οδοσ"  # one character at a time: no final sigma, as Hugging Face
    assert hand_made([], handle_chinese_chars=False).normalize("中文") == "中文"


def test_cased_and_accent_settings():
    assert hand_made([], lowercase=False).normalize("Héllo WÖRLD") == "Héllo WÖRLD"  # cased: accents stay too
    assert hand_made([], lowercase=True, strip_accents=False).normalize("Héllo") == "héllo"
    assert hand_made([], lowercase=False, strip_accents=True).normalize("Héllo") == "Hello"
    assert hand_made([]).strip_accents is True  # None means "as lowercase", like BERT


def test_pre_tokenizer_splits_whitespace_and_every_punctuation_character():
    t = hand_made([])
    assert t.pre_tokenize(t.normalize("Don't stop!! Now.")) == ["don", "'", "t", "stop", "!", "!", "now", "."]
    # ASCII symbols that Unicode calls S* (not P*) are punctuation for BERT too
    assert t.pre_tokenize("$5 a+b=c <x> 2^3 `q` a|b ~") == \
        ["$", "5", "a", "+", "b", "=", "c", "<", "x", ">", "2", "^", "3", "`", "q", "`", "a", "|", "b", "~"]
    assert t.pre_tokenize("1 @,@ 000 “quoted”—dash…") == ["1", "@", ",", "@", "000", "“", "quoted", "”", "—", "dash",
                                                           "…"]
    assert t.pre_tokenize("€5 ½ 👍") == ["€5", "½", "👍"]  # currency (Sc), numbers and emoji (So) are not split


def test_normalisation_and_pre_tokenisation_match_hugging_face_char_by_char():
    """Every character of several Unicode blocks, inside a word and alone. (A few characters added to Unicode after
    2016, such as U+061D, differ: Hugging Face's tables are older than Python's.)"""
    tokenizers = pytest.importorskip("tokenizers")
    chars = [*range(0x600), *range(0x1E00, 0x2E40), *range(0x3000, 0x3100), *range(0xFE30, 0xFFFF),
             *range(0x1F300, 0x1F600), 0x2B81F, 0x2B820, 0x2B91F, 0x2B920, 0x2CEAF, 0x2CEB0]
    for lowercase in (True, False):
        t = hand_made([], lowercase=lowercase)
        norm = tokenizers.normalizers.BertNormalizer(lowercase=lowercase)
        pre = tokenizers.pre_tokenizers.BertPreTokenizer()
        for cp in chars:
            text = f"x{chr(cp)}y {chr(cp)}"
            hf = [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]
            assert t.pre_tokenize(t.normalize(text)) == hf, hex(cp)


# ----------------------------------------------------------------------------- greedy longest match

def test_special_tokens_come_first(tok):
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] == SPECIAL_TOKENS
    assert (tk.PAD_ID, tk.UNK_ID, tk.CLS_ID, tk.SEP_ID, tk.MASK_ID) == (0, 1, 2, 3, 4)


def test_greedy_longest_match_first():
    t = hand_made(["un", "##aff", "##able", "ab", "abc", "##cd"])
    assert t.tokenize("unaffable") == ["un", "##aff", "##able"]
    # with "una" in the vocabulary it wins over "un" (longer), whatever it leaves for the rest of the word
    assert hand_made(["un", "una", "##aff", "##ff", "##able"]).tokenize("unaffable") == ["una", "##ff", "##able"]
    # "abcd": "abc" is taken first and "##d" does not exist, so the whole word is [UNK], although ab + ##cd would do:
    # greedy, never a search for the best split
    assert t.tokenize("abcd") == ["[UNK]"]
    assert t.tokenize("ab abc") == ["ab", "abc"]


def test_unknown_words():
    t = hand_made(["a", "##a", "b", "##b", "!"])
    assert t.tokenize("ab ba abc ab!") == ["a", "##b", "b", "##a", "[UNK]", "a", "##b", "!"]  # whole word, not a piece
    assert t.encode("a" * 100) == [t.ids["a"]] + [t.ids["##a"]] * 99
    assert t.encode("a" * 101) == [UNK_ID]  # longer than max_input_chars_per_word = 100
    assert hand_made(["a", "##a"], max_input_chars_per_word=3).encode("aaa aaaa") == [5, 6, 6, UNK_ID]
    assert t.tokenize("[MASK]") == ["[UNK]", "[UNK]", "[UNK]"]  # "[", "mask", "]": special tokens are not text


def test_decode_glues_pieces_and_skips_special_tokens():
    t = hand_made(["un", "##aff", "##able", "the", ",", "fox"])
    ids, _ = t.encode_single("The unaffable, FOX xyz")
    assert t.decode(ids) == "the unaffable , fox"
    assert t.decode(ids, skip_special_tokens=False) == "[CLS] the unaffable , fox [UNK] [SEP]"
    assert t.decode([t.ids["##aff"], t.ids["##able"]]) == "##affable"  # a continuation first keeps its prefix (as HF)
    with pytest.raises(ValueError, match="unknown token id 11"):
        t.decode([5, 11])


# ----------------------------------------------------------------------------- [CLS] a [SEP] b [SEP]

def test_single_and_pair_encoding_with_segment_ids():
    t = hand_made([c for c in "abcdefgh"])
    assert t.encode_single("a b c") == ([CLS_ID, 5, 6, 7, SEP_ID], [0, 0, 0, 0, 0])
    assert t.encode_single("a b c d", max_len=4) == ([CLS_ID, 5, 6, SEP_ID], [0, 0, 0, 0])
    ids, seg = t.encode_pair("a b", "c d e")
    assert ids == [CLS_ID, 5, 6, SEP_ID, 7, 8, 9, SEP_ID] and seg == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="no room"):
        t.encode_pair("a", "b", max_len=2)
    with pytest.raises(ValueError, match="no room"):
        t.encode_single("a", max_len=1)


@pytest.mark.parametrize("len_a, len_b, max_len, expected", [
    (2, 3, 100, (2, 3)),  # fits: nothing is cut
    (6, 2, 8, (3, 2)),    # only the longer one is cut
    (2, 6, 8, (2, 3)),
    (5, 5, 9, (3, 3)),    # equal lengths: b loses the first token, then they take turns
    (5, 5, 8, (3, 2)),
    (9, 1, 3, (0, 0)),    # room for the three special tokens only
])
def test_pair_truncation_is_longest_first(len_a, len_b, max_len, expected):
    t = hand_made(list("ab"))
    ids, seg = t.encode_pair(" ".join("a" * len_a), " ".join("b" * len_b), max_len)
    assert (ids.count(5), ids.count(6)) == expected
    assert len(ids) == len(seg) == min(max_len, len_a + len_b + 3)
    assert ids[0] == CLS_ID and ids[-1] == SEP_ID and ids[expected[0] + 1] == SEP_ID
    assert seg == [0] * (expected[0] + 2) + [1] * (expected[1] + 1)


# ----------------------------------------------------------------------------- training

def naive_vocab(text: str, vocab_size: int) -> list[str]:
    """The textbook algorithm: recount every pair of every word after every merge (slow but obviously right)."""
    t = hand_made([])
    words = Counter(t.pre_tokenize(t.normalize(text)))
    alphabet = sorted({c for w in words for c in w})
    vocab = SPECIAL_TOKENS + alphabet + sorted({PREFIX + c for w in words for c in w[1:]})
    segs = {w: [w[0]] + [PREFIX + c for c in w[1:]] for w in words}
    while len(vocab) < vocab_size:
        counts = Counter()
        for w, n in words.items():
            for pair in zip(segs[w], segs[w][1:]):
                counts[pair] += n
        if not counts or max(counts.values()) < 2:
            break
        a, b = min(counts, key=lambda p: (-counts[p], vocab.index(p[0]), vocab.index(p[1])))
        merged = a + b[len(PREFIX):]
        if merged not in vocab:
            vocab.append(merged)
        for w, seg in segs.items():
            out, i = [], 0
            while i < len(seg):
                if seg[i:i + 2] == [a, b]:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            segs[w] = out
    return vocab


@pytest.mark.parametrize("text", [CORPUS, "aaaaaa aaa bbbbbbb abababab aabbaabb " * 5 + CORPUS[:1500]])
def test_incremental_counts_learn_the_same_vocabulary_as_a_full_recount(text):
    assert WordPieceTokenizer.train(text, 250).vocab == naive_vocab(text, 250)


def test_training_layout_and_stopping(tok):
    alphabet = [t for t in tok.vocab[5:] if len(t) == 1]
    inner = [t for t in tok.vocab if len(t) == 3 and t.startswith(PREFIX)]
    assert tok.vocab[5:5 + len(alphabet) + len(inner)] == alphabet + inner  # c, then ##c, each by code point
    assert alphabet == sorted(alphabet) and inner == sorted(inner)
    assert "a" in alphabet and "é" not in alphabet  # accents are stripped first
    assert "." in alphabet and "##." not in inner and "##e" in inner  # punctuation is never inside a word
    assert len(tok) == 150 and len(set(tok.vocab)) == 150
    big = WordPieceTokenizer.train(CORPUS, 5000)
    assert len(big) < 5000  # stopped: no pair occurs twice any more
    words = big.pre_tokenize(big.normalize(CORPUS))
    assert len(big.encode(CORPUS)) == len(words)  # every word of the training text is now one token
    rare = WordPieceTokenizer.train(CORPUS, 5000, min_frequency=1000)
    assert len(rare) == 5 + len(alphabet) + len(inner)  # no pair is that frequent: the alphabet only


def test_limit_alphabet_makes_rare_characters_unknown():
    t = WordPieceTokenizer.train("aaa bbb ab ab ba z", 100, limit_alphabet=2)
    assert t.vocab[5:9] == ["a", "b", "##a", "##b"]
    assert t.tokenize("ab z baz") == ["ab", "[UNK]", "[UNK]"]  # "z" was too rare: a word with it is unknown
    assert WordPieceTokenizer.train(CORPUS, 300).vocab == WordPieceTokenizer.train(CORPUS, 300).vocab  # determinism


def test_cased_training_keeps_case_and_accents():
    t = WordPieceTokenizer.train(CORPUS, 300, lowercase=False)
    assert "T" in t.vocab and "é" in t.vocab and t.lowercase is False and t.strip_accents is False
    assert t.tokenize("The")[0].startswith("T")


def test_bad_vocab_size_is_a_user_error():
    with pytest.raises(UserError, match=r"vocab size 9 is too small.*need 10"):
        WordPieceTokenizer.train("abc", 9)  # 5 special tokens + a, b, c + ##b, ##c
    assert WordPieceTokenizer.train("abc", 10).vocab[5:] == ["a", "b", "c", "##b", "##c"]


# ----------------------------------------------------------------------------- files

def test_save_and_load_round_trip(tok, tmp_path):
    path = tmp_path / "sub" / "wp.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["format"], data["version"], data["lowercase"], data["strip_accents"]) == \
        ("my_llm-wordpiece", 1, True, True)
    assert data["handle_chinese_chars"] is True and data["max_input_chars_per_word"] == 100
    assert data["vocab"] == tok.vocab
    loaded = WordPieceTokenizer.load(path)
    assert loaded.vocab == tok.vocab and loaded.settings() == tok.settings()
    for text in TRICKY + [CORPUS]:
        assert loaded.encode(text) == tok.encode(text)
    cased = WordPieceTokenizer.train(CORPUS, 300, lowercase=False)
    cased.save(tmp_path / "cased.json")
    assert WordPieceTokenizer.load(tmp_path / "cased.json").settings() == cased.settings()


def test_vocab_txt_is_berts_format(tok, tmp_path):
    tok.save_vocab_txt(tmp_path / "vocab.txt")
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == tok.vocab
    tokenizers = pytest.importorskip("tokenizers")
    assert tokenizers.models.WordPiece.read_file(str(tmp_path / "vocab.txt")) == tok.ids


def test_bad_tokenizer_files_are_user_errors(tok, tmp_path):
    with pytest.raises(UserError, match="tokenizer file not found"):
        WordPieceTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read tokenizer"):
        WordPieceTokenizer.load(tmp_path / "garbage.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "my_llm-byte-bpe", "version": 1}))
    with pytest.raises(UserError, match="is not a my_llm-wordpiece version 1 tokenizer file"):
        WordPieceTokenizer.load(tmp_path / "other.json")
    tok.save(tmp_path / "good.json")
    good = json.loads((tmp_path / "good.json").read_text(encoding="utf-8"))
    for change in [{"vocab": good["vocab"][1:]}, {"vocab": good["vocab"] + ["a"]}, {"vocab": good["vocab"] + ["a b"]},
                   {"lowercase": "yes"}, {"max_input_chars_per_word": 0}]:
        (tmp_path / "corrupt.json").write_text(json.dumps({**good, **change}), encoding="utf-8")
        with pytest.raises(UserError, match="is corrupt"):
            WordPieceTokenizer.load(tmp_path / "corrupt.json")


# ----------------------------------------------------------------------------- the Hugging Face twin

def first_difference(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"lengths {len(a)} and {len(b)}, first difference at token {i}: {a[i:i + 5]} vs {b[i:i + 5]}"


@pytest.mark.parametrize("lowercase", [True, False])
def test_same_ids_as_hugging_face_tokenizers(lowercase):
    pytest.importorskip("tokenizers")
    t = WordPieceTokenizer.train(CORPUS, 300, lowercase=lowercase)
    hf = t.to_hf_tokenizer()
    for text in TRICKY + [CORPUS]:
        ids = t.encode(text)
        hf_ids = hf.encode(text, add_special_tokens=False).ids
        assert hf_ids == ids, f"{text[:60]!r}: {first_difference(hf_ids, ids)}"
        assert hf.decode(ids, skip_special_tokens=False) == t.decode(ids, skip_special_tokens=False)
    pair = hf.encode("The quick fox.", "Unaffable, isn't it?")
    assert (pair.ids, pair.type_ids) == t.encode_pair("The quick fox.", "Unaffable, isn't it?")


def read_gz(path: Path, max_lines: int | None = None) -> str:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read() if max_lines is None else "".join(f.readline() for _ in range(max_lines))


@pytest.fixture(scope="module")
def wiki_tok() -> WordPieceTokenizer:
    """A 2,000-token vocabulary learned on the first 2 MB of WikiText-2 train (about 3 s); only the tests marked
    real_data("wikitext-2") ask for it, and they run only where $MY_LLM_DATA has it."""
    train = real_data_root(("wikitext-2",)) / "wikitext-2" / "wiki.train.tokens.gz"
    return WordPieceTokenizer.train(read_gz(train)[:2_000_000], 2000)


@pytest.mark.real_data("wikitext-2")
def test_same_ids_as_hugging_face_on_wikitext2_test(wiki_tok, real_data_dir):
    """The whole WikiText-2 test split (1.3 MB), encoded by both: identical ids."""
    pytest.importorskip("tokenizers")
    test = read_gz(real_data_dir / "wikitext-2" / "wiki.test.tokens.gz")
    ids = wiki_tok.encode(test)
    hf_ids = wiki_tok.to_hf_tokenizer().encode(test, add_special_tokens=False).ids
    assert hf_ids == ids, first_difference(hf_ids, ids)
    words = wiki_tok.pre_tokenize(wiki_tok.normalize(test))
    assert len(ids) / len(words) < 1.5  # a real vocabulary: few pieces per word on unseen text (1.42)
    assert ids.count(UNK_ID) < 1e-3 * len(ids)  # and almost no unknown words


@pytest.mark.parametrize("relative", [
    pytest.param(r, marks=pytest.mark.real_data("wikitext-2", r.split("/")[0]), id=r)
    for r in ["wikitext-2/wiki.test.tokens.gz", "imdb/test.csv.gz", "glue/sst2/dev.tsv.gz", "multi30k/train.de.gz",
              "multi30k/train.fr.gz"]])
def test_round_trip_and_hugging_face_on_real_data(wiki_tok, relative, real_data_dir):
    """The first 300 lines: decode(encode(x)) is the normalised x, word by word; Hugging Face agrees on the ids."""
    text = read_gz(real_data_dir / relative, max_lines=300)
    words = wiki_tok.pre_tokenize(wiki_tok.normalize(text))
    ids = wiki_tok.encode(text)
    assert wiki_tok.decode(ids, skip_special_tokens=False).split() == \
        [w if UNK_ID not in wiki_tok.encode_word(w) else "[UNK]" for w in words]
    known = " ".join(w for w in words if UNK_ID not in wiki_tok.encode_word(w))
    assert wiki_tok.decode(wiki_tok.encode(known)) == known
    pytest.importorskip("tokenizers")
    hf_ids = wiki_tok.to_hf_tokenizer().encode(text, add_special_tokens=False).ids
    assert hf_ids == ids, first_difference(hf_ids, ids)


# ----------------------------------------------------------------------------- command line

def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")
    monkeypatch.setattr(datasets, "load_dataset", no_network)  # missing data is downloaded first, as in pretrain.py
    code, err = cli(tk.main, ["train", "--corpus", str(tmp_path / "missing.txt")], capsys)
    assert_one_line_error(code, err, r"corpus file not found: .*missing\.txt")
    assert code == 2  # run_cli's code for a UserError
    (tmp_path / "small.txt").write_text("hello world\n")
    code, err = cli(tk.main, ["train", "--corpus", str(tmp_path / "small.txt"), "--vocab-size", "12"], capsys)
    assert_one_line_error(code, err, r"vocab size 12 is too small")
    code, err = cli(tk.main, ["train", "--data-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, r"data set 'wikitext-2' not found in .*wikitext-2 \(expected wiki\.train.*"
                                     r"Couldn't reach")
    (tmp_path / "bad.json").write_text("{not json")
    code, err = cli(tk.main, ["encode", "--tokenizer", str(tmp_path / "bad.json"), "hello"], capsys)
    assert_one_line_error(code, err, r"cannot read tokenizer .*bad\.json")


def test_cli_trains_and_encodes(tiny_lm_data_dir, tmp_path, capsys):
    out, txt = tmp_path / "wp.json", tmp_path / "vocab.txt"
    tk.main(["train", "--data-dir", str(tiny_lm_data_dir), "--vocab-size", "60", "--out", str(out),
             "--vocab-txt", str(txt)])
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "example:" in printed
    t = WordPieceTokenizer.load(out)
    assert len(t) == 60 and txt.read_text(encoding="utf-8").splitlines() == t.vocab
    tk.main(["encode", "--tokenizer", str(out), "The king of the river.", "--pair", "A song", "--max-len", "8"])
    printed = capsys.readouterr().out
    ids, seg = t.encode_pair("The king of the river.", "A song", 8)
    assert f"ids:      {ids}" in printed and f"segments: {seg}" in printed and "'[CLS]'" in printed
    code, err = cli(tk.main, ["encode", "--tokenizer", str(out), "x", "--max-len", "1"], capsys)
    assert_one_line_error(code, err, r"no room for \[CLS\]")


@pytest.mark.slow
def test_script_runs_from_the_repo_root(tmp_path, capsys):
    """`python stage6_bert/tokenizer.py ...` trains on a corpus file and fails with one line; --help explains."""
    (tmp_path / "corpus.txt.gz").write_bytes(gzip.compress(CORPUS.encode("utf-8")))
    out = tmp_path / "wp.json"
    proc = run_script("tokenizer", "train", "--corpus", tmp_path / "corpus.txt.gz", "--vocab-size", "300",
                      "--out", out, data_dir=tmp_path, stage="stage6_bert")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same vocabulary as pre-training's own: data.prepare trains on the same documents (held-out ones excluded)
    prepare(tmp_path, tmp_path / "pre", corpus=[str(tmp_path / "corpus.txt.gz")], vocab_size=300, log=lambda m: None)
    assert WordPieceTokenizer.load(out).vocab == WordPieceTokenizer.load(tmp_path / "pre" / "tokenizer.json").vocab
    missing = run_script("tokenizer", "encode", "--tokenizer", tmp_path / "nope.json", "hi", data_dir=tmp_path,
                         stage="stage6_bert")
    assert_one_line_error(missing.returncode, missing.stderr, r"tokenizer file not found")
    with pytest.raises(SystemExit) as e:
        tk.parse_args(["train", "--help"])
    assert e.value.code == 0 and "--vocab-size" in capsys.readouterr().out
