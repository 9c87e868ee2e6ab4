"""Pre-train the GPT of Stage 5 on Tiny Shakespeare (characters) or WikiText-2 (our byte-level BPE).

    python stage5_gpt/train.py                                    # Tiny Shakespeare, the reference configuration
    python stage5_gpt/train.py --dataset wikitext2 --vocab-size 8000
    python stage5_gpt/train.py --pos rope --norm rmsnorm --mlp swiglu   # the modern (LLaMA-style) variants
    python stage5_gpt/train.py --time-budget 10                   # train for 10 minutes of wall-clock time
    python stage5_gpt/train.py --quick                            # a smoke run on small slices
    python stage5_gpt/train.py --resume                           # continue an interrupted run exactly
    torchrun --standalone --nproc_per_node=2 stage5_gpt/train.py  # distributed data parallel (gloo on CPU, nccl on GPU)

A step draws --batch-size random windows of --block-size tokens (split over --accum-steps micro-batches and over the
processes of a torchrun launch); an "epoch" is as many steps as it takes to draw as many tokens as the training split
holds. The learning rate warms up linearly, then follows a cosine down to --min-lr, over the whole run: over its steps,
or over its minutes with --time-budget (whichever ends first). Every --eval-interval steps the whole validation split
is scored; best.pt is the lowest validation loss, and the final report scores it on every split.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/train.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.distributed as dist
from tqdm import tqdm

from scripts.common import (REPO_ROOT, UserError, add_common_args, catch_stop_signals, get_device, get_logger,
                            load_checkpoint, note_command, plot_curves, positive_float, positive_int, probability,
                            resolve_data_dir, rng_state, run_cli, save_checkpoint, set_rng_state, set_seed,
                            write_result)
from stage5_gpt.data import DATASETS, eval_windows, get_batch, load_split, load_tokenizer, prepare
from stage5_gpt.model import GPT, GPTConfig

STAGE = "stage5_gpt"
QUICK_CHARS = 50_000  # --quick: the first characters of each split
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result", "time_budget", "compile")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Pre-train a GPT (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="tiny_shakespeare", choices=list(DATASETS))
    add_common_args(p, epochs=5, batch_size=24, lr=2e-3, out_dir="runs/stage5_gpt/{name}")
    p.add_argument("--time-budget", type=positive_float, default=None,
                   help="minutes of training; the learning-rate schedule then ends at the budget")
    p.add_argument("--vocab-size", type=positive_int, default=8000, help="BPE vocabulary (WikiText-2; ignored for characters)")
    p.add_argument("--tokenizer", default=None, help="use this tokenizer JSON instead of training one")
    p.add_argument("--block-size", type=positive_int, default=128, help="context length in tokens")
    p.add_argument("--n-layer", type=positive_int, default=4)
    p.add_argument("--n-head", type=positive_int, default=4)
    p.add_argument("--n-embd", type=positive_int, default=192)
    p.add_argument("--dropout", type=probability, default=0.0)
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True, help="biases in Linear and norms")
    p.add_argument("--pos", choices=["learned", "rope"], default="learned")
    p.add_argument("--norm", choices=["layernorm", "rmsnorm"], default="layernorm")
    p.add_argument("--mlp", choices=["gelu", "swiglu"], default="gelu")
    p.add_argument("--attn", choices=["sdpa", "manual"], default="sdpa", help="fused or written-out attention")
    p.add_argument("--accum-steps", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--min-lr", type=float, default=None, help="end of the cosine (default: --lr / 10)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay on the weight matrices")
    p.add_argument("--beta2", type=probability, default=0.99, help="AdamW beta2 (0.99 suits small models and batches)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--eval-interval", type=positive_int, default=None,
                   help="steps between validations (default: one epoch)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); no effect on CPU")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 or AMX): about 1.8x the "
                        "training tokens/s of fp32 measured on this course's CPU; an error on a CPU without it")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start, faster steps)")
    p.add_argument("--result", default=None, help="result JSON path (default: stage5_gpt/results/<run name>.json; "
                                                  "<out-dir>/result.json for smoke runs)")
    args = p.parse_args(argv)
    if args.quick:
        given = [str(a).split("=")[0] for a in (sys.argv[1:] if argv is None else argv)]
        for flag, value in {"epochs": 1, "n_layer": 2, "n_embd": 64, "block_size": 64, "vocab_size": 400}.items():
            if "--" + flag.replace("_", "-") not in given:
                setattr(args, flag, value)
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    return args


def run_name(args) -> str:
    """The data set, plus the non-default architecture options: variants never overwrite the reference run."""
    return "_".join([args.dataset] + [v for v, default in ((args.pos, "learned"), (args.norm, "layernorm"),
                                                           (args.mlp, "gelu")) if v != default])


def lr_at(step: int, elapsed: float, args, total_steps: int) -> float:
    """Linear warmup, then a cosine from --lr to --min-lr; progress is the larger of steps done and budget used."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    if args.time_budget:
        progress = max(progress, elapsed / (60 * args.time_budget))
    progress = min(1.0, progress)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, data, block_size: int, device, batch_size: int = 32) -> tuple[float, int]:
    """(mean loss per token, number of tokens) over a whole split, every token predicted once."""
    model.eval()
    total, count = 0.0, 0
    for x, y in eval_windows(data, block_size, batch_size):
        _, loss = model(x.to(device), y.to(device))
        total, count = total + loss.item() * y.numel(), count + y.numel()
    model.train()
    return total / count, count


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX). Elsewhere bf16 is emulated and slower than fp32.
    PyTorch has no public test for this, so the private helpers are read with a fallback of False."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def autocast_for(device: torch.device, enabled: bool, cpu_bf16: bool = False):
    """Mixed precision. On CUDA (--amp): bf16 where the GPU has it (no loss scaling needed), else fp16 with a scaler.
    On a CPU only when asked (--cpu-bf16): the matrix products run in bf16 while the weights, the optimizer and the
    loss stay fp32. Opt-in, so that the fp32 reference commands keep reproducing their numbers exactly."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return torch.autocast("cuda", dtype=dtype), scaler
    if cpu_bf16 and device.type == "cpu":
        if not cpu_has_native_bf16():
            raise UserError("--cpu-bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); leave the flag out")
        return torch.autocast("cpu", dtype=torch.bfloat16), None
    return contextlib.nullcontext(), None


def setup_distributed(args):
    """Under torchrun (RANK/WORLD_SIZE set): one process per device, gloo on CPU, nccl on GPU. -> rank, world, device."""
    if "RANK" not in os.environ:
        return 0, 1, get_device(args.device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    device = get_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if args.batch_size % (world * args.accum_steps):
        raise UserError(f"--batch-size {args.batch_size} must divide evenly over {world} processes x "
                        f"{args.accum_steps} accumulation steps")
    if device.type == "cpu":  # the processes share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    return rank, world, device


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.batch_size % args.accum_steps:
        raise UserError(f"--batch-size {args.batch_size} must be a multiple of --accum-steps {args.accum_steps}")
    args.out_dir = args.out_dir.format(name=run_name(args))
    out_dir = Path(args.out_dir)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE)
        saved = ckpt["args"]
        if run_name(argparse.Namespace(**saved)) != run_name(args):
            raise UserError(f"{out_dir / 'last.pt'} is a {run_name(argparse.Namespace(**saved))} run, not {run_name(args)}")
        args = argparse.Namespace(**{**vars(args), **saved, **{k: getattr(args, k) for k in RESUMABLE}})
    rank, world, device = setup_distributed(args)
    master = rank == 0
    log = get_logger(STAGE, out_dir / "train.log" if master else None)
    if not master:
        log.disabled = True
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    set_seed(args.seed)
    t_start = time.time()

    # ---- data: token files in the run folder (rank 0 writes them, the others wait)
    data_dir = resolve_data_dir(args.data_dir)
    max_chars = QUICK_CHARS if args.quick else None
    if master:
        meta = prepare(args.dataset, data_dir, out_dir, args.vocab_size, log.info, args.tokenizer, max_chars)
    if world > 1:
        dist.barrier()
    if not master:  # finds rank 0's files
        meta = prepare(args.dataset, data_dir, out_dir, args.vocab_size, log.info, args.tokenizer, max_chars)
    if ckpt and ckpt["data"]["fingerprint"] != meta["fingerprint"]:
        raise UserError(f"{out_dir / 'tokenizer.json'} does not belong to {out_dir / 'last.pt'} (fingerprints differ)")
    splits = {s: load_split(out_dir, s) for s in meta["splits"]}
    tokens_per_step = args.batch_size * args.block_size
    steps_per_epoch = max(1, len(splits["train"]) // tokens_per_step)
    total_steps = args.epochs * steps_per_epoch
    eval_interval = args.eval_interval or steps_per_epoch

    # ---- model and optimizer
    config = GPTConfig(vocab_size=meta["vocab_size"], block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, bias=args.bias, pos=args.pos,
                       norm=args.norm, mlp=args.mlp, attn=args.attn)
    model = GPT(config).to(device)
    optimizer = model.configure_optimizer(args.weight_decay, args.lr, (0.9, args.beta2), device.type)
    autocast, scaler = autocast_for(device, args.amp, args.cpu_bf16)
    log.info(f"model: {model.num_params():,} parameters, {config}")
    log.info(f"{steps_per_epoch} steps per epoch ({args.batch_size} windows x {args.block_size} tokens"
             f"{f' over {world} processes' if world > 1 else ''}), {total_steps} in all"
             + (f", or {args.time_budget} minutes" if args.time_budget else ""))

    state = {"step": 0, "tokens": 0, "best_val_loss": math.inf, "best_step": 0, "train_seconds": 0.0,
             "history": {"train_loss": [], "val_loss": []}}
    batch_gen = torch.Generator().manual_seed(args.seed)  # the windows: the same stream in every process
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        batch_gen.set_state(ckpt["batch_generator"])
        set_rng_state(ckpt["rng"])  # rank 0's generators: a one-process run resumes exactly, dropout included
        log.info(f"resumed at step {state['step']}")
    note_command(state, "stage5_gpt/train.py", argv)  # the checkpoints keep it: results name the first
    if rank > 0 or not ckpt:  # dropout: a different stream in each process
        torch.manual_seed(args.seed + rank + state["step"])
    train_model = model
    if args.compile:
        train_model = torch.compile(model)
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(path: Path, with_optimizer: bool = True) -> None:
        if not master:
            return
        obj = {"stage": STAGE, "dataset": args.dataset, "config": config.to_dict(), "args": vars(args),
               "model": model.state_dict(), "state": state, "rng": rng_state(),
               "batch_generator": batch_gen.get_state(),
               "data": {"tokenizer": "tokenizer.json", "fingerprint": meta["fingerprint"]}}
        if with_optimizer:
            obj["optimizer"] = optimizer.state_dict()
            obj["scaler"] = scaler.state_dict() if scaler is not None else None
        save_checkpoint(obj, path)

    def validate() -> None:
        state["train_seconds"] = time.time() - t_loop[0]
        val_loss, _ = evaluate(model, splits["val"], args.block_size, device)
        t_loop[0] = time.time() - state["train_seconds"]  # validation time is not training time
        state["history"]["val_loss"].append([state["step"], round(val_loss, 5)])
        recent = [v for _, v in state["history"]["train_loss"][-eval_interval:]]
        log.info(f"step {state['step']}: train loss {sum(recent) / len(recent):.4f} | val loss {val_loss:.4f} "
                 f"| {state['train_seconds']:.0f}s")
        if val_loss < state["best_val_loss"]:
            state["best_val_loss"], state["best_step"] = val_loss, state["step"]
            checkpoint(out_dir / "best.pt", with_optimizer=False)
        checkpoint(out_dir / "last.pt")

    # ---- the training loop (Ctrl-C and SIGTERM raise a flag; the loop stops between steps and saves)
    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop
    micro = args.batch_size // args.accum_steps  # windows per micro-step, all processes together
    t_loop = [time.time() - state["train_seconds"]]
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", disable=None if master else True)
    try:
        model.train()
        while state["step"] < total_steps:
            elapsed = time.time() - t_loop[0]
            for g in optimizer.param_groups:
                g["lr"] = lr_at(state["step"], elapsed, args, total_steps)
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            for k in range(args.accum_steps):
                x, y = get_batch(splits["train"], micro, args.block_size, batch_gen, rank, world)  # (b, T) each
                sync = k == args.accum_steps - 1 or world == 1  # DDP: average gradients on the last micro-step only
                with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast:
                    _, loss = train_model(x.to(device), y.to(device))
                loss = loss / args.accum_steps
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach()
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            # one small all-reduce a step: the mean loss over processes, and whether any process must stop
            over_budget = bool(args.time_budget and time.time() - t_loop[0] >= 60 * args.time_budget)
            flags = torch.tensor([step_loss.item(), float(stop["by"] is not None), float(over_budget)],
                                 device=device)  # nccl reduces CUDA tensors only
            if world > 1:
                dist.all_reduce(flags)
                flags[0] /= world
            loss_value = flags[0].item()
            if not math.isfinite(loss_value):
                raise UserError(f"the loss became {loss_value} at step {state['step'] + 1}; "
                                f"try a lower --lr (now {args.lr}) or a longer --warmup-steps"
                                + (", or --no-amp" if args.amp and device.type == "cuda" else ""))
            state["step"] += 1
            state["tokens"] += tokens_per_step
            state["history"]["train_loss"].append([state["step"], round(loss_value, 5)])
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if state["step"] % eval_interval == 0 or state["step"] == total_steps or flags[2] > 0:
                validate()
            if flags[2] > 0:
                log.info(f"time budget of {args.time_budget} minutes used up at step {state['step']}")
                break
            if flags[1] > 0:
                stop["by"] = stop["by"] or "a signal in another process"
            if args.max_steps and state["step"] >= args.max_steps and not stop["by"]:
                stop["by"] = "max_steps"
            if stop["by"]:
                break
    finally:
        bar.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop[0]
        checkpoint(out_dir / "last.pt")
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python stage5_gpt/train.py --dataset {args.dataset} --out-dir {out_dir} --resume")
        if world > 1:
            dist.destroy_process_group()
        if stop["by"] != "max_steps":
            sys.exit(130)
        return
    if world > 1:
        dist.destroy_process_group()
    if not master:
        return

    # ---- final report: the best checkpoint on every split, a sample, the result file
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE)["model"])
    metrics = {}
    for split, data in splits.items():
        loss, n = evaluate(model, data, args.block_size, device)
        metrics[f"{split}_loss"], metrics[f"{split}_ppl"] = round(loss, 4), round(math.exp(loss), 2)
        if meta["tokenizer"] != "char":  # per word: the same total loss spread over the words, as Stage 2 counts them
            metrics[f"{split}_ppl_word"] = round(math.exp(loss * n / meta["words"][split]), 2)
    tok = load_tokenizer(out_dir / "tokenizer.json")
    prompt = torch.tensor([tok.encode("\n")], device=device)
    model.eval()
    sample = tok.decode(model.generate(prompt, 300, temperature=0.8, top_k=50,
                                       generator=torch.Generator(device=device).manual_seed(args.seed))[0].tolist())
    log.info("best checkpoint (step %d): %s\nsample:\n%s", state["best_step"],
             " | ".join(f"{k} {v}" for k, v in metrics.items()), sample)
    headline = "val_loss" if "test_loss" not in metrics else "test_ppl_word" if "test_ppl_word" in metrics else "test_loss"
    smoke = args.quick or args.max_steps is not None
    result_path = Path(args.result) if args.result else (
        out_dir / "result.json" if smoke else REPO_ROOT / STAGE / "results" / f"{run_name(args)}.json")
    write_result(result_path, stage=STAGE, dataset=args.dataset, split="test" if "test" in splits else "val",
                 metrics=metrics, headline=headline, train_seconds=state["train_seconds"], device=device,
                 params=model.num_params(), command=state["commands"],
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick, "processes": world,
                        "steps": state["step"], "best_step": state["best_step"],
                        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9)),
                        "vocab_size": meta["vocab_size"], "config": config.to_dict(),
                        "hparams": {k: v for k, v in vars(args).items() if k not in RESUMABLE},
                        "tokens": meta["tokens"], "words": meta["words"], "sample": sample, "data_dir": str(data_dir)})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss (nats/token)": {"train (per step)": tuple(zip(*h["train_loss"])), "val": tuple(zip(*h["val_loss"]))},
    }, title=f"GPT, {args.dataset}: {headline} {metrics[headline]}")
    log.info(f"wrote {result_path} and its plot")


if __name__ == "__main__":
    run_cli(main)
