"""Exercise: BERT's masked-LM corruption, 15% of the tokens chosen and of those 80% [MASK], 10% random, 10% unchanged.

Write the body of `mask_tokens` below, then grade it:

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage6.py

The grader runs the masking statistics of tests/test_stage6_pretrain.py on your function (about 15% chosen, 80/10/10,
never a special token, labels -100 elsewhere, the input left alone, the same generator state giving the same masks),
then masks real batches with it through `mask_batch`. The solution is the course's own: `mask_tokens` in
stage6_bert/data.py (docs/stage6_bert.md, "Masking: 15 %, and why 80/10/10", explains it).
"""
from __future__ import annotations

import torch

from stage6_bert.tokenizer import MASK_ID, SPECIAL_TOKENS  # the defaults: a vocabulary trained here


def mask_tokens(ids: torch.Tensor, special_mask: torch.Tensor, vocab_size: int, generator: torch.Generator,
                mask_prob: float = 0.15, mask_id: int = MASK_ID,
                special_ids: tuple[int, ...] = tuple(range(len(SPECIAL_TOKENS)))) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption (Devlin et al. 2019, section 3.1 and appendix A.1), drawn afresh for every batch.

    Each token where special_mask is False is chosen with probability mask_prob. A chosen token is a target: labels
    holds its id there (-100 everywhere else: the loss ignores it). In the input, a chosen token becomes [MASK] 80% of
    the time, a random token (never a special one) 10% of the time, and stays as it is 10% of the time. Why not always
    [MASK]: fine-tuning inputs never hold [MASK]; if only [MASK] positions were ever predicted, the model would need no
    good representation of the real tokens it sees. With the random 10% and the kept 10%, any input token may be a
    target, and the model cannot trust a word just because it is not [MASK].

    ids (B, T) int64; special_mask (B, T) bool, True where a token must never be chosen ([CLS], [SEP], [PAD], ...);
    generator: a CPU torch.Generator. mask_id: the tokenizer's [MASK]; special_ids: the ids a random token must never
    be (tok.special_ids; the defaults are those of a vocabulary trained here, 4 and 0-4). Pure: `ids` is not changed,
    and the same generator state gives the same result. -> (input_ids (B, T), labels (B, T)).
    """
    raise NotImplementedError(
        "your code here: chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & ~special_mask; "
        "labels = ids where chosen, else -100 (torch.where); one more uniform draw per token decides mask_id (< 0.8), "
        "a random word (0.8 to 0.9) or the token itself; a random word: r = torch.randint(vocab_size - "
        "len(special_ids), ...), then for each special id s in increasing order r += r >= s (it steps over them); "
        "never write into `ids`, and draw every random number from `generator`")
