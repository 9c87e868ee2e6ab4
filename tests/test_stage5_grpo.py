"""Stage 5 GRPO: group-relative advantages and the clipped, KL-penalised loss on hand-made numbers, per-token
log-probabilities against a written-out computation, a run whose reward must rise, exact resume, bad input."""
from __future__ import annotations

import json
import math

import torch

from conftest import assert_one_line_error, cli
from scripts.common import load_checkpoint
from stage5_gpt import grpo, preferences
from stage5_gpt.model import GPT, GPTConfig
from test_stage5_dpo_train import setup  # noqa: F401  (the same tiny data, classifier and policy)


def test_advantages_are_relative_to_the_group():
    adv = grpo.group_advantages(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert torch.allclose(adv[0], torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(1.5), atol=1e-3)
    assert torch.equal(adv[1], torch.zeros(3))                      # a group that scored alike teaches nothing


def test_loss_on_hand_made_numbers():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    loss, stats = grpo.grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, clip=0.2, kl_coef=0.1)
    # ratio 1 and KL 0 everywhere: loss = -(1 + 1 - 2) / 3 real tokens
    assert math.isclose(loss.item(), 0.0, abs_tol=1e-7) and stats["kl"] == 0.0 and stats["clip_fraction"] == 0.0
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 3, -1 / 3], [2 / 3, 0.0]]))   # up where A > 0, down where A < 0
    old = logp.detach() - 0.5                                        # the policy moved: ratio e^0.5 > 1.2, clipped
    _, stats = grpo.grpo_loss(logp.detach(), old, logp.detach(), adv, mask, clip=0.2, kl_coef=0.1)
    assert stats["clip_fraction"] == 1.0
    ref = logp.detach() + 0.3
    _, stats = grpo.grpo_loss(logp.detach(), logp.detach(), ref, adv, mask, kl_coef=0.1)
    assert math.isclose(stats["kl"], math.exp(0.3) - 0.3 - 1, rel_tol=1e-5)


def test_token_logprobs_match_a_written_out_sum():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    prompts, conts = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9]]
    with torch.no_grad():
        logp, mask = grpo.token_logprobs(model, prompts, conts, pad_id=0)
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    for i, (p, c) in enumerate(zip(prompts, conts)):
        with torch.no_grad():
            full = torch.log_softmax(model(torch.tensor([p + c]))[0][0], -1)
        for j, t in enumerate(c):
            assert math.isclose(float(logp[i, j]), float(full[len(p) - 1 + j, t]), abs_tol=1e-5)


def fake_reward(monkeypatch):
    """A reward a tiny random policy can learn quickly: the share of the letter e in the text."""
    monkeypatch.setattr(preferences, "load_classifier", lambda *a, **k: (
        lambda texts: torch.tensor([t.count("e") / max(len(t), 1) for t in texts])))


def args_for(setup, out, *extra):  # noqa: F811
    data, reward, policy = setup
    return ["--checkpoint", str(policy), "--reward", str(reward), "--data-dir", str(data), "--out-dir", str(out),
            "--quick", "--lr", "3e-3", "--prompts-per-step", "4", "--no-tensorboard", *extra]


def test_the_reward_rises(setup, tmp_path, monkeypatch):  # noqa: F811
    fake_reward(monkeypatch)
    grpo.main(args_for(setup, tmp_path / "g", "--max-steps", "30", "--kl-coef", "0"))
    curve = [s["reward"] for _, s in load_checkpoint(tmp_path / "g" / "last.pt")["state"]["history"]]
    assert sum(curve[-8:]) / 8 > sum(curve[:8]) / 8
    r = json.loads((tmp_path / "g" / "result.json").read_text())
    assert r["metrics"]["policy_kl_per_token"] > 0 and r["metrics"]["reference_kl_per_token"] == 0


def test_grpo_resumes_exactly(setup, tmp_path, monkeypatch):  # noqa: F811
    fake_reward(monkeypatch)
    grpo.main(args_for(setup, tmp_path / "a", "--max-steps", "4"))
    grpo.main(args_for(setup, tmp_path / "b", "--max-steps", "2"))
    grpo.main(args_for(setup, tmp_path / "b", "--max-steps", "4", "--resume"))
    a, b = (load_checkpoint(tmp_path / x / "last.pt") for x in "ab")
    assert a["state"]["history"] == b["state"]["history"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_bad_input_is_one_line(setup, tmp_path, capsys):  # noqa: F811
    code, err = cli(grpo.main, args_for(setup, tmp_path / "x", "--kl-coef", "-1"), capsys)
    assert_one_line_error(code, err, "kl-coef")
