"""Supervised fine-tuning (SFT): teach a pre-trained GPT to answer instructions, through the chat template.

    python stage5_gpt/sft.py                                   # instructs BASE_CHECKPOINT, the course_mix GPT
    python stage5_gpt/sft.py --lr 1e-3 --mix en_fr=1,de_en=1,sst2=0.1,general=3 --epochs 10 --time-budget 60   # the reference run
    python stage5_gpt/sft.py --quick                           # a smoke run on small slices
    python stage5_gpt/sft.py --out-dir runs/stage5_gpt/sft --resume

Pre-training taught the model to continue text. SFT keeps that training objective, next-token prediction, and
changes only the data and what counts: every example is a conversation rendered by chat_template.render,

    <|endoftext|><|user|>Translate this English sentence into French:\\nA dog runs.<|end|><|assistant|>Un chien court.<|end|>

and the loss is taken on the answer's tokens only (its words and its closing <|end|>), never on the instruction.
After a few thousand such examples the model has learnt the shape: read a request, answer it, stop.

- The examples come from instructions.py, a mixture of the course's tasks; --mix weights them (a round of training
  holds weight x each task's examples).
- A batch holds examples of similar length, right-padded; padding and prompts are ignored by the loss (target -100)
  and, attention being causal, an example never sees another one: there is no packing to undo.
- The learning rate warms up, then follows a cosine to --min-lr over the rounds or --time-budget minutes, whichever
  ends first, as in train.py. Every --eval-interval steps the answer-token loss of each task's validation examples
  (never its test split) decides which checkpoint is best.pt.
- At the end, best.pt answers the test questions of every task (evaluate_chat.score): BLEU, accuracy, the loss on
  the general instructions next to the base model's, and how many answers end properly.

The checkpoint is an ordinary GPT checkpoint (generate.py and evaluate.py read it) with the tokenizer beside it.
"""
from __future__ import annotations

import argparse
import functools
import math
import random
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/sft.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, autocast_for, catch_stop_signals, get_device, get_logger,
                            load_checkpoint, merge_resumed_args, note_command, plot_curves, portable, positive_float,
                            positive_int, probability, reference_command, reference_run_name, resolve_data_dir,
                            resolved_config, rng_state, run_cli, RunTracker, save_checkpoint, set_rng_state,
                            set_seed, write_result)
from stage5_gpt.chat_template import END
from stage5_gpt.data import length_batches
from stage5_gpt.evaluate_chat import answer_loss, encode_example, load_chat_model, pad_batch, score
from stage5_gpt.instructions import TASKS, TRANSLATIONS, load_examples, mixture, parse_mix
from stage5_gpt.lora import (LoRAConfig, add_lora, count_parameters, lora_layers, merged_state_dict,
                             save_adapter)
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.reference_runs import BASE_CHECKPOINT, REFERENCE_RUNS
from stage5_gpt.train import lr_at  # warmup, then a cosine over the steps or the clock

STAGE, SCRIPT = "stage5_gpt", "stage5_gpt/sft.py"
DEFAULT_MIX = "en_fr=1,de_en=1,sst2=0.1,general=3"
QUICK_EXAMPLES = {"train": 300, "val": 20, "test": 10}   # --quick: the first examples of each task
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result", "time_budget", "score_tasks")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Supervised fine-tuning of a pre-trained GPT on instructions (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=BASE_CHECKPOINT,
                   help="the pre-trained GPT (train.py --dataset course_mix writes one whose tokenizer has the "
                        "chat template's tokens)")
    add_common_args(p, epochs=3, batch_size=32, lr=3e-4, out_dir="runs/stage5_gpt/sft")
    p.add_argument("--mix", type=mix_flag, default=DEFAULT_MIX,
                   help=f"task weights, task=weight pairs; tasks: {', '.join(TASKS)}. A round (--epochs counts "
                        f"them) holds weight x each task's training examples")
    p.add_argument("--time-budget", type=positive_float, default=None,
                   help="minutes of training; the learning-rate schedule then ends at the budget")
    p.add_argument("--min-lr", type=float, default=None, help="the cosine's floor (default: --lr / 10)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=probability, default=0.1)
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--eval-interval", type=positive_int, default=500, help="steps between validations")
    p.add_argument("--val-examples", type=positive_int, default=200,
                   help="validation examples per task (the first ones of its val split)")
    p.add_argument("--beam-size", type=positive_int, default=5, help="the final translations: beam search too")
    p.add_argument("--score-tasks", nargs="+", choices=TASKS, default=list(TASKS),
                   help="the tasks whose test split the final report scores (an adapter run: its new task and the "
                        "old ones whose forgetting it measures)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="train LoRA adapters of this rank instead of every weight (lora.py); 0: full fine-tuning")
    p.add_argument("--lora-alpha", type=positive_float, default=16.0, help="LoRA's update is scaled by alpha / rank")
    p.add_argument("--lora-dropout", type=probability, default=0.0, help="dropout on the adapters' input")
    p.add_argument("--lora-targets", nargs="+", default=["c_attn", "c_proj", "c_fc"],
                   help="the linear layers that get adapters, by the end of their names")
    p.add_argument("--cpu-bf16", action="store_true", help="train with bf16 autocast on a CPU that has bf16 "
                                                           "instructions (evaluation stays float32)")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json; publish it with "
                                                  "`python scripts/publish.py <out-dir>/result.json`)")
    args = p.parse_args(argv)
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    return args


def mix_flag(text: str) -> dict[str, float]:
    """--mix for argparse: a mistake becomes argparse's one-line usage error."""
    try:
        return parse_mix(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resume_from(args: argparse.Namespace) -> tuple[argparse.Namespace, dict | None]:
    """--resume: (the run's settings merged with this command's RESUMABLE flags, its last.pt); else (args, None)."""
    if not args.resume:
        return args, None
    ckpt = load_checkpoint(Path(args.out_dir) / "last.pt", stage=STAGE, kind="language_model")
    if ckpt.get("task") != "sft":
        raise UserError(f"{Path(args.out_dir) / 'last.pt'} is not an SFT checkpoint")
    return merge_resumed_args(args, ckpt["args"], RESUMABLE), ckpt


def build_model(args, out_dir: Path, device) -> tuple[GPT, object, dict]:
    """The pre-trained GPT (its tokenizer must have the template's tokens), with this run's dropout; the tokenizer
    is copied beside this run's checkpoints. -> (model, tokenizer, the pre-trained checkpoint)."""
    if not Path(args.checkpoint).is_file():
        run = "course_mix" if "course_mix" in REFERENCE_RUNS else None
        how = (f"`{reference_command(REFERENCE_RUNS[run])}`" if run
               else "`python stage5_gpt/train.py --dataset course_mix`")
        raise UserError(f"checkpoint not found: {args.checkpoint}; a GPT pre-trained on course_mix is needed: {how} "
                        f"(or pass --checkpoint)")
    body, tok, pre = load_chat_model(args.checkpoint, "cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_src, tok_dst = Path(args.checkpoint).parent / pre["data"]["tokenizer"], out_dir / pre["data"]["tokenizer"]
    if tok_src.resolve() != tok_dst.resolve():
        shutil.copyfile(tok_src, tok_dst)
    model = GPT(GPTConfig(**{**pre["config"], "dropout": args.dropout}))
    model.load_state_dict(body.state_dict())
    if args.lora_rank:  # freeze every weight, train thin adapters beside the chosen layers
        add_lora(model, LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout, tuple(args.lora_targets)))
    return model.to(device), tok, pre


def prepare_data(args, data_dir: Path, tok, block_size: int, log) -> dict:
    """{"train": {task: encoded pairs}, "val": {task: encoded pairs}, "test": {task: examples}}. Pairs too long for
    the context are left out (and counted); test stays text, since the model will answer it."""
    out = {}
    for split in ("train", "val", "test"):
        examples = load_examples(data_dir, split)
        limit = QUICK_EXAMPLES[split] if args.quick else args.val_examples if split == "val" else None
        examples = {t: items[:limit] for t, items in examples.items()
                    if (t in args.score_tasks if split == "test" else args.mix[t] > 0)}
        if split == "test":
            out[split] = examples
            continue
        out[split] = {}
        for task, items in examples.items():
            pairs = [encode_example(tok, ex, block_size) for ex in items]
            out[split][task] = [p for p in pairs if p is not None]
            if len(out[split][task]) < len(pairs):
                log.info(f"{task} {split}: {len(pairs) - len(out[split][task])} of {len(pairs)} examples are longer "
                         f"than the context ({block_size} tokens) and left out")
    return out


def validate(model: GPT, val: dict, pad_id: int, device) -> dict:
    """The answer-token loss of each task's validation pairs, and their mean ("all", what best.pt is chosen by:
    every task counts the same, whatever its weight in training)."""
    losses = {task: answer_loss(model, pairs, pad_id, device) for task, pairs in val.items() if pairs}
    return {**{k: round(v, 4) for k, v in losses.items()}, "all": round(sum(losses.values()) / len(losses), 4)}


def save_run(path: Path, optimizer=None, *, args, model: GPT, state: dict, pre: dict) -> None:
    """best.pt holds the weights of a plain GPT (with LoRA: the adapters merged in, and adapter.pt beside it, the
    adapters alone), which generate.py, evaluate_chat.py and chat.py read; last.pt holds the model as it trains (its
    adapters apart) and the optimizer, what --resume needs."""
    adapted = bool(lora_layers(model))
    weights = model.state_dict() if optimizer is not None or not adapted else merged_state_dict(model)
    obj = {"stage": STAGE, "kind": "language_model", "task": "sft", "dataset": pre.get("dataset"),
           "config": model.cfg.to_dict(), "args": vars(args), "model": weights, "state": state,
           "rng": rng_state(), "data": pre["data"], "base": portable(str(args.checkpoint))}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    save_checkpoint(obj, path)
    if adapted and optimizer is None:
        save_adapter(model, path.with_name("adapter.pt"), base_name=portable(str(args.checkpoint)))


def training_footprint(model: GPT, optimizer, device) -> dict:
    """What training holds in memory beyond the model: gradients and AdamW's two moments, for the trained parameters
    only; and the peak memory measured while training (peak_memory)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return {**count_parameters(model), "gradient_bytes": sum(p.numel() * p.element_size() for p in trained),
            "optimizer_state_bytes": sum(t.numel() * t.element_size() for t in state),
            "peak_memory_bytes": peak_memory(device)}


def reset_peak_memory(device) -> None:
    """Start measuring the peak memory of training. CUDA: the allocator's counter. A Linux CPU: the process's
    resident-set high-water mark (VmHWM), which writing 5 to /proc/self/clear_refs resets to what is in use now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device) -> int | None:
    """Bytes at the peak since reset_peak_memory (CPU: the whole process, model, data and activations), or None
    where the system does not say."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def final_report(args, out_dir: Path, tok, data: dict, pre: dict, state: dict, footprint: dict, device,
                 t_start: float, log) -> None:
    """best.pt answers every task's test questions; the result file, with the base model's figures beside, and what
    the training cost: time per step, trained parameters, optimizer state, peak memory, the files' sizes."""
    best = load_checkpoint(out_dir / "best.pt", stage=STAGE, kind="language_model")
    model = GPT(GPTConfig(**best["config"])).to(device)   # a plain GPT: with LoRA, the adapters are merged in
    model.load_state_dict(best["model"])
    model.eval()
    base = load_chat_model(args.checkpoint, device)[0]
    metrics, samples = score(model, tok, data["test"], args.beam_size, base, log=log.info)
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    # the headline: BLEU on the first translation task this run trained (an adaptation's is its new task, never an
    # old one it may have forgotten)
    trained = next((t for t in args.mix if args.mix[t] > 0 and t in TRANSLATIONS), "en_fr")
    headline = f"{trained}_bleu_beam{args.beam_size}" if args.beam_size > 1 else f"{trained}_bleu_greedy"
    write_result(result_path, stage=STAGE, dataset="instructions", split="test", metrics=metrics,
                 headline=headline if headline in metrics else None, train_seconds=state["train_seconds"],
                 device=device, params=model.num_params(), command=state["commands"], run=run,
                 declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "base": {"checkpoint": portable(str(args.checkpoint)), "dataset": pre.get("dataset"),
                                 "step": pre["state"]["step"]},
                        "steps": state["step"], "rounds": state["round"], "best_step": state["best_step"],
                        "best_val": state["best_val"], "examples_seen": state["examples"],
                        "sizes": {split: {t: len(v) for t, v in data[split].items()} for split in data},
                        "mix": args.mix, "samples": samples, "config": model.cfg.to_dict(),
                        "seconds_per_step": round(state["train_seconds"] / max(state["step"], 1), 4),
                        "footprint": footprint | {f"{f}_bytes": (out_dir / f"{f}.pt").stat().st_size
                                                  for f in ("best", "adapter") if (out_dir / f"{f}.pt").is_file()},
                        "hparams": resolved_config(args) | {"checkpoint": portable(str(args.checkpoint))}})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss per answer token": {"train (per step)": tuple(zip(*h["train_loss"])),
                                  **{f"val {t}": tuple(zip(*[(s, v[t]) for s, v in h["val"]])) for t in data["val"]}},
    }, title=f"SFT: {headline} {metrics.get(headline)}")
    log.info(f"wrote {result_path} and its plot" + (f" (the reference run {run!r}: publish it with "
                                                    f"`python scripts/publish.py {result_path}`)" if run else ""))


def main(argv=None) -> None:
    args, ckpt = resume_from(parse_args(argv))
    out_dir = Path(args.out_dir)
    log = get_logger(STAGE, out_dir / "sft.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- the pre-trained GPT and the instruction mixture, in its tokens
    model, tok, pre = build_model(args, out_dir, device)
    pad_id = tok.token_to_id(END)  # any id will do: padding is never attended to by real tokens, nor scored
    data = prepare_data(args, resolve_data_dir(args.data_dir), tok, model.cfg.block_size, log)
    round_size = len(mixture(data["train"], args.mix, random.Random(0)))
    steps_per_round = math.ceil(round_size / args.batch_size)
    total_steps = args.epochs * steps_per_round
    optimizer = model.configure_optimizer(args.weight_decay, args.lr, (0.9, 0.95), device.type)
    autocast, _ = autocast_for(device, False, args.cpu_bf16)
    n = count_parameters(model)
    log.info(f"base {args.checkpoint} ({pre.get('dataset')}, step {pre['state']['step']}) | {n['trainable']:,} of "
             f"{n['trainable'] + n['frozen']:,} parameters trained | a round: {round_size:,} examples ("
             + ", ".join(f"{t} {w:g} x {len(data['train'].get(t, [])):,}" for t, w in args.mix.items() if w > 0)
             + f"), {steps_per_round} steps | {total_steps} steps in all"
             + (f", or {args.time_budget} minutes" if args.time_budget else ""))

    state = {"round": 0, "batch": 0, "step": 0, "examples": 0, "best_val": math.inf, "best_step": 0,
             "train_seconds": 0.0, "history": {"train_loss": [], "val": []}}
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
    note_command(state, SCRIPT, argv)
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])
    save = functools.partial(save_run, args=args, model=model, state=state, pre=pre)  # save(path[, optimizer])

    # ---- the training loop (Ctrl-C and SIGTERM raise a flag; the loop stops between steps and saves)
    stop, restore_signals = catch_stop_signals()
    reset_peak_memory(device)
    t_loop = time.time() - state["train_seconds"]  # training time excludes validation
    bar = tqdm(total=total_steps, initial=state["step"], desc="sft", disable=None)
    try:
        model.train()
        while state["round"] < args.epochs and not stop["by"]:
            # a round's examples and batches are fixed by (seed, round): resumable mid-round
            pairs = mixture(data["train"], args.mix, random.Random(args.seed + state["round"]))
            batches = length_batches([p[0] for p in pairs], args.batch_size, random.Random(args.seed + state["round"]))
            for idx in batches[state["batch"]:]:
                t_step = time.time()
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(state["step"], time.time() - t_loop, args, total_steps)
                x, y = pad_batch([pairs[i] for i in idx], pad_id, device)       # (B, T) each; y -100 off the answers
                with autocast:
                    _, loss = model(x, y)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}) or a longer --warmup-steps")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                state["examples"] += len(idx)
                state["history"]["train_loss"].append([state["step"], round(loss.item(), 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                tracker.train(state["step"], loss=loss.item(), lr=optimizer.param_groups[0]["lr"],
                              grad_norm=grad_norm, examples_per_second=len(idx) / (time.time() - t_step))
                over_budget = bool(args.time_budget and time.time() - t_loop >= 60 * args.time_budget)
                last = state["step"] == total_steps or over_budget
                if state["step"] % args.eval_interval == 0 or last:
                    state["train_seconds"] = time.time() - t_loop
                    val = validate(model, data["val"], pad_id, device)
                    t_loop = time.time() - state["train_seconds"]  # validation time is not training time
                    state["history"]["val"].append([state["step"], val])
                    tracker.evaluation(state["step"], "val", state["train_seconds"], loss=val["all"],
                                       **{f"loss_{t}": v for t, v in val.items() if t != "all"})
                    log.info(f"step {state['step']}: train loss {loss.item():.4f} | val answer loss "
                             + " | ".join(f"{t} {v}" for t, v in val.items()) + f" | {state['train_seconds']:.0f}s")
                    if val["all"] < state["best_val"]:
                        state["best_val"], state["best_step"] = val["all"], state["step"]
                        save(out_dir / "best.pt")
                    save(out_dir / "last.pt", optimizer)
                if over_budget:
                    log.info(f"time budget of {args.time_budget} minutes used up at step {state['step']}")
                    stop["by"] = "time_budget"
                if args.max_steps and state["step"] >= args.max_steps and not stop["by"]:
                    stop["by"] = "max_steps"
                if stop["by"]:
                    break
            if not stop["by"]:
                state["round"] += 1
                state["batch"] = 0
    finally:
        bar.close()
        tracker.close()
        restore_signals()
    state["train_seconds"] = time.time() - t_loop if stop["by"] else state["train_seconds"]
    if stop["by"] not in (None, "time_budget"):
        save(out_dir / "last.pt", optimizer)
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python {SCRIPT} --out-dir {out_dir} --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)
        return
    footprint = training_footprint(model, optimizer, device)
    final_report(args, out_dir, tok, data, pre, state, footprint, device, t_start, log)


if __name__ == "__main__":
    run_cli(main)
