"""Preference pairs without a human in the loop, and the measures that say whether tuning on them went well.

    reward = load_classifier("runs/stage1_mlp/imdb/best.pt")       # any stage's classifier: texts -> P(positive)
    prompts = review_prompts(data_dir, "train", 2000)              # the first words of IMDb training reviews
    pairs = make_pairs(policy, tok, prompts, reward, group=4)      # the best and the worst of 4 continuations
    text_stats(continuations)                                      # distinct-2, repetition rate

Preference tuning needs pairs (prompt, chosen answer, rejected answer). Here they come from a reward model, the way
RLHF pipelines label at scale: the policy writes `group` continuations of a prompt (sampled, each with its own seed,
decoded together by batching.generate_batch), the reward model scores each whole text, and the best and the worst
become a pair when their scores differ enough. The reward model is one of the course's own sentiment classifiers
(Stage 1's IMDb MLP by default), loaded through the contract every stage's predict.py keeps: load_predictor(checkpoint,
device) -> a function from texts to class probabilities. A different classifier judges the result, so that a policy
that learns to fool the reward model is caught.

What can go wrong is measured, not assumed: a policy can raise its reward by repeating "great great great", so every
evaluation also reports how varied the text is (distinct-2: the share of different word pairs; the repetition rate:
the share of words equal to one of the three before), and how far the policy moved from the reference (the mean
per-token KL on the policy's own text, and the text's perplexity under the reference model).
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from scripts.common import UserError, load_checkpoint
from stage5_gpt.batching import Request, generate_batch
from stage5_gpt.corpus import load_imdb

PROMPT_WORDS = 8          # an IMDb prompt: the first 8 words of a review


def review_prompts(data_dir: str | Path, split: str, n: int, words: int = PROMPT_WORDS) -> list[str]:
    """The first `words` words of n IMDb reviews of `split`, taken evenly across the file (it is sorted by label, so
    the first n would all be negative)."""
    reviews, _ = load_imdb(data_dir, split)
    step = max(1, len(reviews) // n)
    return [" ".join(r.replace("<br />", " ").split()[:words]) for r in reviews[::step][:n]]


def load_classifier(checkpoint: str | Path, device="cpu", positive: int = 1):
    """Any stage's sentiment classifier as texts -> P(positive) (N,), through its stage's load_predictor."""
    stage = load_checkpoint(checkpoint).get("stage")
    try:
        predictor = importlib.import_module(f"{stage}.predict").load_predictor(checkpoint, device)
    except (ModuleNotFoundError, AttributeError):
        raise UserError(f"{checkpoint} is not a classifier of a stage with predict.load_predictor") from None

    def score(texts: list[str]) -> torch.Tensor:
        probs = predictor(list(texts))
        if probs.shape[-1] != 2:
            raise UserError(f"{checkpoint} has {probs.shape[-1]} classes; a reward model here has two")
        return probs[:, positive].float()
    return score


@torch.no_grad()
def sample_groups(model, prompts_ids: list[list[int]], group: int, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0, batch_size: int = 32) -> list[list[list[int]]]:
    """`group` sampled continuations of every prompt -> [prompt][g] token ids. Each (prompt, g) has its own seed, so
    the samples are the same however the requests are batched."""
    requests = [Request(p, max_new_tokens, temperature, top_k, seed=seed * 1_000_003 + i * group + g)
                for i, p in enumerate(prompts_ids) for g in range(group)]
    out = []
    for start in range(0, len(requests), batch_size):
        out += [h.tokens for h in generate_batch(model, requests[start:start + batch_size])]
    return [out[i * group:(i + 1) * group] for i in range(len(prompts_ids))]


def make_pairs(model, tok, prompts: list[str], reward, group: int = 4, max_new_tokens: int = 48,
               temperature: float = 1.0, min_margin: float = 0.1, seed: int = 0) -> list[dict]:
    """-> [{"prompt", "chosen", "rejected" (token ids), "scores": [chosen's, rejected's]}] for every prompt whose
    best and worst continuations differ by at least min_margin in reward."""
    if group < 2:
        raise UserError(f"a group needs at least 2 continuations to compare, got {group}")
    prompts_ids = [tok.encode(p) for p in prompts]
    groups = sample_groups(model, prompts_ids, group, max_new_tokens, temperature, seed=seed)
    pairs = []
    for prompt, p_ids, conts in zip(prompts, prompts_ids, groups):
        conts = [c for c in conts if c]
        if len(conts) < 2:
            continue
        scores = reward([prompt + tok.decode(c) for c in conts]).tolist()
        best, worst = max(range(len(conts)), key=scores.__getitem__), min(range(len(conts)), key=scores.__getitem__)
        if scores[best] - scores[worst] >= min_margin:
            pairs.append({"prompt": p_ids, "chosen": conts[best], "rejected": conts[worst],
                          "scores": [round(scores[best], 4), round(scores[worst], 4)]})
    return pairs


def text_stats(texts: list[str]) -> dict:
    """distinct-2 (different word pairs / all word pairs, over all texts) and the repetition rate (words equal to
    one of the 3 words before them / all words): a model that repeats itself scores low on the first, high on the
    second."""
    pairs, words_seen, repeats = [], 0, 0
    for text in texts:
        words = text.split()
        pairs += list(zip(words, words[1:]))
        words_seen += len(words)
        repeats += sum(w in words[max(0, i - 3):i] for i, w in enumerate(words))
    return {"distinct_2": round(len(set(pairs)) / max(len(pairs), 1), 4),
            "repetition_rate": round(repeats / max(words_seen, 1), 4)}


@torch.no_grad()
def kl_and_perplexity(policy, reference, prompts_ids: list[list[int]], continuations: list[list[int]]) -> dict:
    """On the policy's own continuations: the mean per-token KL(policy || reference) over the whole next-token
    distributions, and the continuations' perplexity under the reference (how natural the reference finds them)."""
    kl_sum, nll_sum, count = 0.0, 0.0, 0
    for p, c in zip(prompts_ids, continuations):
        if not c:
            continue
        ids = torch.tensor([p + c], device=policy.wte.weight.device)
        at = slice(len(p) - 1, len(p) + len(c) - 1)                          # the positions that predict c
        logp = F.log_softmax(policy(ids[:, :-1])[0][0, at].float(), -1)      # (len(c), V)
        logq = F.log_softmax(reference(ids[:, :-1])[0][0, at].float(), -1)
        kl_sum += float((logp.exp() * (logp - logq)).sum())
        nll_sum -= float(logq.gather(-1, torch.tensor(c, device=logq.device)[:, None]).sum())
        count += len(c)
    return {"kl_per_token": round(kl_sum / max(count, 1), 5),
            "reference_ppl": round(math.exp(nll_sum / max(count, 1)), 3)}
