"""Stage 6 pre-training data: documents -> WordPiece ids (encoded once, cached) -> BERT examples -> masked batches.

    WikiText-2 train + IMDb unlabelled reviews (or the --corpus files)
      -> documents (a Wikipedia article, a review, a block of lines) -> sentences          (documents.py)
      -> ids of every sentence, written once to <out-dir>/corpus_<fingerprint>.npz and read back by later runs
      -> examples, of two kinds, or a mix of both (--pair-share):
           packed (default, RoBERTa)   [CLS] 126 tokens of running text [SEP]               segment ids 0 ... 0
           pairs  (--nsp, BERT)        [CLS] A [SEP] B [SEP], B the next segment or not     segment ids 0 ... 0 1 ... 1
           pairs  (--sop, ALBERT)      [CLS] A [SEP] B [SEP], A and B in their order or swapped
      -> a batch padded with [PAD] -> mask_tokens: 15% of the real tokens become targets

The special ids ([CLS], [SEP], [PAD], [MASK], [UNK]) are the tokenizer's (`tok.cls_id`, ...): 0-4 in a vocabulary
trained here, elsewhere in a real one (bert-base-uncased: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103).
The functions below take the tokenizer as `tok`; left out, it is COURSE_LAYOUT, the ids of a vocabulary trained here.

Why the IMDb reviews. The fine-tuning task the course aims at is SST-2, sentences from film reviews. WikiText-2 alone is
2 million words of encyclopaedia; the 50,000 unlabelled IMDb reviews (imdb/unsup.csv.gz, about 12 million words) are
text from the same domain, the "in-domain pre-training" that Gururangan et al. (2020) found to help downstream tasks.
They carry no labels, so nothing of the test sets leaks in.

Why dynamic masking. BERT masked its corpus once, before training (10 copies with different masks for 40 epochs).
RoBERTa (Liu et al. 2019, section 4.1) draws a new mask every time an example is used: as good or slightly better,
with no copies. Here `mask_tokens` runs on every batch as it is drawn, so each pass over the data sees new masks.

Why packing without NSP. RoBERTa (section 4.2) found that dropping next-sentence prediction matches or slightly improves
the downstream results, and that inputs filled with contiguous text (FULL-SENTENCES: across document borders, with a
separator between documents) do as well as or better than pairs of segments, with more real tokens per example and no
padding. Both recipes are here: `PackedWindows` (the default) and `SentencePairs` (--nsp).

Why sentence order, and why a mix. Four of GLUE's six tasks are sentence pairs; packed text never shows the model a
second segment (segment id 1), and MLM alone never trains the [CLS] state or the pooler. NSP does, but ALBERT (Lan et
al. 2020, section 4.6) found it too easy: a random B usually comes from another topic, so NSP is solved by topic alone.
Sentence-order prediction (SOP) takes both segments from the same place and asks whether they are in their order or
swapped: only coherence tells them apart. `MixedExamples` draws a pair with probability --pair-share and a packed
window otherwise, so that most of the compute still goes to full windows of running text.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from scripts.common import UserError, atomic_write
# the text itself comes from documents.py (its data sets IMDB_UNSUP and WIKITEXT are named here too)
from stage6_bert.documents import (IMDB_UNSUP, UNKNOWN_WORD, WIKITEXT, load_documents, split_documents,  # noqa: F401
                                   vocabulary_texts)
from stage6_bert.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer

IS_NEXT, NOT_NEXT = 0, 1  # NSP labels, in BERT's (and the model's) order
IN_ORDER, SWAPPED = 0, 1  # SOP labels (ALBERT): the same two-way head, "the pair as the text has it" first
NO_LABEL = -100           # a packed window in a mixed batch: no sentence-task label, ignored by the loss
COURSE_LAYOUT = WordPieceTokenizer(SPECIAL_TOKENS)  # no words: only the special ids of a vocabulary trained here (0-4)


# ----------------------------------------------------------------------------- ids, encoded once

@dataclass
class Corpus:
    """Every token of every document in one array, and where each sentence and each document starts in it."""
    ids: np.ndarray              # (N,) all sentences one after another (uint16 when the vocabulary fits, else int32)
    sentence_starts: np.ndarray  # (S + 1,) int64: sentence s is ids[sentence_starts[s] : sentence_starts[s + 1]]
    doc_starts: np.ndarray       # (D + 1,) int64: document d is sentences doc_starts[d] .. doc_starts[d + 1] - 1

    @classmethod
    def from_token_lists(cls, documents: Iterable[list[list[int]]], vocab_size: int = 2 ** 16) -> "Corpus":
        """documents[d][s] = the ids of sentence s of document d. Empty sentences are dropped (a document may end up
        with none; it stays, so document numbers do not move)."""
        ids, sentence_lengths, doc_lengths = array("i"), [], []
        for doc in documents:
            kept = [s for s in doc if len(s)]
            for s in kept:
                ids.extend(s)
            sentence_lengths += [len(s) for s in kept]
            doc_lengths.append(len(kept))
        dtype = np.uint16 if vocab_size <= 2 ** 16 else np.int32
        return cls(np.frombuffer(ids, dtype=np.int32).astype(dtype),
                   np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)]).astype(np.int64),
                   np.concatenate([[0], np.cumsum(doc_lengths, dtype=np.int64)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.doc_starts) - 1

    def doc_range(self, d: int) -> tuple[int, int]:
        """(start, end) of document d in `ids`: its sentences are contiguous there."""
        return int(self.sentence_starts[self.doc_starts[d]]), int(self.sentence_starts[self.doc_starts[d + 1]])

    def sentence_ranges(self, d: int) -> list[tuple[int, int]]:
        starts = self.sentence_starts[self.doc_starts[d]:self.doc_starts[d + 1] + 1].tolist()
        return list(zip(starts, starts[1:]))

    def save(self, path: Path) -> None:
        atomic_write(path, lambda f: np.savez(f, ids=self.ids, sentence_starts=self.sentence_starts,
                                              doc_starts=self.doc_starts))

    @classmethod
    def load(cls, path: Path) -> "Corpus":
        with np.load(path) as f:
            return cls(f["ids"], f["sentence_starts"], f["doc_starts"])


def encode_sentence(tok: WordPieceTokenizer, sentence: str) -> list[int]:
    """tok.encode, except that WikiText's "<unk>" (a word it dropped from its vocabulary) becomes one [UNK]: a special
    token, never masked and never predicted, rather than three pieces "<", "unk", ">" that the model would learn to
    predict like words."""
    if UNKNOWN_WORD not in sentence:
        return tok.encode(sentence)
    ids = []
    for k, part in enumerate(sentence.split(UNKNOWN_WORD)):
        if k:
            ids.append(tok.unk_id)
        ids += tok.encode(part)
    return ids


def encode_documents(tok: WordPieceTokenizer, documents: list[list[str]]) -> Corpus:
    """One document at a time (a generator): ids as Python lists would take 20 times the memory of the array."""
    return Corpus.from_token_lists(([encode_sentence(tok, s) for s in doc] for doc in documents), len(tok))


def corpus_fingerprint(documents: list[list[str]], tokenizer_path: Path) -> str:
    """A hash of the tokenizer file and of the text itself: the cache is reused only for the very same ids."""
    h = hashlib.sha256(tokenizer_path.read_bytes())
    for doc in documents:
        h.update("\n".join(doc).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def prepare(data_dir: str | Path, out_dir: str | Path, *, corpus: list[str] | None = None, imdb_unsup: int = 50_000,
            vocab_size: int = 8000, tokenizer_file: str | Path | None = None, max_chars: int | None = None,
            log=print) -> tuple[WordPieceTokenizer, Corpus, dict]:
    """Read the documents, get a tokenizer, and encode the corpus, or find it encoded already.

    The tokenizer is `tokenizer_file` (written to <out_dir>/tokenizer.json in the course's format), else
    <out_dir>/tokenizer.json if it is there, else a new WordPiece vocabulary of `vocab_size` trained on the training
    documents (never the held-out ones). The ids go to <out_dir>/corpus_<fingerprint>.npz; the next run with the same
    text and tokenizer loads them in a fraction of a second instead of encoding again. -> (tokenizer, corpus, a summary
    for the log and result file).
    """
    out_dir = Path(out_dir)
    documents = load_documents(data_dir, corpus, imdb_unsup, max_chars)
    train_docs, _ = split_documents(len(documents))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = out_dir / "tokenizer.json"
    if tokenizer_file:  # the course's JSON, a Hugging Face tokenizer.json or a vocab.txt: kept as the course's JSON
        tok = WordPieceTokenizer.load(tokenizer_file)  # checks the file before it is copied
        if not tok_path.is_file() or tok_path.read_bytes() != Path(tokenizer_file).read_bytes():
            saved = WordPieceTokenizer.load(tok_path) if tok_path.is_file() else None
            if saved is None or (saved.vocab, saved.settings()) != (tok.vocab, tok.settings()):
                tok.save(tok_path)
    elif tok_path.is_file():
        tok = WordPieceTokenizer.load(tok_path)
        log(f"using the tokenizer in {tok_path} ({len(tok):,} tokens)")
    else:
        log(f"training a WordPiece tokenizer ({vocab_size:,} tokens) on {len(train_docs):,} documents ...")
        tok = WordPieceTokenizer.train(vocabulary_texts(documents, train_docs), vocab_size)
        tok.save(tok_path)
    fingerprint = corpus_fingerprint(documents, tok_path)
    cache = out_dir / f"corpus_{fingerprint}.npz"
    if cache.is_file():
        encoded = Corpus.load(cache)
    else:
        log(f"encoding {len(documents):,} documents, {sum(map(len, documents)):,} sentences ...")
        encoded = encode_documents(tok, documents)
        encoded.save(cache)
    summary = {"fingerprint": fingerprint, "documents": len(encoded), "sentences": len(encoded.sentence_starts) - 1,
               "tokens": len(encoded.ids), "vocab_size": len(tok), "cache": cache.name}
    log(f"corpus: {summary['documents']:,} documents, {summary['sentences']:,} sentences, {summary['tokens']:,} tokens "
        f"({cache})")
    return tok, encoded, summary


# ----------------------------------------------------------------------------- examples

class PackedWindows:
    """Without NSP (RoBERTa's FULL-SENTENCES): the documents as one stream of ids with a [SEP] between documents, cut
    into consecutive windows of max_len - 2 tokens. Example i is [CLS] window_i [SEP], all of it segment 0. Every
    example is full (only the very last one is shorter), so no compute goes to padding. tok: whose [CLS] and [SEP]."""

    def __init__(self, corpus: Corpus, docs: list[int], max_len: int, tok: WordPieceTokenizer = COURSE_LAYOUT):
        if max_len < 3:
            raise ValueError(f"max_len {max_len} leaves no room for [CLS] and [SEP]")
        self.cls_id, self.sep_id = tok.cls_id, tok.sep_id
        pieces = []
        for d in docs:
            start, end = corpus.doc_range(d)
            pieces += [corpus.ids[start:end], np.array([self.sep_id], dtype=corpus.ids.dtype)]
        self.stream = np.concatenate(pieces[:-1])   # (N,): no [SEP] after the last document
        self.width = max_len - 2

    def __len__(self) -> int:
        return -(-len(self.stream) // self.width)   # ceil

    def example(self, i: int, generator: torch.Generator | None = None):
        """-> (ids, segment ids, None): two (L,) int64 arrays, L <= max_len; no NSP label."""
        window = self.stream[i * self.width:(i + 1) * self.width].astype(np.int64)
        ids = np.concatenate([[self.cls_id], window, [self.sep_id]])
        return ids, np.zeros_like(ids), None


class SentencePairs:
    """Sentence pairs, for NSP (BERT) or SOP (ALBERT): each document is cut into segments of whole sentences, of at
    most (max_len - 3) // 2 tokens (a longer sentence is cut into pieces) so that any two segments fit in one input,
    and of at most half the document so that a short document of two sentences still gives a pair. Example i is
    [CLS] A [SEP] B [SEP], built from the i-th segment that has a successor in its document, X, and that successor, Y:
    - objective "nsp": A = X and B = Y (label 0, IsNext) or, half of the time, a segment of another document (label
      1, NotNext);
    - objective "sop": A = X and B = Y (label 0, in order) or, half of the time, A = Y and B = X (label 1, swapped).
    The coin and the random segment are drawn from `generator` each time the example is used, so, like the masks, the
    pairs change from epoch to epoch. tok: whose [CLS], [SEP]."""

    OBJECTIVES = ("nsp", "sop")

    def __init__(self, corpus: Corpus, docs: list[int], max_len: int, tok: WordPieceTokenizer = COURSE_LAYOUT,
                 objective: str = "nsp"):
        if max_len < 5:
            raise ValueError(f"max_len {max_len} leaves no room for [CLS] A [SEP] B [SEP]")
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective {objective!r}: expected one of {self.OBJECTIVES}")
        self.objective = objective
        self.cls_id, self.sep_id = tok.cls_id, tok.sep_id
        half = (max_len - 3) // 2
        segments = []   # (start, end, n): corpus.ids[start:end] is a segment of document docs[n]
        for n, d in enumerate(docs):
            start, end = corpus.doc_range(d)
            target = min(half, max(1, (end - start + 1) // 2))  # a segment grows up to this
            seg = None  # (start, end) of the segment being filled
            for s_start, s_end in corpus.sentence_ranges(d):
                for a in range(s_start, s_end, half):   # a sentence in pieces of at most `half` tokens
                    b = min(a + half, s_end)
                    if seg is not None and b - seg[0] <= target:
                        seg = (seg[0], b)               # the piece still fits: the segment grows
                    else:
                        if seg is not None:
                            segments.append((*seg, n))
                        seg = (a, b)
            if seg is not None:
                segments.append((*seg, n))
        table = np.array(segments, dtype=np.int64).reshape(-1, 3)
        self.corpus, self.max_len = corpus, max_len
        self.starts, self.ends, self.owner = table[:, 0], table[:, 1], table[:, 2]   # (K,) each
        self.first = np.searchsorted(self.owner, np.arange(len(docs) + 1))  # doc n: segments first[n] .. first[n+1]-1
        self.heads = np.flatnonzero(self.owner[:-1] == self.owner[1:])       # segments followed by one of their doc
        n_docs = len(np.unique(self.owner))
        if len(self.heads) == 0 or n_docs < 2:
            raise UserError(f"too little text for next-sentence pairs: {n_docs} document(s) with text, "
                            f"{len(self.heads)} segment(s) followed by another; use longer documents or drop "
                            f"--{objective}")

    def __len__(self) -> int:
        return len(self.heads)

    def segment(self, k: int) -> np.ndarray:
        return self.corpus.ids[self.starts[k]:self.ends[k]].astype(np.int64)

    def example(self, i: int, generator: torch.Generator):
        """-> (ids, segment ids, label): [CLS] A [SEP] B [SEP] and 0 for "[CLS] A [SEP]", 1 for "B [SEP]"; the label
        is NSP's (IS_NEXT, NOT_NEXT) or SOP's (IN_ORDER, SWAPPED)."""
        a = int(self.heads[i])
        if torch.rand(1, generator=generator).item() < 0.5:
            b, label = a + 1, IS_NEXT                       # = IN_ORDER: the two segments as the text has them
        elif self.objective == "sop":
            a, b, label = a + 1, a, SWAPPED                 # the same two segments, the second one first
        else:  # any segment outside A's document: draw among the others, then step over the document's own
            lo, hi = int(self.first[self.owner[a]]), int(self.first[self.owner[a] + 1])
            r = int(torch.randint(len(self.starts) - (hi - lo), (1,), generator=generator).item())
            b, label = (r if r < lo else r + hi - lo), NOT_NEXT
        ids_a, ids_b = self.segment(a), self.segment(b)
        ids = np.concatenate([[self.cls_id], ids_a, [self.sep_id], ids_b, [self.sep_id]])
        segments = np.concatenate([np.zeros(len(ids_a) + 2, np.int64), np.ones(len(ids_b) + 1, np.int64)])
        return ids, segments, label


class MixedExamples:
    """Packed text with sentence pairs mixed in: example i is, with probability pair_share (drawn from `generator`
    each time it is used), a random sentence pair, and otherwise packed window i. An epoch is one pass over the
    packed windows' positions, so the compute goes mostly to full windows of running text while the pairs train the
    second segment, the [CLS] state and the pooler. A packed window's label is NO_LABEL."""

    def __init__(self, packed: PackedWindows, pairs: SentencePairs, pair_share: float):
        if not 0 < pair_share < 1:
            raise ValueError(f"pair_share {pair_share}: a mix needs 0 < pair_share < 1")
        self.packed, self.pairs, self.pair_share = packed, pairs, pair_share

    def __len__(self) -> int:
        return len(self.packed)

    def example(self, i: int, generator: torch.Generator):
        """-> (ids, segment ids, label): a pair and its label, or window i and NO_LABEL."""
        if torch.rand(1, generator=generator).item() < self.pair_share:
            j = int(torch.randint(len(self.pairs), (1,), generator=generator).item())
            return self.pairs.example(j, generator)
        ids, segments, _ = self.packed.example(i, generator)
        return ids, segments, NO_LABEL


# ----------------------------------------------------------------------------- batches and masking

def collate(examples: list[tuple], tok: WordPieceTokenizer = COURSE_LAYOUT) -> dict[str, torch.Tensor]:
    """Examples -> one batch, right-padded with tok's [PAD] to the longest: input_ids, token_type_ids and
    attention_mask (1 at real tokens, 0 at pads), each (B, T), and nsp_labels (B,) when the examples have them: the
    sentence task's labels (NSP or SOP; the model's two-way head is called nsp either way), NO_LABEL for a packed
    window of a mixed batch."""
    B, T = len(examples), max(len(ids) for ids, _, _ in examples)
    input_ids = torch.full((B, T), tok.pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((B, T), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for row, (ids, segments, _) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.from_numpy(ids)
        token_type_ids[row, :len(ids)] = torch.from_numpy(segments)
        attention_mask[row, :len(ids)] = 1
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    if any(label is not None for _, _, label in examples):
        batch["nsp_labels"] = torch.tensor([NO_LABEL if label is None else label for _, _, label in examples])
    return batch


def mask_tokens(ids: torch.Tensor, special_mask: torch.Tensor, vocab_size: int, generator: torch.Generator,
                mask_prob: float = 0.15, mask_id: int = COURSE_LAYOUT.mask_id,
                special_ids: tuple[int, ...] = tuple(COURSE_LAYOUT.special_ids)) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption (Devlin et al. 2019, section 3.1 and appendix A.1), drawn afresh for every batch.

    Each token where special_mask is False is chosen with probability mask_prob. A chosen token is a target: labels
    holds its id there (-100 everywhere else: the loss ignores it). In the input, a chosen token becomes [MASK] 80% of
    the time, a random token (never a special one) 10% of the time, and stays as it is 10% of the time. Why not always
    [MASK]: fine-tuning inputs never hold [MASK]; if only [MASK] positions were ever predicted, the model would need no
    good representation of the real tokens it sees. With the random 10% and the kept 10%, any input token may be a
    target, and the model cannot trust a word just because it is not [MASK].

    ids (B, T) int64; special_mask (B, T) bool, True where a token must never be chosen ([CLS], [SEP], [PAD], ...);
    generator: a CPU torch.Generator. mask_id: the tokenizer's [MASK]; special_ids: the ids a random token must never
    be (tok.special_ids; the defaults are those of a vocabulary trained here, 4 and 0-4). Pure: `ids` is not changed,
    and the same generator state gives the same result. -> (input_ids (B, T), labels (B, T)).
    """
    chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & ~special_mask           # (B, T)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    how = torch.rand(ids.shape, generator=generator)                                            # (B, T): which of 3
    # a random word: its rank among the vocab_size - len(special_ids) words, then its id, stepping over each special
    # id below it (a vocabulary trained here: rank + 5; bert-base-uncased: ranks from 100 on step over 100 .. 103)
    random_ids = torch.randint(vocab_size - len(special_ids), ids.shape, generator=generator)   # (B, T)
    for special in sorted(special_ids):
        random_ids += random_ids >= special
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(ids, mask_id), ids)               # 80%: [MASK]
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)               # 10%: random
    return inputs, labels                                                                       # 10%: unchanged


def mask_batch(batch: dict, vocab_size: int, generator: torch.Generator, mask_prob: float = 0.15,
               tok: WordPieceTokenizer = COURSE_LAYOUT) -> dict:
    """A collated batch with its input ids masked and mlm_labels (B, T) added. tok's special tokens ([PAD], [UNK],
    [CLS], [SEP], [MASK]; ids 0-4 in a vocabulary trained here) are never chosen; [UNK] neither, as in Hugging Face:
    predicting it teaches nothing."""
    special = torch.isin(batch["input_ids"], torch.tensor(tok.special_ids))                     # (B, T)
    input_ids, labels = mask_tokens(batch["input_ids"], special, vocab_size, generator, mask_prob, tok.mask_id,
                                    tuple(tok.special_ids))
    return {**batch, "input_ids": input_ids, "mlm_labels": labels}


def fixed_batches(dataset, batch_size: int, vocab_size: int, mask_prob: float, seed: int,
                  tok: WordPieceTokenizer = COURSE_LAYOUT):
    """Every example of `dataset` once, in order, masked (and paired) by a generator seeded with `seed`: the same
    batches at every call, so that validation scores from different steps compare."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(dataset), batch_size):
        examples = [dataset.example(i, generator) for i in range(start, min(start + batch_size, len(dataset)))]
        yield mask_batch(collate(examples, tok), vocab_size, generator, mask_prob, tok)
