"""Exercise: BPE's merge step, the one operation that byte pair encoding repeats thousands of times.

Write the body of `merge_pair` below, then grade it:

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage5.py -k merge_pair

The grader checks your function on small lists, then trains this stage's BPETokenizer with it and compares the merges
learned with a full recount of every pair after every merge (the check of tests/test_stage5_tokenizer.py). The
solution is the course's own: `merge_pair` in stage5_gpt/tokenizer.py (docs/stage5_gpt.md, "Byte-level BPE", explains
it).
"""
from __future__ import annotations


def merge_pair(ids: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every (a, b) in `ids` by new_id, left to right ("aaa" with (a, a) -> ["aa", "a"])."""
    raise NotImplementedError(
        "your code here: walk i over ids; where ids[i] == a and ids[i + 1] == b append new_id and step 2, else append "
        "ids[i] and step 1; return a new list (do not change `ids`)")
