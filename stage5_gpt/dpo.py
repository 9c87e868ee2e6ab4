"""Direct Preference Optimization (Rafailov et al. 2023), from scratch: learn from pairs of answers, one preferred.

    inputs, targets = answer_pair(prompt_ids, answer_ids)                  # teacher forcing on the answer only
    logp = answer_logprobs(model, [(inputs, targets), ...], pad_id)       # (N,) summed log-probability per answer
    loss, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)

RLHF tunes a policy to earn a reward model's score while a KL penalty keeps it near a reference model (the model it
started from). DPO notices that the best policy for that objective has a closed form, pi*(y|x) proportional to
pi_ref(y|x) exp(r(x, y) / beta), so the reward can be written with the policy itself: r(x, y) = beta log(pi(y|x) /
pi_ref(y|x)) + (a term that depends on x only). For a pair of answers to the same prompt, the x-only term cancels in
the Bradley-Terry probability that the chosen answer wins, which leaves a plain classification loss on pairs:

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

with y_w the chosen answer, y_l the rejected one, and log pi(y|x) the sum of the answer tokens' log-probabilities
(the prompt is context, not scored). No reward model is queried while training and no text is sampled: the preference
pairs are made once, beforehand. beta plays the KL coefficient's part: a small beta lets the policy move far from the
reference, a large one keeps it close. The implicit reward beta (log pi - log pi_ref) of each answer is logged; the
share of pairs where the chosen answer's is higher is the "reward accuracy".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scripts.common import UserError


def answer_pair(prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    """(prompt + answer) as (inputs, targets) for teacher forcing: the targets are the next tokens where they belong
    to the answer, -100 (not scored) where they belong to the prompt."""
    if not prompt or not answer:
        raise UserError("a preference example needs a prompt and a non-empty answer")
    ids = prompt + answer
    return ids[:-1], [-100] * (len(prompt) - 1) + answer


def answer_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, device=None) -> torch.Tensor:
    """The summed log-probability of each pair's answer tokens under `model` -> (N,), differentiable. Pairs are
    right-padded into one batch; the padding's targets are -100, so it adds nothing."""
    device = device or model.wte.weight.device
    T = max(len(x) for x, _ in pairs)
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), T), -100, dtype=torch.long)
    for i, (inp, tgt) in enumerate(pairs):
        x[i, :len(inp)], y[i, :len(tgt)] = torch.tensor(inp), torch.tensor(tgt)
    x, y = x.to(device), y.to(device)
    logits, _ = model(x)                                                        # (N, T, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    scored = y != -100                                                          # (N, T)
    token_logp = logp.gather(-1, y.clamp(min=0)[..., None])[..., 0]             # (N, T): log p of each target
    return (token_logp * scored).sum(dim=1)                                     # (N,)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """The DPO loss over a batch of pairs, from summed answer log-probabilities (N,) each; the reference's are
    constants (computed without gradients). -> (mean loss, {"reward_accuracy", "margin", "chosen_reward",
    "rejected_reward"}), the rewards being the implicit ones, beta (log pi - log pi_ref)."""
    if not beta > 0:
        raise UserError(f"beta must be positive, got {beta}")
    chosen_reward = beta * (policy_chosen - ref_chosen.detach())               # (N,)
    rejected_reward = beta * (policy_rejected - ref_rejected.detach())         # (N,)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    m, c, r = margin.detach(), chosen_reward.detach(), rejected_reward.detach()   # the logged figures: no graph
    stats = {"reward_accuracy": float((m > 0).float().mean()), "margin": float(m.mean()),
             "chosen_reward": float(c.mean()), "rejected_reward": float(r.mean())}
    return loss, stats
