"""Group Relative Policy Optimization (Shao et al. 2024), from scratch: online reinforcement learning from a reward
model, with the group of samples as its own baseline.

    python stage5_gpt/grpo.py --kl-coef 0.05 --time-budget 15      # IMDb continuations, Stage 1's classifier as reward
    advantages = group_advantages(rewards)                           # (P, G): each sample against its group
    loss, stats = grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip=0.2, kl_coef=0.05)

DPO learns from pairs made once, beforehand. GRPO keeps sampling: every step the policy writes G continuations of
each prompt, the reward model scores them, and each continuation's advantage is its reward against its own group's,
A = (r - mean(r_group)) / (std(r_group) + eps). No value network is needed (PPO's critic): the other samples of the
same prompt say what reward was to be expected. The policy then takes a step on the clipped objective of PPO,

    ratio_t = pi(y_t | ...) / pi_old(y_t | ...),   loss = -mean_t min(ratio_t A, clip(ratio_t, 1 - eps, 1 + eps) A)
                                                          + kl_coef * KL(pi || pi_ref)

with pi_old the policy that sampled (fixed during the `--inner-steps` updates on one batch: clipping stops a batch
from pushing the policy far from where its samples came from) and a penalty that keeps it near the frozen reference,
estimated per token as exp(q - p) - (q - p) - 1 with p, q the log-probabilities of the sampled token under the policy
and the reference (always >= 0, and 0 when they agree). Rewards, their spread, the KL and the clip fraction are logged
every step; the final report is dpo.py's: held-out prompts continued before and after, judged by another classifier.
"""
from __future__ import annotations

import argparse
import functools
import math
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/grpo.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F

from scripts.common import (UserError, catch_stop_signals, get_device, get_logger, note_command, portable,
                            positive_float, positive_int, reference_run_name, resolve_data_dir, resolved_config,
                            run_cli, RunTracker, set_rng_state, set_seed, write_result)
from stage5_gpt import preferences
from stage5_gpt.dpo import continuation_report, load_policy, resume_from, save_run

STAGE, SCRIPT = "stage5_gpt", "stage5_gpt/grpo.py"
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result", "time_budget")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages: each against its group's mean, in units of the group's spread. A group
    whose samples all scored alike teaches nothing (all advantages 0)."""
    mean, std = rewards.mean(dim=1, keepdim=True), rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def token_logprobs(model, prompts: list[list[int]], conts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Each continuation token's log-probability under `model` -> (logp (N, T), mask (N, T)): T the longest
    continuation, mask 1 on real tokens. Sequences are right-padded prompt + continuation."""
    device = model.wte.weight.device
    L = max(len(p) + len(c) for p, c in zip(prompts, conts)) - 1
    T = max(len(c) for c in conts)
    x = torch.full((len(conts), L), pad_id, dtype=torch.long)
    y = torch.zeros(len(conts), T, dtype=torch.long)
    at = torch.zeros(len(conts), T, dtype=torch.long)            # where each continuation token is predicted
    mask = torch.zeros(len(conts), T)
    for i, (p, c) in enumerate(zip(prompts, conts)):
        seq = (p + c)[:-1]
        x[i, :len(seq)] = torch.tensor(seq)
        y[i, :len(c)] = torch.tensor(c)
        at[i, :len(c)] = torch.arange(len(p) - 1, len(p) - 1 + len(c))
        mask[i, :len(c)] = 1
    logits, _ = model(x.to(device))                                                  # (N, L, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, at.to(device)[..., None].expand(-1, -1, logp.shape[-1]))  # (N, T, V)
    return picked.gather(-1, y.to(device)[..., None])[..., 0], mask.to(device)        # (N, T), (N, T)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip: float = 0.2, kl_coef: float = 0.05):
    """The clipped policy-gradient loss with a KL penalty, averaged over real tokens. logp (N, T) with gradients;
    old_logp and ref_logp (N, T) constants; advantages (N,) one per sequence, shared by its tokens."""
    if kl_coef < 0:
        raise UserError(f"the KL coefficient must be >= 0, got {kl_coef}")
    ratio = torch.exp(logp - old_logp.detach())                                     # (N, T)
    adv = advantages.detach()[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    d = ref_logp.detach() - logp
    kl = torch.exp(d) - d - 1                                                        # >= 0, k3 estimator
    n = mask.sum().clamp(min=1)
    loss = -((surrogate - kl_coef * kl) * mask).sum() / n
    kl_, ratio_ = kl.detach(), ratio.detach()                                        # the logged figures
    stats = {"kl": float((kl_ * mask).sum() / n),
             "clip_fraction": float((((ratio_ - 1).abs() > clip).float() * mask).sum() / n)}
    return loss, stats


def parse_args(argv=None) -> argparse.Namespace:
    from stage5_gpt.reference_runs import BASE_CHECKPOINT
    p = argparse.ArgumentParser(description="GRPO: online RL from a reward model, the group as baseline (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=BASE_CHECKPOINT, help="the starting policy, also the frozen reference")
    p.add_argument("--reward", default="runs/stage1_mlp/imdb/best.pt", help="the classifier whose score is the reward")
    p.add_argument("--judge", default=None, help="another classifier that judges the held-out continuations")
    p.add_argument("--kl-coef", type=float, default=0.05, help="the weight of the KL penalty to the reference")
    p.add_argument("--clip", type=positive_float, default=0.2, help="PPO's clipping of the probability ratio")
    p.add_argument("--group", type=positive_int, default=4, help="continuations per prompt")
    p.add_argument("--prompts-per-step", type=positive_int, default=8)
    p.add_argument("--inner-steps", type=positive_int, default=2, help="updates on each sampled batch")
    p.add_argument("--prompts", type=positive_int, default=2000, help="training prompts (IMDb train)")
    p.add_argument("--eval-prompts", type=positive_int, default=200, help="held-out prompts (IMDb test)")
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature while training")
    p.add_argument("--lr", type=positive_float, default=1e-5)
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many sampling steps")
    p.add_argument("--time-budget", type=positive_float, default=None, help="minutes of training")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", default=None, help="default: runs/stage5_gpt/grpo_kl<kl-coef>")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.pt exactly")
    p.add_argument("--quick", action="store_true", help="a tiny run, for smoke tests")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json)")
    args = p.parse_args(argv)
    if args.kl_coef < 0:
        p.error(f"--kl-coef must be >= 0, got {args.kl_coef}")
    if args.quick:
        args.prompts, args.eval_prompts, args.max_new_tokens = min(args.prompts, 24), min(args.eval_prompts, 8), 12
    if not args.max_steps and not args.time_budget:
        args.max_steps = math.ceil(args.prompts / args.prompts_per_step)   # one pass over the prompts
    args.out_dir = args.out_dir or f"runs/stage5_gpt/grpo_kl{args.kl_coef:g}"
    return args


def grpo_step(args, policy, reference, optimizer, tok, prompts: list[str], reward, step: int, pad_id: int) -> dict:
    """Sample a group per prompt with the current policy, score, normalise within groups, take the inner updates."""
    ids = [tok.encode(p) for p in prompts]
    policy.eval()
    groups = preferences.sample_groups(policy, ids, args.group, args.max_new_tokens, args.temperature,
                                       seed=args.seed * 7919 + step)
    policy.train()
    flat_p = [p for p, g in zip(ids, groups) for _ in g]
    flat_c = [c or [pad_id] for g in groups for c in g]                               # an empty sample: one pad
    texts = [prompt + tok.decode(c) for prompt, g in zip(prompts, groups) for c in g]
    rewards = reward(texts).view(len(prompts), args.group)                            # (P, G)
    adv = group_advantages(rewards).view(-1)                                          # (P*G,)
    with torch.no_grad():
        old, _ = token_logprobs(policy, flat_p, flat_c, pad_id)
        ref, _ = token_logprobs(reference, flat_p, flat_c, pad_id)
    for _ in range(args.inner_steps):
        logp, mask = token_logprobs(policy, flat_p, flat_c, pad_id)
        loss, stats = grpo_loss(logp, old, ref, adv, mask, args.clip, args.kl_coef)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
    return {"loss": round(loss.item(), 5), "reward": round(float(rewards.mean()), 4),
            "reward_spread": round(float(rewards.std(dim=1).mean()), 4), **stats}


def main(argv=None) -> None:
    args, resumed = resume_from(parse_args(argv), "grpo", RESUMABLE)
    out_dir = Path(args.out_dir)
    log = get_logger(STAGE, out_dir / "grpo.log")
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    policy, reference, tok, ckpt = load_policy(args, device)
    pad_id = tok.token_to_id("<|endoftext|>")
    reward = preferences.load_classifier(args.reward, "cpu")
    data_dir = resolve_data_dir(args.data_dir)
    prompts = preferences.review_prompts(data_dir, "train", args.prompts)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    state = {"step": 0, "train_seconds": 0.0, "history": []}
    if resumed:
        policy.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        state = resumed["state"]
        set_rng_state(resumed["rng"])
    note_command(state, SCRIPT, argv)
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])
    save = functools.partial(save_run, task="grpo", args=args, policy=policy, state=state, ckpt=ckpt)
    log.info(f"GRPO, KL coefficient {args.kl_coef}: groups of {args.group}, {args.prompts_per_step} prompts a step, "
             f"{len(prompts):,} prompts, " + (f"{args.max_steps} steps" if args.max_steps else "")
             + (f" or {args.time_budget} minutes" if args.time_budget else ""))

    stop, restore_signals = catch_stop_signals()
    t_loop = time.time() - state["train_seconds"]
    try:
        while not stop["by"]:
            per_pass = max(1, len(prompts) // args.prompts_per_step)             # steps in one pass over the prompts
            order = list(range(len(prompts)))
            random.Random(args.seed + state["step"] // per_pass).shuffle(order)  # a new order each pass: resumable
            k = state["step"] % per_pass
            batch = [prompts[i] for i in order[k * args.prompts_per_step:(k + 1) * args.prompts_per_step]]
            stats = grpo_step(args, policy, reference, optimizer, tok, batch, reward, state["step"], pad_id)
            state["step"] += 1
            state["history"].append([state["step"], stats])
            tracker.train(state["step"], **stats)
            if state["step"] % 10 == 0:
                log.info(f"step {state['step']}: " + " | ".join(f"{k} {v}" for k, v in stats.items()))
                state["train_seconds"] = time.time() - t_loop
                save(out_dir / "last.pt", optimizer)
            if args.time_budget and time.time() - t_loop >= 60 * args.time_budget:
                stop["by"] = "time_budget"
            elif args.max_steps and state["step"] >= args.max_steps:
                stop["by"] = "max_steps"
    finally:
        tracker.close()
        restore_signals()
    state["train_seconds"] = time.time() - t_loop
    save(out_dir / "last.pt", optimizer)
    if stop["by"] not in ("time_budget", "max_steps"):
        log.info(f"stopped by {stop['by']} at step {state['step']}; continue with: python {SCRIPT} "
                 f"--out-dir {out_dir} --resume")
        sys.exit(130)
    save(out_dir / "best.pt")
    final_report(args, out_dir, policy, reference, tok, state, device, t_start, log)


def final_report(args, out_dir, policy, reference, tok, state, device, t_start, log) -> None:
    from stage5_gpt.reference_runs import REFERENCE_RUNS
    held_out = preferences.review_prompts(resolve_data_dir(args.data_dir), "test", args.eval_prompts)
    report = continuation_report(args, policy, reference, tok, held_out, device, log)
    metrics = {f"{who}_{k}": v for who in ("reference", "policy") for k, v in report[who].items() if k != "samples"}
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset="imdb_continuations", split="test", metrics=metrics,
                 headline="policy_reward_mean", train_seconds=state["train_seconds"], device=device,
                 params=policy.num_params(), command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick, "details": report,
                        "steps": state["step"], "curve": state["history"],
                        "hparams": resolved_config(args) | {"checkpoint": portable(str(args.checkpoint))}})
    log.info(f"wrote {result_path}")


if __name__ == "__main__":
    run_cli(main)
