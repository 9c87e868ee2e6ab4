"""Exercise: the causal mask, including the case a KV cache creates (fewer queries than keys).

Write the body of `causal_mask` below, then grade it:

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage5.py -k causal_mask

The grader compares your mask with the one F.scaled_dot_product_attention uses, then puts it inside this stage's GPT
(the written-out attention path, attn="manual") and checks, as tests/test_stage5_model.py does, that the model gives the
same logits as the fused path, that a future token changes nothing before it, and that decoding with a KV cache (a
prompt of 5 tokens, then 1, then 3 at once) gives the logits of one full pass. The solution is the course's own:
`causal_mask` in stage5_gpt/model.py (docs/stage5_gpt.md, "Causal self-attention" and "The key/value cache", explains
it).
"""
from __future__ import annotations

import torch  # noqa: F401  (the solution uses it)


def causal_mask(T: int, S: int, device=None) -> torch.Tensor:
    """(T, S) True where query i may look at key j. The T queries are the last T of the S positions (S > T when
    earlier keys come from the cache), so query i sits at position S-T+i and sees keys j <= S-T+i."""
    raise NotImplementedError(
        "your code here: a (T, S) bool tensor on `device`, True where j <= S - T + i; start from "
        "torch.ones(T, S, dtype=torch.bool) and keep a lower triangle (Tensor.tril, with a diagonal offset)")
