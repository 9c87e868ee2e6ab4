"""Direct Preference Optimization (Rafailov et al. 2023), from scratch: learn from pairs of answers, one preferred.

    inputs, targets = answer_pair(prompt_ids, answer_ids)                  # teacher forcing on the answer only
    logp = answer_logprobs(model, [(inputs, targets), ...], pad_id)       # (N,) summed log-probability per answer
    loss, stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    python stage5_gpt/dpo.py --beta 0.1 --time-budget 15          # IMDb continuations, pairs from a reward model
    python stage5_gpt/dpo.py --pairs polite --checkpoint runs/stage5_gpt/sft/best.pt   # polite over rude answers

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

import argparse
import functools
import json
import math
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/dpo.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (UserError, atomic_write_text, catch_stop_signals, get_device, get_logger, load_checkpoint,
                            merge_resumed_args, note_command, portable, positive_float, positive_int,
                            reference_run_name, resolve_data_dir, resolved_config, rng_state, run_cli, RunTracker,
                            save_checkpoint, set_rng_state, set_seed, write_result)


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
    from stage5_gpt.evaluate_chat import pad_batch   # the same right padding as SFT's batches
    x, y = pad_batch(pairs, pad_id, device or model.wte.weight.device)
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


# ----------------------------------------------------------------------------- the command line: data, loop, report

STAGE, SCRIPT = "stage5_gpt", "stage5_gpt/dpo.py"
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result", "time_budget")
POLITE_FILE = "instructions/instruction-data-with-preference.json"


def parse_args(argv=None) -> argparse.Namespace:
    from stage5_gpt.reference_runs import BASE_CHECKPOINT
    p = argparse.ArgumentParser(description="Direct Preference Optimization of a GPT (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pairs", choices=["reward", "polite"], default="reward",
                   help="reward: IMDb continuations ranked by --reward; polite: the polite and the rude answer of "
                        f"{POLITE_FILE}")
    p.add_argument("--checkpoint", default=BASE_CHECKPOINT, help="the starting policy, also the frozen reference")
    p.add_argument("--reward", default="runs/stage1_mlp/imdb/best.pt", help="the classifier that ranks continuations")
    p.add_argument("--judge", default=None, help="another classifier that judges the held-out continuations "
                                                 "(default: none)")
    p.add_argument("--beta", type=positive_float, default=0.1, help="how far the policy may move from the reference")
    p.add_argument("--prompts", type=positive_int, default=2000, help="reward: training prompts (IMDb train)")
    p.add_argument("--eval-prompts", type=positive_int, default=200, help="reward: held-out prompts (IMDb test)")
    p.add_argument("--group", type=positive_int, default=4, help="reward: continuations per prompt")
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="reward: tokens per continuation")
    p.add_argument("--min-margin", type=float, default=0.1,
                   help="reward: keep a pair only when its two rewards differ by this much")
    p.add_argument("--data-dir", default=None, help="default: $MY_LLM_DATA, else ~/.cache/my_llm/data")
    p.add_argument("--out-dir", default=None, help="default: runs/stage5_gpt/dpo_<pairs>_beta<beta>")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--epochs", type=positive_int, default=3, help="passes over the pairs")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps (saved)")
    p.add_argument("--time-budget", type=positive_float, default=None, help="minutes of training")
    p.add_argument("--batch-size", type=positive_int, default=16, help="pairs per step")
    p.add_argument("--lr", type=positive_float, default=1e-5)
    p.add_argument("--eval-interval", type=positive_int, default=50, help="steps between validations")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.pt exactly")
    p.add_argument("--quick", action="store_true", help="a tiny run on small slices, for smoke tests")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.eval_prompts, args.max_new_tokens = min(args.prompts, 24), min(args.eval_prompts, 8), 12
    args.out_dir = args.out_dir or f"runs/stage5_gpt/dpo_{args.pairs}_beta{args.beta:g}"
    return args


def load_policy(args, device):
    """(policy, frozen reference, tokenizer, checkpoint): the same weights twice."""
    from stage5_gpt.evaluate import load_model
    policy, tok, ckpt = load_model(args.checkpoint, device)
    reference = load_model(args.checkpoint, device)[0].eval().requires_grad_(False)
    return policy.train(), reference, tok, ckpt


def build_pairs(args, policy, tok, data_dir: Path, out_dir: Path, log) -> dict:
    """{"train": [...], "val": [...]}, each pair {"prompt", "chosen", "rejected"} as token ids; for reward pairs also
    "test_prompts". Reward pairs are sampled once and kept in <out-dir>/pairs.json (a resumed run reads them)."""
    from stage5_gpt import preferences
    from stage5_gpt.chat_template import check_template, render
    from stage5_gpt.instructions import general_prompt
    cached = out_dir / "pairs.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if args.pairs == "polite":
        check_template(tok, where=f"the tokenizer of {args.checkpoint}")
        rows = json.loads((data_dir / POLITE_FILE).read_text(encoding="utf-8"))
        n_train, n_test = int(len(rows) * 0.85), int(len(rows) * 0.10)   # the SFT lesson's split of the same rows

        def pair(row):
            prompt, _ = render(tok, [{"role": "user", "content": general_prompt(row)}], add_generation_prompt=True)
            answer = lambda text: tok.encode(text) + [tok.token_to_id("<|end|>")]  # noqa: E731
            return {"prompt": prompt, "chosen": answer(row["chosen"]), "rejected": answer(row["rejected"])}
        rows = rows[:60] if args.quick else rows
        n_train, n_test = (40, 10) if args.quick else (n_train, n_test)
        pairs = {"train": [pair(r) for r in rows[:n_train]], "val": [pair(r) for r in rows[n_train + n_test:]],
                 "test": [pair(r) for r in rows[n_train:n_train + n_test]]}
    else:
        reward = preferences.load_classifier(args.reward, "cpu")
        prompts = preferences.review_prompts(data_dir, "train", args.prompts)
        log.info(f"sampling {args.group} continuations of {len(prompts):,} IMDb prompts, ranked by {args.reward} ...")
        made = preferences.make_pairs(policy.eval(), tok, prompts, reward, args.group, args.max_new_tokens,
                                      min_margin=args.min_margin, seed=args.seed)
        policy.train()
        random.Random(args.seed).shuffle(made)
        n_val = max(1, len(made) // 20)
        pairs = {"train": made[n_val:], "val": made[:n_val],
                 "test_prompts": preferences.review_prompts(data_dir, "test", args.eval_prompts)}
    if not pairs["train"]:
        raise UserError("no preference pairs: no two continuations differed enough in reward (raise --group or "
                        "lower --min-margin)")
    atomic_write_text(cached, json.dumps(pairs))
    return pairs


def pair_logprobs(model, pairs: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed answer log-probabilities of a batch of pairs, (N,) each, in one forward pass."""
    seqs = [answer_pair(p["prompt"], p["chosen"]) for p in pairs] + [answer_pair(p["prompt"], p["rejected"])
                                                                       for p in pairs]
    logp = answer_logprobs(model, seqs, pad_id)
    return logp[:len(pairs)], logp[len(pairs):]


@torch.no_grad()
def preference_accuracy(policy, reference, pairs: list[dict], pad_id: int, beta: float) -> dict:
    """On held-out pairs: the DPO loss, the implicit reward accuracy, and the reference's own accuracy (does it
    already give the chosen answer the higher log-probability?), the baseline the policy must beat."""
    was = policy.training
    policy.eval()
    pc, pr, rc, rr = [], [], [], []
    for i in range(0, len(pairs), 32):
        a, b = pair_logprobs(policy, pairs[i:i + 32], pad_id)
        c, d = pair_logprobs(reference, pairs[i:i + 32], pad_id)
        pc, pr, rc, rr = pc + [a], pr + [b], rc + [c], rr + [d]
    pc, pr, rc, rr = (torch.cat(x) for x in (pc, pr, rc, rr))
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    policy.train(was)
    return {"loss": round(float(loss), 4), "reward_accuracy": round(stats["reward_accuracy"], 4),
            "policy_accuracy": round(float((pc > pr).float().mean()), 4),
            "reference_accuracy": round(float((rc > rr).float().mean()), 4)}


@torch.no_grad()
def continuation_report(args, policy, reference, tok, prompts: list[str], device, log) -> dict:
    """Held-out IMDb prompts continued by the reference and by the policy (the same seeds): reward, judged-positive
    share, KL to the reference, perplexity under it, variety; and the judge's own accuracy on real reviews."""
    from stage5_gpt import preferences
    reward = preferences.load_classifier(args.reward, "cpu")
    judge = preferences.load_classifier(args.judge, "cpu") if args.judge else None
    ids = [tok.encode(p) for p in prompts]
    out = {}
    for name, model in (("reference", reference), ("policy", policy.eval())):
        conts = [g[0] for g in preferences.sample_groups(model, ids, 1, args.max_new_tokens, seed=args.seed + 1)]
        texts = [p + tok.decode(c) for p, c in zip(prompts, conts)]
        row = {"reward_mean": round(float(reward(texts).mean()), 4),
               **preferences.kl_and_perplexity(model, reference, ids, conts),
               **preferences.text_stats([tok.decode(c) for c in conts]), "samples": texts[:5]}
        if judge is not None:
            row["judged_positive"] = round(float((judge(texts) > 0.5).float().mean()), 4)
        out[name] = row
        log.info(f"{name}: " + " | ".join(f"{k} {v}" for k, v in row.items() if k != "samples"))
    if judge is not None:
        from stage5_gpt.corpus import load_imdb
        reviews, labels = load_imdb(resolve_data_dir(args.data_dir), "test")
        step = max(1, len(reviews) // 500)
        cut = [" ".join(r.replace("<br />", " ").split()[:40]) for r in reviews[::step][:500]]
        said = (judge(cut) > 0.5).long().tolist()
        out["judge_accuracy_on_40_word_reviews"] = round(sum(s == y for s, y in zip(said, labels[::step][:500]))
                                                         / len(said), 4)
    return out


def save_run(path: Path, optimizer=None, *, task: str, args, policy, state: dict, ckpt: dict) -> None:
    """A policy checkpoint (dpo.py's and grpo.py's): a GPT checkpoint generate.py reads, plus the optimizer (last.pt)."""
    obj = {"stage": STAGE, "kind": "language_model", "task": task, "dataset": ckpt.get("dataset"),
           "config": policy.cfg.to_dict(), "args": vars(args), "model": policy.state_dict(), "state": state,
           "rng": rng_state(), "data": ckpt["data"], "base": portable(str(args.checkpoint))}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    save_checkpoint(obj, path)


def resume_from(args, task: str, resumable: tuple[str, ...]) -> tuple[argparse.Namespace, dict | None]:
    """--resume: (the run's settings merged with this command's resumable flags, its last.pt); else (args, None)."""
    if not args.resume:
        return args, None
    path = Path(args.out_dir) / "last.pt"
    ckpt = load_checkpoint(path, stage=STAGE, kind="language_model")
    if ckpt.get("task") != task:
        raise UserError(f"{path} is not a {task.upper()} checkpoint")
    return merge_resumed_args(args, ckpt["args"], resumable), ckpt


def main(argv=None) -> None:
    args, ckpt_resume = resume_from(parse_args(argv), "dpo", RESUMABLE)
    out_dir = Path(args.out_dir)
    log = get_logger(STAGE, out_dir / "dpo.log")
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- the policy, its frozen twin, the pairs
    policy, reference, tok, ckpt = load_policy(args, device)
    pad_id = tok.token_to_id("<|endoftext|>")
    pairs = build_pairs(args, policy, tok, resolve_data_dir(args.data_dir), out_dir, log)
    steps_per_epoch = math.ceil(len(pairs["train"]) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    log.info(f"DPO ({args.pairs} pairs), beta {args.beta}: {len(pairs['train']):,} train / {len(pairs['val']):,} val "
             f"pairs, {total_steps} steps" + (f" or {args.time_budget} minutes" if args.time_budget else ""))
    state = {"epoch": 0, "batch": 0, "step": 0, "train_seconds": 0.0, "history": {"loss": [], "val": []},
             "before": preference_accuracy(policy, reference, pairs["val"], pad_id, args.beta)}
    if ckpt_resume:
        policy.load_state_dict(ckpt_resume["model"])
        optimizer.load_state_dict(ckpt_resume["optimizer"])
        state = ckpt_resume["state"]
        set_rng_state(ckpt_resume["rng"])
    note_command(state, SCRIPT, argv)
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])
    save = functools.partial(save_run, task="dpo", args=args, policy=policy, state=state, ckpt=ckpt)

    # ---- the loop (Ctrl-C and SIGTERM stop it between steps, saved)
    stop, restore_signals = catch_stop_signals()
    t_loop = time.time() - state["train_seconds"]
    try:
        while state["epoch"] < args.epochs and not stop["by"]:
            order = list(range(len(pairs["train"])))
            random.Random(args.seed + state["epoch"]).shuffle(order)             # fixed by (seed, epoch): resumable
            batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
            for idx in tqdm(batches[state["batch"]:], desc=f"epoch {state['epoch'] + 1}", leave=False, disable=None):
                batch = [pairs["train"][i] for i in idx]
                pc, pr = pair_logprobs(policy, batch, pad_id)
                with torch.no_grad():
                    rc, rr = pair_logprobs(reference, batch, pad_id)
                loss, stats = dpo_loss(pc, pr, rc, rr, args.beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                state["history"]["loss"].append([state["step"], round(loss.item(), 5)])
                tracker.train(state["step"], loss=loss.item(), **stats)
                over = bool(args.time_budget and time.time() - t_loop >= 60 * args.time_budget)
                if state["step"] % args.eval_interval == 0 or state["step"] == total_steps or over:
                    state["train_seconds"] = time.time() - t_loop
                    val = preference_accuracy(policy, reference, pairs["val"], pad_id, args.beta)
                    t_loop = time.time() - state["train_seconds"]
                    state["history"]["val"].append([state["step"], val])
                    tracker.evaluation(state["step"], "val", state["train_seconds"], **val)
                    log.info(f"step {state['step']}: " + " | ".join(f"{k} {v}" for k, v in val.items()))
                    save(out_dir / "last.pt", optimizer)
                stop["by"] = stop["by"] or ("time_budget" if over else None) or (
                    "max_steps" if args.max_steps and state["step"] >= args.max_steps else None)
                if stop["by"]:
                    break
            if not stop["by"]:
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
    finally:
        tracker.close()
        restore_signals()
    state["train_seconds"] = time.time() - t_loop
    save(out_dir / "last.pt", optimizer)
    if stop["by"] not in (None, "time_budget"):
        log.info(f"stopped by {stop['by']} at step {state['step']}; continue with: python {SCRIPT} "
                 f"--out-dir {out_dir} --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)
        return
    save(out_dir / "best.pt")   # the policy as trained to the end: DPO has no better-or-worse checkpoint to pick
    final_report(args, out_dir, policy, reference, tok, pairs, pad_id, state, device, t_start, log)


def final_report(args, out_dir, policy, reference, tok, pairs, pad_id, state, device, t_start, log) -> None:
    from stage5_gpt.reference_runs import REFERENCE_RUNS
    held_out = "test" if "test" in pairs else "val"      # polite: the test split; reward pairs: val (from train)
    metrics = {"before_on_val": state["before"],
               "after": preference_accuracy(policy, reference, pairs[held_out], pad_id, args.beta)}
    if args.pairs == "reward":
        metrics["continuations"] = continuation_report(args, policy, reference, tok, pairs["test_prompts"], device,
                                                       log)
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    flat = dict(metrics["after"])   # reward_accuracy (the policy's implicit reward) against reference_accuracy
    write_result(result_path, stage=STAGE, dataset=f"dpo_{args.pairs}", split=held_out, metrics=flat,
                 headline="reward_accuracy", train_seconds=state["train_seconds"],
                 device=device, params=policy.num_params(), command=state["commands"], run=run,
                 declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick, "details": metrics,
                        "pairs": {k: len(v) for k, v in pairs.items()}, "steps": state["step"],
                        "hparams": resolved_config(args) | {"checkpoint": portable(str(args.checkpoint))}})
    log.info(f"wrote {result_path}: " + " | ".join(f"{k} {v}" for k, v in flat.items()))


if __name__ == "__main__":
    run_cli(main)
