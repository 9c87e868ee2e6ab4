"""Turning a trained model into translations: greedy and beam search (batched), detokenised text, sacreBLEU.

Greedy search takes the most likely next token every step. Beam search keeps the K most likely partial
translations of every sentence (K * B rows decoded together); a hypothesis that emits <eos> is set aside with
its score divided by a length penalty, ((5 + length) / 6) ** alpha (Wu et al. 2016), because a plain sum of
log-probabilities always prefers short outputs. With K = 1 beam search is exactly greedy search.
"""
from __future__ import annotations

import sacrebleu
import torch
import torch.nn.functional as F

from stage3_attention_seq2seq.data import BOS_ID, EOS_ID, PAD_ID, Vocab, make_batch
from stage3_attention_seq2seq.model import Seq2Seq, select_rows


def length_limits(src_len: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Each sentence's decoding budget (B,): translations here are rarely longer than 1.5x the source + 10.
    It depends on the sentence alone, never on the batch, so batching cannot change a translation."""
    if max_len is not None:
        return torch.full_like(src_len, max_len)
    return src_len * 3 // 2 + 10


def next_token_logits(model: Seq2Seq, y, state, enc):
    """One decoder step; <pad> and <bos> are never a prediction (training never asks for them)."""
    logits, state, w = model.decoder.step(y, state, enc)
    logits[:, [PAD_ID, BOS_ID]] = float("-inf")
    return logits, state, w


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, max_len: int | None = None):
    """-> token ids (B, L) padded after <eos> (or after the length limit), attention (B, L, S) or None."""
    enc, state = model.encode(src, src_len)
    limits = length_limits(src_len, max_len).to(src.device)
    y = torch.full((src.shape[0],), BOS_ID, dtype=torch.long, device=src.device)
    done = torch.zeros_like(y, dtype=torch.bool)
    tokens, weights = [], []
    for t in range(int(limits.max())):
        logits, state, w = next_token_logits(model, y, state, enc)
        y = logits.argmax(-1).masked_fill(done, PAD_ID)  # finished rows only emit padding
        tokens.append(y)
        weights.append(w)
        done |= (y == EOS_ID) | (limits <= t + 1)
        if done.all():
            break
    attn = torch.stack(weights, 1) if weights[0] is not None else None
    return torch.stack(tokens, 1), attn


def length_penalty(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, beam_size: int = 5, alpha: float = 0.6,
                max_len: int | None = None) -> list[dict]:
    """For every sentence, the best finished hypothesis: {"ids": [...], "score": float, "attn": (L, S) or None}."""
    B, K = src.shape[0], beam_size
    enc, state = model.encode(src, src_len)
    rows = torch.arange(B, device=src.device).repeat_interleave(K)      # row b*K + k is beam k of sentence b
    enc, state = select_rows(enc, rows), state.index_select(0, rows)    # (B*K, ...)
    scores = torch.full((B, K), float("-inf"), device=src.device)
    scores[:, 0] = 0.0                        # at first all K beams are the same "<bos>": keep only one alive
    y = torch.full((B * K,), BOS_ID, dtype=torch.long, device=src.device)
    history = torch.zeros(B * K, 0, dtype=torch.long, device=src.device)  # tokens so far (B*K, t)
    attn_history = None                                                   # (B*K, t, S)
    finished = [[] for _ in range(B)]
    limits = length_limits(src_len, max_len).tolist()
    for t in range(max(limits)):
        logits, state, w = next_token_logits(model, y, state, enc)
        logp = F.log_softmax(logits.float(), dim=-1)                      # (B*K, V)
        V = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(2 * K, dim=1)   # 2K: at most K of them end in <eos>, K others go on
        beam, tok = top_idx // V, top_idx % V                             # (B, 2K) each
        is_eos = tok == EOS_ID
        if w is not None:
            attn_history = w.unsqueeze(1) if attn_history is None else torch.cat([attn_history, w.unsqueeze(1)], 1)
        # hypotheses that end here: only those ranked among the K best count (as in fairseq)
        for b, j in zip(*torch.nonzero(is_eos[:, :K] & torch.isfinite(top_scores[:, :K]), as_tuple=True)):
            b, j = int(b), int(j)
            if len(finished[b]) < K:
                row = b * K + int(beam[b, j])
                finished[b].append({"ids": history[row].tolist() + [EOS_ID],
                                    "score": top_scores[b, j].item() / length_penalty(t + 1, alpha),
                                    "attn": None if attn_history is None else attn_history[row].cpu()})
        # the K best hypotheses that go on: stable sort puts the non-<eos> candidates first, in score order
        keep = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]            # (B, K)
        scores = top_scores.gather(1, keep)
        parent = (torch.arange(B, device=src.device).unsqueeze(1) * K + beam.gather(1, keep)).view(-1)  # (B*K,)
        y = tok.gather(1, keep).view(-1)
        history = torch.cat([history.index_select(0, parent), y.unsqueeze(1)], 1)
        state = state.index_select(0, parent)
        if attn_history is not None:
            attn_history = attn_history.index_select(0, parent)
        for b in range(B):  # a sentence at its length limit: its best open hypotheses end here, without <eos>
            if limits[b] == t + 1:
                for k in range(K - len(finished[b])):
                    if torch.isfinite(scores[b, k]):
                        finished[b].append({"ids": history[b * K + k].tolist(),
                                            "score": scores[b, k].item() / length_penalty(t + 1, alpha),
                                            "attn": None if attn_history is None else attn_history[b * K + k].cpu()})
        if all(len(f) >= K for f in finished):
            break
    return [max(f, key=lambda h: h["score"]) for f in finished]


def translate(model: Seq2Seq, src_vocab: Vocab, tgt_vocab: Vocab, sentences: list[str], device, beam_size: int = 1,
              alpha: float = 0.6, batch_size: int = 64, with_attention: bool = False) -> list[dict]:
    """Plain sentences in, {"text", "src_tokens", "tgt_tokens", "attn"} out, in the input order.

    Sentences are decoded in batches of similar length; batching never changes a translation, because
    padding is masked in the encoder (packing) and in attention.
    """
    model.eval()
    ids = [src_vocab.encode(s) for s in sentences]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[dict | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = make_batch([ids[i] for i in chunk])
        src, src_len = batch["src"].to(device), batch["src_len"].to(device)
        if beam_size == 1:
            tokens, attn = greedy_decode(model, src, src_len)
            hyps = [{"ids": tokens[r].tolist(), "attn": None if attn is None else attn[r].cpu()} for r in range(len(chunk))]
        else:
            hyps = beam_search(model, src, src_len, beam_size, alpha)
        for r, i in enumerate(chunk):
            tgt_ids = hyps[r]["ids"]
            n = tgt_ids.index(EOS_ID) + 1 if EOS_ID in tgt_ids else len(tgt_ids)
            item = {"text": tgt_vocab.decode(tgt_ids)}
            if with_attention:
                item.update(src_tokens=[src_vocab.itos[j] for j in ids[i]], tgt_tokens=[tgt_vocab.itos[j] for j in tgt_ids[:n]],
                            attn=None if hyps[r]["attn"] is None else hyps[r]["attn"][:n, :len(ids[i])])
            out[i] = item
    return out


def bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> tuple[float, str]:
    """Corpus sacreBLEU on detokenised text against the raw references, and its signature.

    sacreBLEU tokenises both sides itself (13a), so scores do not depend on our tokeniser and compare
    across papers that report the same signature.
    """
    metric = sacrebleu.metrics.BLEU(lowercase=lowercase)
    score = metric.corpus_score(hypotheses, [references])
    return round(score.score, 2), str(metric.get_signature())
