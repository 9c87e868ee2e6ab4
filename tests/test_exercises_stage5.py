"""Stage 5 exercise graders: BPE's merge step (stage5_gpt/exercises/bpe_merge.py) and the causal mask with a KV cache
(stage5_gpt/exercises/causal_mask.py).

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage5.py     # grade your own versions

Without MY_LLM_EXERCISES=1 (CI), the tests check the graders themselves: each exercise as shipped fails its grader, and
the course's own function (the solution, in stage5_gpt/tokenizer.py and stage5_gpt/model.py) passes it.
"""
from __future__ import annotations

import inspect
import os
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
import test_stage5_model as model_tests          # the parity tests of the GPT, reused with the learner's mask inside
import test_stage5_tokenizer as tokenizer_tests  # the full-recount BPE the incremental training is checked against
from stage5_gpt import model, tokenizer
from stage5_gpt.exercises import bpe_merge, causal_mask

LEARNER = os.environ.get("MY_LLM_EXERCISES") == "1"
EXERCISES = {"merge_pair": (bpe_merge, tokenizer), "causal_mask": (causal_mask, model)}  # name -> (exercise, course)


def merge_by_text(ids: list[int], a: int, b: int, new_id: int) -> list[int]:
    """An independent reference: write the ids as "<1> <2> ...", and let re's left-to-right, non-overlapping search
    replace "<a> <b>"."""
    import re
    text = re.sub(f"<{a}> <{b}>(?= |$)", f"<{new_id}>", " ".join(f"<{i}>" for i in ids))
    return [int(t[1:-1]) for t in text.split()] if text else []


def grade_merge_pair(fn) -> None:
    cases = [([1, 2, 3, 1, 2], 1, 2, 9, [9, 3, 9]),
             ([5, 5, 5], 5, 5, 7, [7, 5]),          # "aaa" with (a, a): left to right, the pairs may not overlap
             ([5, 5, 5, 5], 5, 5, 7, [7, 7]),
             ([1, 2, 2, 1], 2, 1, 8, [1, 2, 8]),
             ([3, 4], 4, 3, 9, [3, 4]),             # the order of the pair matters
             ([1, 2], 1, 2, 300, [300]),
             ([7], 7, 7, 9, [7]), ([], 1, 2, 3, [])]
    for ids, a, b, new_id, expected in cases:
        before = list(ids)
        got = fn(ids, a, b, new_id)
        assert got == expected, f"merge_pair({before}, {a}, {b}, {new_id}) gave {got}, expected {expected}"
        assert ids == before, f"merge_pair changed its input list {before} into {ids}; return a new list instead"
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        a, b = rng.randint(0, 3), rng.randint(0, 3)
        expected = merge_by_text(ids, a, b, 99)
        assert fn(list(ids), a, b, 99) == expected, f"merge_pair({ids}, {a}, {b}, 99): expected {expected}"
    # inside the tokenizer: training with it learns exactly the merges of a full recount after every merge
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer, "merge_pair", fn)
        repetitive = "aaaaaa aaa bbbbbbb abababab aabbaabb " * 5 + tokenizer_tests.CORPUS[:2000]
        for text in [tokenizer_tests.CORPUS, repetitive]:
            trained = tokenizer.BPETokenizer.train(text, 256 + 150, special_tokens=(), progress=False)
            assert trained.merges == tokenizer_tests.naive_merges(text, 150), \
                "BPETokenizer.train with your merge_pair learns other merges than a full recount"
        tok = tokenizer.BPETokenizer.train(tokenizer_tests.CORPUS, 350, progress=False)
        for text in tokenizer_tests.TRICKY:
            assert tok.decode(tok.encode(text)) == text


def grade_causal_mask(fn) -> None:
    for T, S in [(1, 1), (4, 4), (7, 7), (1, 6), (3, 8), (5, 9)]:
        mask = fn(T, S)
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, "return a bool tensor"
        assert mask.shape == (T, S), f"causal_mask({T}, {S}) has shape {tuple(mask.shape)}, expected {(T, S)}"
        for i in range(T):
            allowed = [j for j in range(S) if mask[i, j]]
            assert allowed == list(range(S - T + i + 1)), \
                f"causal_mask({T}, {S}): query {i} (position {S - T + i}) may see keys {allowed}, " \
                f"expected 0..{S - T + i}"
        if T == S:  # the plain causal mask: what F.scaled_dot_product_attention(is_causal=True) uses
            q, k, v = (torch.randn(1, 2, T, 4, generator=torch.Generator().manual_seed(s)) for s in range(3))
            assert torch.allclose(F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                  F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    assert fn(3, 5, device="cpu").device.type == "cpu"
    # inside the model: written-out attention = fused attention, causality, and cached decoding = one full pass
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "causal_mask", fn)
        model_tests.test_sdpa_attention_equals_manual_attention(dict(pos="rope", norm="rmsnorm", mlp="swiglu"))
        model_tests.test_future_tokens_change_nothing_before_them(dict(attn="manual"))
        for attn in ("manual", "sdpa"):  # the fused path needs the mask too, for a cached step of T > 1 tokens
            model_tests.test_cached_logits_equal_uncached("learned", attn)


GRADERS = {"merge_pair": grade_merge_pair, "causal_mask": grade_causal_mask}


@pytest.mark.skipif(not LEARNER, reason="set MY_LLM_EXERCISES=1 to grade your own implementation")
@pytest.mark.parametrize("name", GRADERS)
def test_your_version(name):
    exercise, _ = EXERCISES[name]
    GRADERS[name](getattr(exercise, name))


@pytest.mark.skipif(LEARNER, reason="checks the shipped exercise file; not run while you grade your own")
@pytest.mark.parametrize("name", GRADERS)
def test_shipped_exercise_fails_its_grader(name):
    exercise, _ = EXERCISES[name]
    with pytest.raises(NotImplementedError, match="your code here"):
        GRADERS[name](getattr(exercise, name))


@pytest.mark.parametrize("name", GRADERS)
def test_grader_passes_with_the_solution(name, monkeypatch):
    exercise, course = EXERCISES[name]
    monkeypatch.setattr(exercise, name, getattr(course, name))
    GRADERS[name](getattr(exercise, name))


@pytest.mark.parametrize("name", GRADERS)
def test_exercise_keeps_the_solutions_signature_and_docstring(name):
    exercise, course = EXERCISES[name]
    ours, theirs = getattr(exercise, name), getattr(course, name)
    assert inspect.signature(ours) == inspect.signature(theirs)
    assert ours.__doc__ == theirs.__doc__


def test_the_graders_reject_wrong_versions():
    """A merge that lets pairs overlap, and a mask that ignores the cache's offset, must not pass."""
    def overlapping(ids, a, b, new_id):
        return [new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == (a, b) else x for i, x in enumerate(ids)
                if not (i > 0 and (ids[i - 1], x) == (a, b))]
    with pytest.raises(AssertionError):
        grade_merge_pair(overlapping)
    with pytest.raises(AssertionError, match="expected 0"):
        grade_causal_mask(lambda T, S, device=None: torch.ones(T, S, dtype=torch.bool, device=device).tril())


def test_exercises_page_points_at_real_code():
    """stage5_gpt/exercises.md names files and functions that exist (the check tests/test_docs.py runs on the docs)."""
    from test_docs import check_doc
    doc = REPO_ROOT / "stage5_gpt" / "exercises.md"
    refs, problems = check_doc(doc.read_text(encoding="utf-8"), doc, REPO_ROOT)
    assert refs and not problems, problems
