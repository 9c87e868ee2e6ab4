"""Stage 4 exercise grader: scaled dot-product attention (stage4_transformer/exercises/attention.py).

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage4.py     # grade your own version

Without MY_LLM_EXERCISES=1 (CI), the tests check the grader itself: the exercise as shipped fails it, and the course's
own function (the solution, stage4_transformer/model.py) passes it.
"""
from __future__ import annotations

import inspect
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
import test_stage4_model as parity  # the parity tests against torch.nn, reused with the learner's function inside
from stage4_transformer import model
from stage4_transformer.exercises import attention as exercise

LEARNER = os.environ.get("MY_LLM_EXERCISES") == "1"


def grade_scaled_dot_product_attention(fn) -> None:
    """Every check the course's own `scaled_dot_product_attention` passes; an AssertionError says what differs."""
    g = torch.Generator().manual_seed(0)
    B, H, T, S, D = 2, 3, 4, 6, 8
    q, k, v = (torch.randn(B, H, L, D, generator=g) for L in (T, S, S))
    real = parity.padding(B, S, [6, 3])                                 # (B, S) True on real keys
    causal = torch.ones(T, S, dtype=torch.bool).tril(S - T)             # (T, S): the last T queries of S positions
    masks = {"no mask": None, "padding (B, 1, 1, S)": real[:, None, None, :], "causal (T, S)": causal,
             "padding and causal (B, 1, T, S)": real[:, None, None, :] & causal}
    for name, mask in masks.items():
        result = fn(q, k, v, mask)
        assert isinstance(result, tuple) and len(result) == 2, "return a pair: (output, weights)"
        out, weights = result
        assert out.shape == (B, H, T, D), f"{name}: output shape {tuple(out.shape)}, expected {(B, H, T, D)}"
        assert weights.shape == (B, H, T, S), f"{name}: weights shape {tuple(weights.shape)}, expected {(B, H, T, S)}"
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # torch's: a bool mask is True where allowed
        assert torch.allclose(out, ref, atol=1e-5), \
            f"{name}: output differs from F.scaled_dot_product_attention by {(out - ref).abs().max():.2e}" + \
            (" (did you divide by sqrt(d_k)?)" if mask is None else " (is the mask True where attention is allowed?)")
        assert torch.allclose(weights.sum(-1), torch.ones(B, H, T), atol=1e-5), f"{name}: weights must sum to 1"
        if mask is not None:
            assert (weights.masked_select(~mask.expand(B, H, T, S)) == 0).all(), \
                f"{name}: masked positions must get weight exactly 0 (a score of -inf before the softmax)"
        assert torch.allclose(weights @ v, out, atol=1e-5), f"{name}: output must be weights @ v"
    # dropout acts in training only, on the weights
    base, _ = fn(q, k, v, real[:, None, None, :])
    out, _ = fn(q, k, v, real[:, None, None, :], dropout=0.5, training=False)
    assert torch.allclose(out, base, atol=1e-6), "with training=False, dropout must change nothing"
    torch.manual_seed(0)
    out, _ = fn(q, k, v, real[:, None, None, :], dropout=0.5, training=True)
    assert not torch.allclose(out, base, atol=1e-3), "with training=True and dropout=0.5 the output must change"
    # the scale matters most for wide heads: d_k = 256 without it would give a near one-hot
    q, k = torch.randn(1, 1, 3, 256, generator=g), torch.randn(1, 1, 5, 256, generator=g)
    v = torch.randn(1, 1, 5, 256, generator=g)
    _, weights = fn(q, k, v)
    ref = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(256), dim=-1)
    assert torch.allclose(weights, ref, atol=1e-5), "weights must be softmax(q k^T / sqrt(d_k)); check the scale"
    # inside the model: this stage's MultiHeadAttention, layers and whole Transformer against torch.nn's
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "scaled_dot_product_attention", fn)
        parity.test_multi_head_attention_matches_torch()
        for kind in ("encoder", "decoder"):
            for norm in ("pre", "post"):
                parity.test_layer_matches_torch(kind, norm)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "enable_nested_tensor is True")
            parity.test_whole_model_matches_nn_transformer()
        parity.test_cached_decoding_equals_uncached("pre", "sinusoidal")


@pytest.mark.skipif(not LEARNER, reason="set MY_LLM_EXERCISES=1 to grade your own implementation")
def test_your_scaled_dot_product_attention():
    grade_scaled_dot_product_attention(exercise.scaled_dot_product_attention)


@pytest.mark.skipif(LEARNER, reason="checks the shipped exercise file; not run while you grade your own")
def test_shipped_exercise_fails_its_grader():
    with pytest.raises(NotImplementedError, match="your code here"):
        grade_scaled_dot_product_attention(exercise.scaled_dot_product_attention)


def test_grader_passes_with_the_solution(monkeypatch):
    monkeypatch.setattr(exercise, "scaled_dot_product_attention", model.scaled_dot_product_attention)
    grade_scaled_dot_product_attention(exercise.scaled_dot_product_attention)


def test_exercise_keeps_the_solutions_signature_and_docstring():
    ours, theirs = exercise.scaled_dot_product_attention, model.scaled_dot_product_attention
    assert inspect.signature(ours) == inspect.signature(theirs)
    assert ours.__doc__ == theirs.__doc__


def test_the_grader_rejects_a_wrong_version():
    """An attention without the 1/sqrt(d_k) scale must not pass."""
    def unscaled(q, k, v, mask=None, dropout=0.0, training=False):
        scores = q @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return F.dropout(weights, dropout, training) @ v, weights
    with pytest.raises(AssertionError, match="sqrt"):
        grade_scaled_dot_product_attention(unscaled)


def test_exercises_page_points_at_real_code():
    """stage4_transformer/exercises.md names files and functions that exist (the check tests/test_docs.py runs)."""
    from test_docs import check_doc
    doc = REPO_ROOT / "stage4_transformer" / "exercises.md"
    refs, problems = check_doc(doc.read_text(encoding="utf-8"), doc, REPO_ROOT)
    assert refs and not problems, problems
