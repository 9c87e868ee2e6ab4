"""Stage 4 data: Multi30k sentence pairs -> reversible tokens -> one joint vocabulary -> batches of about N tokens.

The task and the test sets are Stage 3's, so the two stages compare on equal terms; two things differ:

- **one joint vocabulary** for both languages (names, numbers and punctuation are shared between English and French),
  so the encoder's and the decoder's embeddings and the output layer can be one matrix (three-way tying). The tokens
  that occur on the target side come first: the decoder only ever writes those, so the output layer scores only the
  first `n_target` entries (about half of them for en -> fr; the output layer is the costliest part of a step);
- **batches by tokens**, not by sentences: a Transformer step costs about the same per token whatever the sentence
  lengths, so a fixed token budget per batch keeps every step's cost and gradient noise alike.

As in Stage 3, BLEU is computed on plain text against the raw references, so the tokeniser must be undone exactly:
`detokenize(tokenize(x)) == normalize(x)`.

The sentence classifier (classify.py) reads SST-2 with `load_sst2`, holds out a validation split of whole sentences
(`sst2_splits`, `sentence_split`), and reuses the same tokeniser and `Vocab` (one language, no target side) and
`token_batches` (sentences of similar length together: `sentence_batches`).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
import re
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import torch

from scripts.common import UserError, atomic_write, atomic_write_text

LANGS = ("en", "de", "fr")
SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr", "test2017": "test_2017_flickr"}
URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}.gz"


def check_pair(src: str, tgt: str) -> None:
    if src not in LANGS or tgt not in LANGS or src == tgt:
        raise UserError(f"Multi30k needs two different languages from {', '.join(LANGS)} (got --src {src} --tgt {tgt})")


def read_lines(path: Path) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            return f.read().split("\n")[:-1]  # every file ends with a newline
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another format? "
                        f"see {path.parent / 'SOURCE.md'} for the expected one)") from None


def load_pairs(data_dir: str | Path, split: str, src: str, tgt: str) -> list[tuple[str, str]]:
    """Raw (source, target) pairs of one Multi30k split, downloading the data set first if it is missing."""
    check_pair(src, tgt)
    if split not in SPLITS:
        raise UserError(f"Multi30k has no {split!r} split; it has: {', '.join(SPLITS)}")
    folder = Path(data_dir) / "multi30k"
    paths = {lang: folder / f"{SPLITS[split]}.{lang}.gz" for lang in (src, tgt)}
    if not all(p.is_file() for p in paths.values()):
        download(folder)
    lines = {lang: read_lines(p) for lang, p in paths.items()}
    if len(lines[src]) != len(lines[tgt]):
        raise UserError(f"{paths[src]} and {paths[tgt]} have different numbers of lines: they must be line-aligned")
    return list(zip(lines[src], lines[tgt]))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def download(folder: Path) -> None:
    """The original raw files of github.com/multi30k/dataset (gzip, stored unchanged), every split and language."""
    print(f"Multi30k not found in {folder}; downloading it from github.com/multi30k/dataset ...", file=sys.stderr)
    names = [f"{split}.{lang}" for split in SPLITS.values() for lang in LANGS]
    try:
        blobs = {name: fetch(URL.format(name=name)) for name in names}
    except Exception as e:  # no internet, 404, timeout: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"data set 'multi30k' not found in {folder} (expected train.en.gz, val.fr.gz, ...), and the "
                        f"download failed ({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run "
                        f"with internet access.") from None
    try:
        for name, data in blobs.items():
            atomic_write(folder / f"{name}.gz", lambda f: f.write(data))
    except OSError as e:
        raise UserError(f"downloaded Multi30k but cannot write it to {folder}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- SST-2, for the sentence classifier

SST2_FILES = {"train": "train.tsv.gz", "dev": "dev.tsv.gz"}  # GLUE's test labels are private: dev is the test set
SST2_HUB = ("nyu-mll/glue", "sst2")                             # on the hub, dev is called "validation"


def load_sst2(data_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """SST-2 sentences and labels (0 negative, 1 positive) of `train` or `dev`, downloading the data set if missing.

    GLUE's files are gzipped TSV with the header `sentence<TAB>label`. Sentences hold bare `"` characters, so the
    reader must not treat quotes as CSV quoting (csv.QUOTE_NONE), or rows merge silently.
    """
    if split not in SST2_FILES:
        raise UserError(f"SST-2 has no {split!r} split here; it has: {', '.join(SST2_FILES)}")
    folder = Path(data_dir) / "glue" / "sst2"
    path = folder / SST2_FILES[split]
    if not path.is_file():
        download_sst2(folder)
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        labels = [int(r["label"]) for r in rows]
    except (OSError, EOFError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (expected a gzipped TSV with the header "
                        f"sentence<TAB>label; see {folder / 'SOURCE.md'})") from None
    if not rows or any(y not in (0, 1) for y in labels):
        raise UserError(f"{path} holds no rows, or labels other than 0 and 1 (see {folder / 'SOURCE.md'})")
    return [r["sentence"] for r in rows], labels


def download_sst2(folder: Path) -> None:
    """GLUE SST-2 from the Hugging Face hub, written as the same gzipped TSV files the reader expects."""
    hub_id, config = SST2_HUB
    print(f"SST-2 not found in {folder}; downloading {hub_id} ({config}) from the Hugging Face hub ...",
          file=sys.stderr)
    try:
        import datasets
        hub = datasets.load_dataset(hub_id, config)
    except Exception as e:  # no internet, hub down, `datasets` not installed: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"data set 'sst2' not found in {folder} (expected {', '.join(SST2_FILES.values())}), and "
                        f"downloading {hub_id} failed ({reason}). Set --data-dir or MY_LLM_DATA to a folder that has "
                        f"glue/sst2, or run with internet access.") from None
    try:
        for split, hub_split in (("train", "train"), ("dev", "validation")):
            tsv = "sentence\tlabel\n" + "".join(f"{r['sentence']}\t{int(r['label'])}\n" for r in hub[hub_split])
            atomic_write(folder / SST2_FILES[split], lambda f: f.write(gzip.compress(tsv.encode("utf-8"))))
    except OSError as e:
        raise UserError(f"downloaded {hub_id} but cannot write it to {folder}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- reversible tokens, one vocabulary

SPACE = "\u2581"  # "▁": a space (or the start of the sentence) came before this token
TOKEN_RE = re.compile(r"(\s*)(\w+|[^\w\s])")


def normalize(text: str) -> str:
    return " ".join(text.replace(SPACE, " ").split())


def tokenize(text: str) -> list[str]:
    """'Un homme, assis.' -> ['▁Un', '▁homme', ',', '▁assis', '.']"""
    return [(SPACE if spaces or i == 0 else "") + piece
            for i, (spaces, piece) in enumerate(TOKEN_RE.findall(normalize(text)))]


def detokenize(tokens: list[str]) -> str:
    return "".join(tokens).replace(SPACE, " ").strip()


PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocab:
    """token <-> id over the training sentences of both languages (or one), stored as JSON."""

    def __init__(self, itos: list[str], n_target: int | None = None):
        if itos[:4] != SPECIALS:
            raise UserError(f"a vocabulary must start with {SPECIALS}")
        self.itos = itos
        self.stoi = {s: i for i, s in enumerate(itos)}
        self.n_target = len(itos) if n_target is None else n_target  # ids 0 .. n_target-1 can be written
        if not len(SPECIALS) <= self.n_target <= len(itos):
            raise UserError(f"a vocabulary's n_target must be between {len(SPECIALS)} and {len(itos)}, got {n_target}")

    @classmethod
    def build(cls, sentences: list[str], min_freq: int = 2, targets: list[str] | None = None) -> "Vocab":
        """The tokens seen at least min_freq times in `sentences`, most frequent first. With `targets` (the target-side
        sentences, also among `sentences`), the tokens that occur in a target come first and n_target counts them
        (specials included): '▁homme' before '▁man' for en -> fr, and the decoder's output stops at n_target."""
        counts = Counter(t for s in sentences for t in tokenize(s))
        kept = [t for t, c in counts.most_common() if c >= min_freq]
        if targets is None:
            return cls(SPECIALS + kept)
        on_target = {t for s in targets for t in tokenize(s)}
        first = [t for t in kept if t in on_target]
        return cls(SPECIALS + first + [t for t in kept if t not in on_target], n_target=len(SPECIALS) + len(first))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, target: bool = False) -> list[int]:
        """Token ids + <eos>. target=True: a sentence the decoder must write, so a token it cannot write (a source-side
        entry, id >= n_target, e.g. an English name seen only in English captions) is <unk>, as an unseen word is."""
        ids = [self.stoi.get(t, UNK_ID) for t in tokenize(text)]
        if target:
            ids = [i if i < self.n_target else UNK_ID for i in ids]
        return ids + [EOS_ID]

    def unknown(self, text: str) -> list[str]:
        return [t.lstrip(SPACE) for t in tokenize(text) if t not in self.stoi]

    def decode(self, ids: list[int]) -> str:
        tokens = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                tokens.append(self.itos[i] if i != UNK_ID else SPACE + UNK)
        return detokenize(tokens)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"itos": self.itos, "n_target": self.n_target}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(data["itos"], data.get("n_target"))
        except FileNotFoundError:
            raise UserError(f"vocabulary not found: {path} (train.py writes it next to the checkpoint)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read vocabulary {path}: {type(e).__name__}: {e}") from None

    def fingerprint(self) -> str:
        text = "\n".join(self.itos) + (f"\n#{self.n_target}" if self.n_target != len(self.itos) else "")
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def vocab_beside(checkpoint: str | Path, ckpt: dict) -> Vocab:
    """The vocabulary file next to a checkpoint, checked against the fingerprint the checkpoint recorded."""
    vocab = Vocab.load(Path(checkpoint).parent / ckpt["vocab"]["file"])
    if vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"the vocabulary beside {checkpoint} is not the one it was trained with (fingerprints differ)")
    return vocab


# ----------------------------------------------------------------------------- batches of about N tokens

def pad(seqs: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def make_batch(src: list[list[int]], tgt: list[list[int]] | None = None) -> dict:
    """src (B, S); tgt_in = <bos> y1 .. yn and tgt_out = y1 .. yn <eos>, both (B, T)."""
    batch = {"src": pad(src)}
    if tgt is not None:
        batch["tgt_in"] = pad([[BOS_ID] + t[:-1] for t in tgt])
        batch["tgt_out"] = pad(tgt)
    return batch


def token_batches(lengths: list[tuple[int, int]], max_tokens: int, seed: int, shuffle: bool = True,
                  max_sentences: int | None = None) -> list[list[int]]:
    """Example indices grouped into batches whose padded size, sentences x (longest source + longest target), stays
    <= max_tokens (and, with max_sentences, that hold at most that many sentences). `lengths`: (source, target) pairs.

    Sort by length inside shuffled pools (so batches hold similar lengths and little padding), cut greedily by the
    token budget, shuffle the batches. Depends only on `seed` (train.py passes seed + epoch): resume replays it.
    """
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(idx)
    batches, pool = [], 4096
    for p in range(0, len(idx), pool):
        batch, src_max, tgt_max = [], 0, 0
        for i in sorted(idx[p:p + pool], key=lambda i: lengths[i]):
            s, t = lengths[i]
            grown = (max(src_max, s) + max(tgt_max, t)) * (len(batch) + 1)
            if batch and (grown > max_tokens or len(batch) == max_sentences):
                batches.append(batch)
                batch, src_max, tgt_max = [], 0, 0
            batch.append(i)
            src_max, tgt_max = max(src_max, s), max(tgt_max, t)
        if batch:
            batches.append(batch)
    if shuffle:
        rng.shuffle(batches)
    return batches


# ----------------------------------------------------------------------------- SST-2 splits and batches (classifier)

def sst2_splits(data_dir: str | Path, val_size: int, n_train: int | None = None,
                n_dev: int | None = None) -> tuple[dict[str, tuple[list[str], list[int]]], int]:
    """{"train", "val", "dev"} -> (sentences, labels), and how many training rows were dropped as phrases of val.

    GLUE's test labels are private, so dev is the test set here, scored once at the end. Validation is held out from
    train by `sentence_split` (fixed, whatever the training seed): min(val_size, a tenth of train) whole sentences.
    n_train / n_dev keep only the first rows of each file (--quick).
    """
    texts, labels = load_sst2(data_dir, "train")
    dev_texts, dev_labels = load_sst2(data_dir, "dev")
    texts, labels, dev_texts, dev_labels = texts[:n_train], labels[:n_train], dev_texts[:n_dev], dev_labels[:n_dev]
    n_val = min(val_size, len(texts) // 10)
    if n_val < 1:
        raise UserError(f"SST-2 train in {data_dir} has only {len(texts)} rows: too few to hold out a validation split")
    train_rows, val_rows = sentence_split(texts, n_val, random.Random(0))
    splits = {"train": ([texts[i] for i in train_rows], [labels[i] for i in train_rows]),
              "val": ([texts[i] for i in val_rows], [labels[i] for i in val_rows]),
              "dev": (dev_texts, dev_labels)}
    return splits, len(texts) - len(train_rows) - len(val_rows)


def sentence_split(texts: list[str], n_val: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train rows, val rows) of a training set made of the phrases of its sentences, as SST-2's is.

    SST-2's train set is every phrase of the parse trees of about 6,900 sentences, so a random held-out row would
    nearly always be a phrase of another training row, and its score would measure memory. Validation takes `n_val`
    rows that no other row contains (whole sentences), tried in a random order. Training keeps every other row except
    those that are a phrase inside a validation sentence: their labels would give its answer away. What is left is
    dev's situation: sentences never seen, in whole or in part.
    """
    words = [t.split() for t in texts]
    spaced = [f" {' '.join(w)} " for w in words]  # spaces around: "art" is not inside "party"
    rows_with: dict[str, list[int]] = {}          # word -> the rows that hold it
    for i, w in enumerate(words):
        for word in set(w):
            rows_with.setdefault(word, []).append(i)

    def is_whole(i: int) -> bool:
        if not words[i]:
            return False
        rarest = min(set(words[i]), key=lambda word: len(rows_with[word]))  # a row containing i holds this word too
        return not any(j != i and spaced[i] in spaced[j] for j in rows_with[rarest])

    order = list(range(len(texts)))
    rng.shuffle(order)
    val = []
    for i in order:
        if len(val) == n_val:
            break
        if is_whole(i):
            val.append(i)
    if len(val) < n_val:
        raise UserError(f"--val-size asks for {n_val} whole sentences, but the training set has only {len(val)}")
    phrases = {" ".join(words[i][a:b]) for i in val
               for a in range(len(words[i])) for b in range(a + 1, len(words[i]) + 1)}
    held = set(val)
    train = [i for i in range(len(texts)) if i not in held and " ".join(words[i]) not in phrases]
    return train, val


def encode_sentences(vocab: Vocab, texts: list[str], max_len: int) -> list[list[int]]:
    """<bos> tokens <eos> for each text, lower-cased as SST-2 is, cut to max_len ids. The <bos> is the position that
    --pool first reads; for the mean it is one more token."""
    return [([BOS_ID] + vocab.encode(t.lower()))[:max_len] for t in texts]


def sentence_batches(seqs: list[list[int]], batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Up to batch_size sentences of similar length per batch (token_batches with no token limit). The batches
    depend only on `seed` (seed + epoch in training), so a resumed run sees the same ones."""
    return token_batches([(len(s), 0) for s in seqs], 10 ** 9, seed, shuffle=shuffle, max_sentences=batch_size)
