"""Exercise: scaled dot-product attention, the one formula every Transformer layer is built on.

Write the body of `scaled_dot_product_attention` below, then grade it:

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage4.py

The grader compares your output with torch.nn.functional.scaled_dot_product_attention, then puts your function inside
this stage's MultiHeadAttention and whole Transformer and compares them with nn.MultiheadAttention and nn.Transformer
(the parity tests of tests/test_stage4_model.py). The solution is the course's own: `scaled_dot_product_attention` in
stage4_transformer/model.py (docs/stage4_transformer.md, "Scaled dot-product attention", explains it).
"""
from __future__ import annotations

import math  # noqa: F401  (the solution uses these three)

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def scaled_dot_product_attention(q, k, v, mask=None, dropout: float = 0.0, training: bool = False):
    """softmax(q k^T / sqrt(d_k)) v. q (B, h, T, d_k), k and v (B, h, S, d_k); mask broadcasts to (B, h, T, S) and is
    True where attention is allowed. -> output (B, h, T, d_k), weights (B, h, T, S).

    Dividing by sqrt(d_k) keeps the dot products' variance near 1 whatever the head size, so the softmax does not
    saturate into a one-hot whose gradient vanishes.
    """
    raise NotImplementedError(
        "your code here: scores = q @ k^T / sqrt(d_k) (B, h, T, S); where the mask is False set the score to -inf "
        "(masked_fill); softmax over the last dimension gives the weights; return (dropout(weights) @ v, weights), "
        "with F.dropout(weights, dropout, training)")
