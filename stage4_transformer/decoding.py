"""Greedy and beam search for the Transformer, with cached decoder states; text in, text out; sacreBLEU.

Without a cache, generating token t means running the decoder over all t tokens again (the causal mask makes the
earlier positions' outputs identical every time). The cache keeps, per decoder layer, the keys and values of the
tokens already generated and of the source, so each step feeds only the newest token: cost per step O(t) instead of
O(t^2). `Transformer.decode(..., cache, start)` does one step; beam search reorders the caches with the beams.
"""
from __future__ import annotations

import sacrebleu
import torch
import torch.nn.functional as F

from stage4_transformer.data import BOS_ID, EOS_ID, PAD_ID, Vocab, make_batch
from stage4_transformer.model import Transformer


def length_limits(src: torch.Tensor, max_len: int | None = None, positions: int = 256) -> torch.Tensor:
    """Each sentence's budget (B,): 1.5x its own source length + 10, never the batch's, so batching changes nothing;
    never past the positional table (`positions` - 1 generated tokens after <bos>)."""
    src_len = (src != PAD_ID).sum(1)
    limits = torch.full_like(src_len, max_len) if max_len is not None else src_len * 3 // 2 + 10
    return limits.clamp(max=positions - 1)


class Stepper:
    """Feeds the decoder one token per row per call, with or without the cache (for comparison)."""

    def __init__(self, model: Transformer, src: torch.Tensor, use_cache: bool = True):
        self.model, self.use_cache = model, use_cache
        self.memory, self.src_mask, _ = model.encode(src)
        self.cache = [{} for _ in model.decoder] if use_cache else None
        self.prefix = torch.full((src.shape[0], 1), BOS_ID, dtype=torch.long, device=src.device)  # (N, t)

    def step(self):
        """-> log-probabilities of the next token (N, V) and the cross-attention of the last layer (N, h, S)."""
        t = self.prefix.shape[1]
        if self.use_cache:
            logits, _, cross = self.model.decode(self.prefix[:, -1:], self.memory, self.src_mask, self.cache, start=t - 1)
        else:
            logits, _, cross = self.model.decode(self.prefix, self.memory, self.src_mask)
        logits = logits[:, -1].float()
        logits[:, [PAD_ID, BOS_ID]] = float("-inf")  # never predicted: training never asks for them
        return F.log_softmax(logits, -1), cross[-1][:, :, -1]

    def append(self, tokens: torch.Tensor, parent: torch.Tensor | None = None) -> None:
        """Extend every row by a token; with `parent` (beam search), row i continues row parent[i]."""
        if parent is not None:  # a beam's parent is a beam of the same sentence: the source side stays as it is
            self.prefix = self.prefix.index_select(0, parent)
            if self.cache is not None:
                for layer in self.cache:
                    layer["self"] = tuple(x.index_select(0, parent) for x in layer["self"])
        self.prefix = torch.cat([self.prefix, tokens.unsqueeze(1)], 1)


@torch.no_grad()
def greedy_decode(model: Transformer, src: torch.Tensor, max_len: int | None = None, use_cache: bool = True):
    """-> token ids (B, L) padded after <eos>, last-layer cross-attention averaged over heads (B, L, S)."""
    limits = length_limits(src, max_len, model.cfg.max_len)
    stepper = Stepper(model, src, use_cache)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    tokens, attn = [], []
    for t in range(int(limits.max())):
        logp, cross = stepper.step()
        y = logp.argmax(-1).masked_fill(done, PAD_ID)
        tokens.append(y)
        attn.append(cross.mean(1))
        done |= (y == EOS_ID) | (limits <= t + 1)
        if done.all():
            break
        stepper.append(y)
    return torch.stack(tokens, 1), torch.stack(attn, 1)


def length_penalty(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(model: Transformer, src: torch.Tensor, beam_size: int = 5, alpha: float = 0.6,
                max_len: int | None = None, use_cache: bool = True) -> list[dict]:
    """For every sentence, the best finished hypothesis: {"ids", "score", "attn" (L, S)}. K = 1 is greedy search."""
    B, K = src.shape[0], beam_size
    limits = length_limits(src, max_len, model.cfg.max_len).tolist()
    rows = torch.arange(B, device=src.device).repeat_interleave(K)      # row b*K + k: beam k of sentence b
    stepper = Stepper(model, src.index_select(0, rows), use_cache)
    scores = torch.full((B, K), float("-inf"), device=src.device)
    scores[:, 0] = 0.0                                                    # the K copies of <bos>: keep one alive
    attn_history = torch.zeros(B * K, 0, src.shape[1], device=src.device)
    finished = [[] for _ in range(B)]
    for t in range(max(limits)):
        logp, cross = stepper.step()                                      # (B*K, V)
        V = logp.shape[-1]
        attn_history = torch.cat([attn_history, cross.mean(1).unsqueeze(1)], 1)
        top_scores, top_idx = (scores.view(-1, 1) + logp).view(B, K * V).topk(2 * K, dim=1)
        beam, tok = top_idx // V, top_idx % V
        is_eos = tok == EOS_ID
        for b, j in zip(*torch.nonzero(is_eos[:, :K] & torch.isfinite(top_scores[:, :K]), as_tuple=True)):
            b, j = int(b), int(j)
            if len(finished[b]) < K:
                row = b * K + int(beam[b, j])
                finished[b].append({"ids": stepper.prefix[row, 1:].tolist() + [EOS_ID],
                                    "score": top_scores[b, j].item() / length_penalty(t + 1, alpha),
                                    "attn": attn_history[row].cpu()})
        keep = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]   # the K best that do not end here
        scores = top_scores.gather(1, keep)
        parent = (torch.arange(B, device=src.device).unsqueeze(1) * K + beam.gather(1, keep)).view(-1)
        stepper.append(tok.gather(1, keep).view(-1), parent)
        attn_history = attn_history.index_select(0, parent)
        for b in range(B):  # a sentence at its length limit: its best open hypotheses end here, without <eos>
            if limits[b] == t + 1:
                for k in range(K - len(finished[b])):
                    if torch.isfinite(scores[b, k]):
                        finished[b].append({"ids": stepper.prefix[b * K + k, 1:].tolist(),
                                            "score": scores[b, k].item() / length_penalty(t + 1, alpha),
                                            "attn": attn_history[b * K + k].cpu()})
        if all(len(f) >= K for f in finished):
            break
    return [max(f, key=lambda h: h["score"]) for f in finished]


def translate(model: Transformer, vocab: Vocab, sentences: list[str], device, beam_size: int = 1, alpha: float = 0.6,
              batch_size: int = 64, with_attention: bool = False) -> list[dict]:
    """Plain sentences in, {"text", and with_attention: "src_tokens", "tgt_tokens", "attn"} out, in input order."""
    model.eval()
    ids = [vocab.encode(s) for s in sentences]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[dict | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        src = make_batch([ids[i] for i in chunk])["src"].to(device)
        if beam_size == 1:
            tokens, attn = greedy_decode(model, src)
            hyps = [{"ids": tokens[r].tolist(), "attn": attn[r].cpu()} for r in range(len(chunk))]
        else:
            hyps = beam_search(model, src, beam_size, alpha)
        for r, i in enumerate(chunk):
            tgt_ids = hyps[r]["ids"]
            n = tgt_ids.index(EOS_ID) + 1 if EOS_ID in tgt_ids else len(tgt_ids)
            item = {"text": vocab.decode(tgt_ids)}
            if with_attention:
                item.update(src_tokens=[vocab.itos[j] for j in ids[i]], tgt_tokens=[vocab.itos[j] for j in tgt_ids[:n]],
                            attn=hyps[r]["attn"][:n, :len(ids[i])])
            out[i] = item
    return out


def bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> tuple[float, str]:
    """Corpus sacreBLEU on detokenised text against the raw references, and its signature."""
    metric = sacrebleu.metrics.BLEU(lowercase=lowercase)
    return round(metric.corpus_score(hypotheses, [references]).score, 2), str(metric.get_signature())
