"""Exercise: a fully connected layer, y = x W^T + b, with nn.Linear's initialisation.

Write `Linear.__init__` (the parameters `weight` (out, in) and `bias` (out,), uniform in +-1/sqrt(in_features)) and
`Linear.forward`. The solution is `Linear` in stage1_mlp/model.py (docs/stage1_mlp.md section 2, "Initialisation").
Grade your version with

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage1.py -k linear

which compares it with `nn.Linear` (outputs, the gradients of weight, bias and input, the range of the initial
weights) and inside the whole Stage 1 model.
"""
from __future__ import annotations

import math  # noqa: F401  (math.sqrt, for the bound: you will need it)

import torch
import torch.nn as nn


class Linear(nn.Module):
    """y = x W^T + b, initialised like nn.Linear: uniform in +-1/sqrt(fan_in), so outputs keep unit-ish scale."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        raise NotImplementedError(
            "your code here: bound = 1 / sqrt(in_features); self.weight = nn.Parameter of shape (out_features, "
            "in_features) and self.bias = nn.Parameter of shape (out_features,), both uniform in [-bound, bound] "
            "(torch.empty(...).uniform_)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("your code here: (B, in) @ (in, out) + (out,) -> (B, out); the weight is stored "
                                  "as (out, in)")
