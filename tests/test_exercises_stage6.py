"""Stage 6 exercise grader: BERT's masked-LM corruption, 80/10/10 (stage6_bert/exercises/masking.py).

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage6.py     # grade your own version

Without MY_LLM_EXERCISES=1 (CI), the tests check the grader itself: the exercise as shipped fails it, and the course's
own function (the solution, stage6_bert/data.py) passes it.
"""
from __future__ import annotations

import inspect
import os

import pytest
import torch

from conftest import REPO_ROOT
import test_stage6_pretrain as pretrain_tests  # the masking statistics, reused with the learner's function
from stage6_bert import data
from stage6_bert.exercises import masking as exercise
from stage6_bert.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID

LEARNER = os.environ.get("MY_LLM_EXERCISES") == "1"


def grade_mask_tokens(fn) -> None:
    V = 100
    ids = torch.randint(5, V, (8, 40), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[:, -1], ids[4:, 30:-1] = CLS_ID, SEP_ID, PAD_ID
    special = ids < 5
    before = ids.clone()
    result = fn(ids, special, V, torch.Generator().manual_seed(0))
    assert isinstance(result, tuple) and len(result) == 2, "return a pair: (input_ids, labels)"
    inputs, labels = result
    assert inputs.shape == labels.shape == ids.shape, "input_ids and labels must have the shape of ids"
    assert inputs.dtype == labels.dtype == torch.long, "input_ids and labels must be int64 (torch.long)"
    assert torch.equal(ids, before), "mask_tokens changed `ids` in place; build new tensors instead"
    chosen = labels != -100
    assert chosen.any(), "no token was chosen: labels must hold the original id at the chosen positions"
    assert not (chosen & special).any(), "a special token ([CLS], [SEP], [PAD], ...) was chosen"
    assert torch.equal(labels[chosen], ids[chosen]), "labels must hold the original id where a token is chosen"
    assert (inputs[chosen] == MASK_ID).any(), "no chosen token became [MASK]"
    again = fn(ids, special, V, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels), \
        "the same generator state must give the same masks: draw every random number from `generator`"
    other = fn(ids, special, V, torch.Generator().manual_seed(1))
    assert not torch.equal(other[1], labels), "another generator seed must give other masks"
    everything = fn(ids, special, V, torch.Generator().manual_seed(2), mask_prob=1.0)[1] != -100
    assert torch.equal(everything, ~special), "with mask_prob=1.0 every non-special token must be chosen"
    # a real vocabulary's layout (bert-base-uncased's, small): [PAD] 0, [UNK] 10, [CLS] 11, [SEP] 12, [MASK] 13
    specials = (0, 10, 11, 12, 13)
    real = torch.randint(14, V, (64, 40), generator=torch.Generator().manual_seed(3))
    real[:, 0], real[:, -1], real[:, 7] = 11, 12, 10
    inputs, labels = fn(real, torch.isin(real, torch.tensor(specials)), V, torch.Generator().manual_seed(4), 0.5, 13,
                        specials)
    chosen = labels != -100
    assert (inputs[chosen] == 13).float().mean() > 0.7, \
        "a chosen token must become mask_id (here 13, not the course's 4) 80% of the time"
    replaced = chosen & (inputs != 13) & (inputs != real)
    assert replaced.any() and not torch.isin(inputs[replaced], torch.tensor(specials)).any(), \
        "a random token must never be one of special_ids"
    # the statistics of tests/test_stage6_pretrain.py, and masking of collated batches through mask_batch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain_tests, "mask_tokens", fn)
        mp.setattr(data, "mask_tokens", fn)
        pretrain_tests.test_mask_tokens_statistics()
        pretrain_tests.test_mask_batch_never_chooses_special_tokens()


@pytest.mark.skipif(not LEARNER, reason="set MY_LLM_EXERCISES=1 to grade your own implementation")
def test_your_mask_tokens():
    grade_mask_tokens(exercise.mask_tokens)


@pytest.mark.skipif(LEARNER, reason="checks the shipped exercise file; not run while you grade your own")
def test_shipped_exercise_fails_its_grader():
    with pytest.raises(NotImplementedError, match="your code here"):
        grade_mask_tokens(exercise.mask_tokens)


def test_grader_passes_with_the_solution(monkeypatch):
    monkeypatch.setattr(exercise, "mask_tokens", data.mask_tokens)
    grade_mask_tokens(exercise.mask_tokens)


def test_exercise_keeps_the_solutions_signature_and_docstring():
    assert inspect.signature(exercise.mask_tokens) == inspect.signature(data.mask_tokens)
    assert exercise.mask_tokens.__doc__ == data.mask_tokens.__doc__


def test_the_grader_rejects_a_wrong_version():
    """Always writing [MASK] (no random 10%, no kept 10%) must not pass."""
    def always_mask(ids, special_mask, vocab_size, generator, mask_prob=0.15, mask_id=MASK_ID, special_ids=()):
        chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & ~special_mask
        return (torch.where(chosen, torch.full_like(ids, mask_id), ids),
                torch.where(chosen, ids, torch.full_like(ids, -100)))
    with pytest.raises(AssertionError):
        grade_mask_tokens(always_mask)


def test_exercises_page_points_at_real_code():
    """stage6_bert/exercises.md names files and functions that exist (the check tests/test_docs.py runs on the docs)."""
    from test_docs import check_doc
    doc = REPO_ROOT / "stage6_bert" / "exercises.md"
    refs, problems = check_doc(doc.read_text(encoding="utf-8"), doc, REPO_ROOT)
    assert refs and not problems, problems
