"""Stage 2 data: a text corpus as one long stream of token ids, cut into parallel streams for truncated BPTT.

    file on disk (or a download) -> text -> tokens (characters or words) -> ids -> (B, N) streams -> (x, y) windows

A language model predicts each token from the ones before it, so the "labels" are the inputs shifted by one.

The sentence classifier (classify.py) reads SST-2 instead, one sentence per example (`sst2_splits`):

    train.tsv.gz / dev.tsv.gz (or a download) -> sentences + labels -> whole-sentence validation split
    -> words -> ids (SentenceVocab, JSON) -> batches of similar length, right-padded
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

# ----------------------------------------------------------------------------- the data sets

# Tiny Shakespeare is one file; nanoGPT's split (first 90 % train, last 10 % val) makes val losses comparable
# with nanoGPT's. WikiText-2 comes split into train/valid/test files: the tokenised v1 files, where rare words
# are already <unk> and every line ends with an <eos> token (PyTorch's word_language_model convention).
DATASETS = {
    "tiny_shakespeare": {
        "folder": "tiny_shakespeare", "files": {"all": "input.txt.gz"}, "splits": ["train", "val"],
        "vocab_type": "char",
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    },
    "wikitext2": {
        "folder": "wikitext-2", "splits": ["train", "val", "test"], "vocab_type": "word",
        "files": {"train": "wiki.train.tokens.gz", "val": "wiki.valid.tokens.gz", "test": "wiki.test.tokens.gz"},
        "hub": ("Salesforce/wikitext", "wikitext-2-v1"),
        "hub_splits": {"train": "train", "val": "validation", "test": "test"},
    },
}
TRAIN_FRACTION = 0.9  # Tiny Shakespeare: nanoGPT's split


def dataset_info(name: str) -> dict:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_text(name: str, data_dir: str | Path, split: str) -> str:
    """The raw text of one split, downloading the data set first if its files are missing."""
    info = dataset_info(name)
    if split not in info["splits"]:
        raise UserError(f"{name} has no {split!r} split; it has: {', '.join(info['splits'])}")
    folder = Path(data_dir) / info["folder"]
    path = folder / info["files"]["all" if "all" in info["files"] else split]
    if not path.is_file():
        download(name, data_dir)
    try:
        text = gzip.open(path, "rt", encoding="utf-8", newline="").read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (is the file truncated or in another "
                        f"format? see {folder / 'SOURCE.md'} for the expected one)") from None
    if "all" in info["files"]:  # one file, split by position
        cut = int(len(text) * TRAIN_FRACTION)
        text = text[:cut] if split == "train" else text[cut:]
    return text


# ----------------------------------------------------------------------------- download when missing

def download(name: str, data_dir: str | Path) -> None:
    """Fetch a data set from its original source and store it in the same format as the offline copy."""
    info = dataset_info(name)
    folder = Path(data_dir) / info["folder"]
    expected = ", ".join(info["files"].values())
    source = info.get("url") or info["hub"][0]
    print(f"data set {name!r} not found in {folder}; downloading it from {source} ...", file=sys.stderr)
    try:
        if "url" in info:
            with urllib.request.urlopen(info["url"], timeout=60) as response:
                texts = {"all": response.read().decode("utf-8")}
        else:
            import datasets
            import huggingface_hub
            datasets.logging.set_verbosity_error()
            huggingface_hub.logging.set_verbosity_error()
            hub = datasets.load_dataset(*info["hub"])
            # each hub row is one line of the original file, newline included; blank lines became ""
            texts = {split: "".join(r["text"] or " \n" for r in hub[hub_split])
                     for split, hub_split in info["hub_splits"].items()}
    except Exception as e:  # no internet, hub down, datasets missing: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"data set {name!r} not found in {folder} (expected {expected}), and downloading {source} failed "
            f"({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run with internet access."
        ) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, text in texts.items():
            atomic_write(folder / info["files"][split], lambda f: f.write(gzip.compress(text.encode("utf-8"))))
    except OSError as e:
        raise UserError(f"downloaded {source} but cannot write it to {folder}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- tokens and the vocabulary

EOS, UNK = "<eos>", "<unk>"


def tokenize(text: str, vocab_type: str) -> list[str]:
    """Characters, or whitespace-separated words with <eos> closing each line (the WikiText convention)."""
    if vocab_type == "char":
        return list(text)
    return [tok for line in text.splitlines() for tok in line.split() + [EOS]]


class Vocab:
    """token <-> id, built on the training split only, stored as JSON (never pickle).

    Character vocabularies are sorted, as nanoGPT's are. A word vocabulary keeps every training word
    (WikiText-2 already replaced rare words by <unk>), most frequent first: the adaptive softmax puts the
    lowest ids in its head cluster. A token outside the vocabulary maps to <unk> when the vocabulary has one;
    otherwise `encode` says which.
    """

    def __init__(self, itos: list[str], vocab_type: str):
        self.itos = itos
        self.vocab_type = vocab_type
        self.stoi = {s: i for i, s in enumerate(itos)}

    @classmethod
    def build(cls, text: str, vocab_type: str) -> "Vocab":
        tokens = tokenize(text, vocab_type)
        if vocab_type == "char":
            itos = sorted(set(tokens))
        else:  # by frequency; Counter keeps first-appearance order among equal counts
            itos = [t for t, _ in Counter(tokens).most_common()]
        return cls(itos, vocab_type)

    def __len__(self) -> int:
        return len(self.itos)

    def unknown(self, text: str) -> list[str]:
        """The distinct tokens of `text` the vocabulary does not hold, sorted."""
        return sorted({t for t in tokenize(text, self.vocab_type) if t not in self.stoi})

    def encode(self, text: str) -> list[int]:
        unk = self.stoi.get(UNK)
        unknown = self.unknown(text) if unk is None else []
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise UserError(f"{len(unknown)} {self.vocab_type}(s) not in the vocabulary: {shown}")
        return [self.stoi.get(t, unk) for t in tokenize(text, self.vocab_type)]

    def decode(self, ids: list[int]) -> str:
        if self.vocab_type == "char":
            return "".join(self.itos[i] for i in ids)
        lines, words = [], []
        for i in ids:  # words joined by spaces; <eos> ends a line
            if self.itos[i] == EOS:
                lines.append(" ".join(words) + "\n")
                words = []
            else:
                words.append(self.itos[i])
        return "".join(lines) + " ".join(words)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"vocab_type": self.vocab_type, "itos": self.itos}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(obj["itos"], obj["vocab_type"])
        except FileNotFoundError:
            raise UserError(f"vocabulary not found: {path} (train.py writes it next to the checkpoint)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read vocabulary {path}: {type(e).__name__}: {e}") from None

    def fingerprint(self) -> str:
        """A short hash a checkpoint keeps, so a vocabulary from another run is caught before it gives nonsense."""
        return hashlib.sha256(("\n".join(self.itos) + self.vocab_type).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- streams and BPTT windows

def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut one long stream (N,) into `batch_size` parallel streams (B, N // B), dropping the remainder.

    Row b is a contiguous piece of the text, so the hidden state left after one window of row b is the
    right starting state for the next window of row b: that is what lets truncated BPTT carry state.
    """
    n = ids.numel() // batch_size
    if n < 2:
        raise UserError(f"{ids.numel()} tokens are too few for batch size {batch_size}")
    return ids[: n * batch_size].view(batch_size, n)  # (B, N)


def get_window(streams: torch.Tensor, start: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x = streams[:, start:start+T] and targets y = the same shifted by one token; T <= bptt."""
    T = min(bptt, streams.shape[1] - 1 - start)
    return streams[:, start:start + T], streams[:, start + 1:start + 1 + T]  # (B, T), (B, T)


# ----------------------------------------------------------------------------- SST-2 for the sentence classifier

# GLUE's SST-2: gzipped TSV with the header sentence<TAB>label (0 negative, 1 positive), lower-cased and tokenised
# (`it 's`, `does n't`). Dev is the test set here: GLUE's test labels are private.
SST2 = {"folder": "glue/sst2", "files": {"train": "train.tsv.gz", "dev": "dev.tsv.gz"},
        "hub": ("nyu-mll/glue", "sst2"), "hub_splits": {"train": "train", "dev": "validation"}}


def load_sst2(data_dir: str | Path, split: str) -> tuple[list[str], list[int]]:
    """Sentences and labels of `train` or `dev`, downloading SST-2 first if the file is missing.

    Sentences hold bare quotes (`" a movie`), so CSV quoting must be off, or rows merge.
    """
    if split not in SST2["files"]:
        raise UserError(f"SST-2 has no {split!r} split here; it has: {', '.join(SST2['files'])}")
    folder = Path(data_dir) / SST2["folder"]
    path = folder / SST2["files"][split]
    if not path.is_file():
        download_sst2(folder)
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]
    except (OSError, EOFError, UnicodeDecodeError, KeyError, TypeError, ValueError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e} (expected a gzipped TSV with the header "
                        f"sentence<TAB>label; see {folder / 'SOURCE.md'})") from None


def download_sst2(folder: Path) -> None:
    """Fetch `nyu-mll/glue` config `sst2` from the Hugging Face hub and write the missing files in the local format."""
    hub_id, config = SST2["hub"]
    expected = ", ".join(SST2["files"].values())
    print(f"SST-2 not found in {folder}; downloading {hub_id} ({config}) from the Hugging Face hub ...",
          file=sys.stderr)
    try:
        import datasets
        datasets.logging.set_verbosity_error()
        hub = datasets.load_dataset(hub_id, config)
    except Exception as e:  # no internet, hub down, datasets missing: all end the same way for the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"SST-2 not found in {folder} (expected {expected}), and downloading {hub_id} ({config}) "
                        f"failed ({reason}). Set --data-dir or MY_LLM_DATA to a folder that has it, or run with "
                        f"internet access.") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, hub_split in SST2["hub_splits"].items():
            path = folder / SST2["files"][split]
            if path.is_file():  # never overwrite a local file
                continue
            text = "sentence\tlabel\n" + "".join(f"{r['sentence']}\t{int(r['label'])}\n" for r in hub[hub_split])
            atomic_write(path, lambda f: f.write(gzip.compress(text.encode("utf-8"))))
    except OSError as e:
        raise UserError(f"downloaded {hub_id} but cannot write it to {folder}: {e.strerror or e}") from None


def sentence_split(texts: list[str], n_val: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train rows, validation rows) for SST-2's train set, where most rows are phrases of other rows.

    SST-2 train holds every phrase of each sentence's parse tree with its own label, so a randomly held-out row is
    nearly always inside some training row, and a validation score on it measures memory. Validation takes `n_val`
    whole sentences instead, rows that no other row contains, and train loses every row that is a phrase of one of
    them. That is the situation of dev: sentences never seen, in whole or in part.
    """
    words = [t.split() for t in texts]
    padded = [f" {' '.join(w)} " for w in words]    # spaces around, so that "art" is not found inside "party"
    rows_with: dict[str, list[int]] = {}            # word -> the rows that hold it
    for i, ws in enumerate(words):
        for w in set(ws):
            rows_with.setdefault(w, []).append(i)

    def is_whole(i: int) -> bool:
        if not words[i]:
            return False
        rarest = min(set(words[i]), key=lambda w: len(rows_with[w]))  # a row containing i must hold its rarest word
        return not any(j != i and padded[i] in padded[j] for j in rows_with[rarest])

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
    phrases = {" ".join(words[i][a:b])                # every span of words of every held-out sentence
               for i in val for a in range(len(words[i])) for b in range(a + 1, len(words[i]) + 1)}
    held = set(val)
    train = [i for i in range(len(texts)) if i not in held and " ".join(words[i]) not in phrases]
    return train, val


PAD = "<pad>"


def tokenize_sentence(text: str) -> list[str]:
    """Words the way SST-2 writes them: lower case, `n't` and `'s` split off, punctuation at a word's end split off.

    SST-2 is already in this form: its dev rows come out unchanged, and of 67,349 train rows only 28 change (those
    that end in an initial, `jason x.`). The rules are there so that a sentence typed by a person ("It's great!")
    meets the same vocabulary (`it 's great !`).
    """
    text = re.sub(r"(\w)n't\b", r"\1 n't", text.lower())
    text = re.sub(r"(\w)'(s|re|ve|ll|d|m)\b", r"\1 '\2", text)
    text = re.sub(r"(\w)([,!?;:]+)(?=\s|$)", r"\1 \2", text)
    text = re.sub(r"(^|\s)([^\s.]*\w)(\.+)\s*$", r"\1\2 \3", text)  # a full stop that ends the text; not "mr." inside
    return text.split()


class SentenceVocab:
    """word <-> id for the classifier, built on the training rows only, stored as JSON (never pickle).

    Id 0 is <pad> (fills a batch's shorter sentences), 1 is <unk>. A word found in fewer than `min_freq` training
    rows is left out, so <unk> is trained on real rare words and means something when dev brings words train never had.
    """

    def __init__(self, itos: list[str]):
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"the first two tokens must be {PAD} and {UNK}")
        self.itos = itos
        self.stoi = {s: i for i, s in enumerate(itos)}

    @classmethod
    def build(cls, sentences: list[str], min_freq: int = 1) -> "SentenceVocab":
        counts = Counter(w for s in sentences for w in set(tokenize_sentence(s)))  # in how many rows each word is
        # Most frequent first, ties alphabetical. The order in which a set yields strings changes from one Python
        # process to the next (hash randomisation), so leaving ties to the Counter would number the words, and
        # initialise their embeddings, differently in every run of the same command.
        kept = [w for w, n in counts.items() if n >= min_freq and w not in (PAD, UNK)]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls([PAD, UNK] + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, sentence: str) -> list[int]:
        """Ids of the sentence's words; never empty (an empty sentence is one <unk>), so it has a last token."""
        return [self.stoi.get(w, 1) for w in tokenize_sentence(sentence)] or [1]

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"kind": "sentence", "itos": self.itos}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "SentenceVocab":
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(obj["itos"])
        except FileNotFoundError:
            raise UserError(f"vocabulary not found: {path} (classify.py writes it next to the checkpoint)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read vocabulary {path}: {type(e).__name__}: {e}") from None

    def fingerprint(self) -> str:
        """A short hash a checkpoint keeps, so a vocabulary from another run is caught before it gives nonsense."""
        return hashlib.sha256("\n".join(self.itos).encode("utf-8")).hexdigest()[:16]


def length_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """One epoch's batches of row indices, each of sentences of similar length.

    A batch is padded to its longest sentence and the network steps through every position, pads included; SST-2
    mixes 2-word phrases with 50-word sentences, so random batches would spend much of their time on pads. Shuffle,
    sort each pool of `pool` batches by length, cut it into batches, shuffle the batches: every row once per epoch,
    a new order each epoch, and the same rng state gives the same batches (what an exact --resume needs).
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = pool * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def make_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest: ids (B, T) and lengths (B,), the number of real tokens of each."""
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, lengths


def vocab_beside(checkpoint: str | Path, ckpt: dict, vocab_class=None):
    """The vocabulary file next to a checkpoint (a Vocab, or `vocab_class`: SentenceVocab for the classifier), checked
    against the fingerprint the checkpoint recorded: a checkpoint never meets a vocabulary it was not trained with."""
    path = Path(checkpoint).parent / ckpt["vocab"]["file"]
    vocab = (vocab_class or Vocab).load(path)
    if vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"{path} is not the vocabulary {checkpoint} was trained with (fingerprints differ)")
    return vocab


def sst2_splits(data_dir: str | Path, val_size: int | None, min_freq: int, vocab: SentenceVocab | None = None,
                limits: tuple[int, int] | None = None) -> tuple[dict, SentenceVocab, str]:
    """The classifier's data: {"train", "val", "dev"} -> (id lists, labels), the vocabulary, and a line for the log.

    Val is `val_size` whole sentences held out from train (default: 500, at most 10 % of train; `sentence_split`),
    always the same ones (its own random.Random(0), whatever a run's --seed). The vocabulary is built on the training
    rows that remain, unless a resumed run passes its own. `limits` = (train rows, dev rows) cuts both files first.
    """
    texts = {s: load_sst2(data_dir, s) for s in ("train", "dev")}
    if limits:
        texts = {s: (x[:n], y[:n]) for (s, (x, y)), n in zip(texts.items(), limits)}
    sentences, labels = texts["train"]
    n_val = val_size or min(500, len(sentences) // 10)
    if not 1 <= n_val < len(sentences):
        raise UserError(f"--val-size {n_val} must leave training rows: train has {len(sentences)}")
    train_rows, val_rows = sentence_split(sentences, n_val, random.Random(0))
    vocab = vocab or SentenceVocab.build([sentences[i] for i in train_rows], min_freq)
    data = {"train": ([vocab.encode(sentences[i]) for i in train_rows], [labels[i] for i in train_rows]),
            "val": ([vocab.encode(sentences[i]) for i in val_rows], [labels[i] for i in val_rows]),
            "dev": ([vocab.encode(s) for s in texts["dev"][0]], texts["dev"][1])}
    dropped = len(sentences) - len(train_rows) - len(val_rows)
    unk = sum(i == 1 for ids in data["dev"][0] for i in ids) / max(1, sum(len(ids) for ids in data["dev"][0]))
    summary = (f"SST-2: {len(train_rows):,} train / {len(val_rows):,} val (whole sentences from train; {dropped:,} of "
               f"their phrases left out of train) / {len(data['dev'][1]):,} dev | vocabulary {len(vocab):,} words "
               f"(min freq {min_freq}), {unk:.1%} of dev's words are <unk>")
    return data, vocab, summary
