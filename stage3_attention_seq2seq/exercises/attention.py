"""Exercise: Bahdanau's additive attention (and Luong's "general" score, one line more), with a padding mask.

Write `Attention.keys` and `Attention.forward` below; `__init__` is given and creates the layers each score needs.
The solution is `Attention` in stage3_attention_seq2seq/model.py (docs/stage3_attention.md sections 6 to 8). Grade your
version with

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage3.py

which compares it, for both kinds, with the equations written out position by position (weights, context, gradients,
padding weighted exactly 0), then puts it inside a translation model: the logits and attention maps must be the
course model's, teacher forcing must equal stepping, and padding must not change a sentence's output.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401  (F.softmax, for the weights: you will need it)


class Attention(nn.Module):
    """Scores of one decoder state against every source position -> weights (softmax over real tokens) -> context."""

    def __init__(self, kind: str, hidden_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":  # score(s, h_j) = v . tanh(W s + U h_j)
            self.W = nn.Linear(hidden_dim, hidden_dim, bias=False)
            self.U = nn.Linear(hidden_dim, hidden_dim)
            self.v = nn.Linear(hidden_dim, 1, bias=False)
        else:                   # luong "general": score(s, h_j) = s . (W h_j)
            self.W = nn.Linear(hidden_dim, hidden_dim, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """The part of the score that depends only on the source: computed once per sentence, not per step."""
        raise NotImplementedError("your code here: memory (B, S, H) -> keys (B, S, H): U h_j (+ its bias) for "
                                  "bahdanau, W h_j for luong")

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, H) for T target positions at once; mask (B, S) is True on real source tokens."""
        raise NotImplementedError(
            "your code here: scores (B, T, S): bahdanau v(tanh(W(query) (B, T, 1, H) + keys (B, 1, S, H))) with the "
            "last axis squeezed, luong query @ keys^T; padded positions get -inf (masked_fill with ~mask, broadcast "
            "over T); weights = softmax over S; return (weights @ memory (B, T, H), weights)")
