"""Exercise: the mean of each bag of n-gram vectors, from the flat ids + offsets layout.

Write `EmbeddingBag.forward` below; `__init__` is given. The solution is `EmbeddingBag` in stage1_mlp/model.py
(docs/stage1_mlp.md section 6 walks through the steps). Grade your version with

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage1.py -k embedding_bag

which compares it with `nn.EmbeddingBag(mode="mean")` (outputs, an empty bag, the weight gradient) and inside the
whole Stage 1 model.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class EmbeddingBag(nn.Module):
    """Mean of the embedding vectors of each bag: an (N,) list of ids cut into B bags by `offsets`.

    Equivalent to `nn.EmbeddingBag(mode="mean")`. Averaging (instead of summing) keeps long and short
    texts on the same scale; an empty bag gives a zero vector.
    """

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        # small random vectors: a text's mean starts near 0, where the next layer's ReLUs are not saturated
        self.weight = nn.Parameter(torch.randn(num_embeddings, dim) * 0.1)  # (V, D)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "your code here: bag lengths from offsets (torch.diff, the last bag ends at N = len(ids)); which bag owns "
            "each id (torch.repeat_interleave); look up self.weight[ids] (N, D); sum the rows per bag (B, D) with "
            "index_add_; divide by the lengths, clamped to at least 1 so that an empty bag gives zeros")
