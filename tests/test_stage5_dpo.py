"""Stage 5 DPO: the loss and its gradient against an independent computation on hand-made numbers, the answers'
log-probabilities against a written-out sum, a toy where training must come to prefer the chosen answer, and bad
input in one line."""
from __future__ import annotations

import math

import pytest
import torch

from scripts.common import UserError
from stage5_gpt import dpo
from stage5_gpt.model import GPT, GPTConfig


def test_loss_and_gradient_match_the_formula_on_hand_made_numbers():
    pc = torch.tensor([-5.0, -3.0], requires_grad=True)
    pr = torch.tensor([-6.0, -2.0], requires_grad=True)
    rc, rr, beta = torch.tensor([-5.5, -3.0]), torch.tensor([-5.5, -2.5]), 0.1
    loss, stats = dpo.dpo_loss(pc, pr, rc, rr, beta)
    # by hand: margins m = beta ((pc - rc) - (pr - rr)) = 0.1 (0.5 + 0.5) = 0.1 and 0.1 (0 - 0.5) = -0.05
    m = [0.1, -0.05]
    assert math.isclose(loss.item(), sum(math.log1p(math.exp(-x)) for x in m) / 2, rel_tol=1e-6)
    assert stats["reward_accuracy"] == 0.5 and math.isclose(stats["margin"], 0.025, rel_tol=1e-5)
    loss.backward()
    sig = [1 / (1 + math.exp(x)) for x in m]                    # sigmoid(-m)
    assert torch.allclose(pc.grad, torch.tensor([-beta * s / 2 for s in sig]), atol=1e-7)
    assert torch.allclose(pr.grad, torch.tensor([beta * s / 2 for s in sig]), atol=1e-7)


def test_answer_logprobs_sum_the_answer_tokens_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    pairs = [dpo.answer_pair([1, 2, 3], [4, 5]), dpo.answer_pair([6], [7, 8, 9, 10])]
    got = dpo.answer_logprobs(model, pairs, pad_id=0)
    for i, (prompt, answer) in enumerate([([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10])]):
        ids = torch.tensor([prompt + answer])
        logp = torch.log_softmax(model(ids)[0][0], -1)          # (T, V), no padding at all
        want = sum(logp[len(prompt) - 1 + j, a] for j, a in enumerate(answer))
        assert torch.allclose(got[i], want, atol=1e-5)


def test_training_on_one_pair_comes_to_prefer_the_chosen_answer():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16)
    policy, reference = GPT(cfg), GPT(cfg)
    reference.load_state_dict(policy.state_dict())
    reference.eval()
    chosen, rejected = dpo.answer_pair([1, 2], [3, 4]), dpo.answer_pair([1, 2], [5, 6])
    with torch.no_grad():
        ref = dpo.answer_logprobs(reference, [chosen, rejected], pad_id=0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(30):
        logp = dpo.answer_logprobs(policy, [chosen, rejected], pad_id=0)
        loss, stats = dpo.dpo_loss(logp[:1], logp[1:], ref[:1], ref[1:], beta=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert stats["reward_accuracy"] == 1.0 and loss.item() < 0.1
    with torch.no_grad():
        after = dpo.answer_logprobs(policy, [chosen, rejected], pad_id=0)
    assert (after[0] - after[1]) > (ref[0] - ref[1]) + 2          # the chosen answer gained on the rejected one


def test_bad_input_is_one_line():
    x = torch.zeros(2)
    for beta in (0.0, -1.0):
        with pytest.raises(UserError, match="beta must be positive"):
            dpo.dpo_loss(x, x, x, x, beta)
    with pytest.raises(UserError, match="non-empty answer"):
        dpo.answer_pair([1, 2], [])
