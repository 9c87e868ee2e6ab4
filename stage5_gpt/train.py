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

--select-frac 0.05 holds out the last 5 % of the training text as a "select" split, which then takes validation's
place during training (best.pt is chosen on it): a hyperparameter search (scripts/sweep.py) compares runs on it and
never looks at val, the split the README reports. Loss, learning rate, gradient norm and tokens/s go to TensorBoard
(`tensorboard --logdir runs`), and every validation to <out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/train.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, add_dist_timeout_arg, autocast_for, catch_stop_signals,
                            end_distributed, get_logger, load_checkpoint, merge_resumed_args, note_command,
                            parse_with_quick_defaults, plot_curves, portable, positive_float, positive_int, probability,
                            reference_run_name, resolve_data_dir, resolved_config, restore_training, rng_state, run_cli,
                            RunTracker, save_checkpoint, set_seed, setup_distributed, wait_for_rank0, write_result)
from stage5_gpt.corpus import DATASETS
from stage5_gpt.data import eval_windows, get_batch, load_split, load_tokenizer, prepare
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.parallel import (FullState, PipelineStage, PPState, ShardedAdamW, TPState, describe_bytes,
                                 pipeline_loss, pipeline_step, pp_clip_grad_norm, rank_bytes, shard_fsdp2,
                                 tensor_parallel, tp_clip_grad_norm)
from stage5_gpt.reference_runs import REFERENCE_RUNS

STAGE, SCRIPT = "stage5_gpt", "stage5_gpt/train.py"
QUICK = {"epochs": 1, "n_layer": 2, "n_embd": 64, "block_size": 64, "vocab_size": 400}  # --quick: a tiny model...
QUICK_CHARS = 50_000                                                                     # ...on the first characters
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result", "time_budget", "compile", "dist_timeout",
             "parallel")


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
    p.add_argument("--select-frac", type=probability, default=0.0,
                   help="hold out this last fraction of train as a 'select' split that replaces val during training "
                        "(for hyperparameter search: choose on it, report val)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); no effect on CPU")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 or AMX): about 1.8x the "
                        "training tokens/s of fp32 measured on this course's CPU; an error on a CPU without it")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start, faster steps)")
    add_dist_timeout_arg(p)
    p.add_argument("--parallel", choices=["ddp", "zero1", "fsdp2", "tensor", "pipeline"], default="ddp",
                   help="under torchrun: ddp (every process holds everything), zero1 (parallel.py: the optimizer "
                        "state sharded over the processes), fsdp2 (PyTorch's fully_shard: weights, gradients and "
                        "optimizer state sharded), tensor (parallel.py: every Block's heads and hidden units split "
                        "over the processes, which all read the same batch) or pipeline (parallel.py: a share of the "
                        "Blocks per process, the batch cut into --accum-steps micro-batches in 1F1B order)")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json; publish it with "
                                                  "`python scripts/publish.py <out-dir>/result.json`)")
    args = parse_with_quick_defaults(p, argv, QUICK)
    if args.select_frac >= 0.5:
        p.error(f"--select-frac {args.select_frac}: hold out less than half of train")
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    args.out_dir = args.out_dir.format(name=run_name(args))
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


FINAL_TRAIN_TOKENS = 3_000_000   # the final report scores at most about this many training tokens (see final_report)


@torch.no_grad()
def evaluate(model, data, block_size: int, device, batch_size: int = 32, every: int = 1) -> tuple[float, int]:
    """(mean loss per token, number of tokens) over a whole split, every token predicted once (every > 1: over one
    window in `every`, evenly spread)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in eval_windows(data, block_size, batch_size, every):
        x, y = x.to(device), y.to(device)
        loss = pipeline_loss(model, x, y) if isinstance(model, PipelineStage) else model(x, y)[1].item()
        total, count = total + loss * y.numel(), count + y.numel()
    model.train()
    return total / count, count


def resume_from(args: argparse.Namespace) -> tuple[argparse.Namespace, dict | None]:
    """--resume: (the settings the run started with, merged with this command's RESUMABLE flags, and its last.pt);
    without --resume: (args, None)."""
    if not args.resume:
        return args, None
    path = Path(args.out_dir) / "last.pt"
    ckpt = load_checkpoint(path, stage=STAGE, kind="language_model")
    if run_name(argparse.Namespace(**ckpt["args"])) != run_name(args):
        raise UserError(f"{path} is a {run_name(argparse.Namespace(**ckpt['args']))} run, not {run_name(args)}")
    return merge_resumed_args(args, ckpt["args"], RESUMABLE), ckpt


def prepare_data(args, data_dir: Path, out_dir: Path, master: bool, world: int, ckpt: dict | None, log) -> dict:
    """The token files in the run folder (data.prepare): rank 0 writes them while the other processes wait, then
    they find them. -> the data description (splits, vocabulary size, token and word counts, fingerprint)."""
    max_chars = QUICK_CHARS if args.quick else None
    meta = prepare(args.dataset, data_dir, out_dir, args.vocab_size, log, args.tokenizer, max_chars) if master else None
    if world > 1:
        wait_for_rank0()
    meta = meta or prepare(args.dataset, data_dir, out_dir, args.vocab_size, log, args.tokenizer, max_chars)
    if ckpt and ckpt["data"]["fingerprint"] != meta["fingerprint"]:
        raise UserError(f"{out_dir / 'tokenizer.json'} does not belong to {out_dir / 'last.pt'} (fingerprints differ)")
    return meta


def hold_out_selection(splits: dict, frac: float) -> dict:
    """--select-frac: the last `frac` of the training tokens become the "select" split, and train keeps the rest."""
    if not frac:
        return splits
    n = int(len(splits["train"]) * frac)
    return {**splits, "train": splits["train"][:-n], "select": splits["train"][-n:]}


def new_state() -> dict:
    """What a run counts, saved in every checkpoint: steps, tokens, the best validation loss, the loss curves."""
    return {"step": 0, "tokens": 0, "best_val_loss": math.inf, "best_step": 0, "train_seconds": 0.0,
            "history": {"train_loss": [], "val_loss": []}}


def log_validation(log, state: dict, val_loss: float, eval_interval: int, split: str = "val") -> None:
    """One line per validation: the mean training loss since the last one, the validation loss, the time so far."""
    recent = [v for _, v in state["history"]["train_loss"][-eval_interval:]]
    log.info(f"step {state['step']}: train loss {sum(recent) / len(recent):.4f} | {split} loss {val_loss:.4f} "
             f"| {state['train_seconds']:.0f}s")


def model_config(args, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, dropout=args.dropout, bias=args.bias, pos=args.pos, norm=args.norm,
                     mlp=args.mlp, attn=args.attn)


def agree(values: list[float], world: int, device: torch.device) -> torch.Tensor:
    """The step's one small all-reduce: [loss, a stop signal, the time budget used up] summed over the processes,
    the loss then averaged (nccl reduces CUDA tensors only, hence the device)."""
    flags = torch.tensor(values, device=device)
    if world > 1:
        dist.all_reduce(flags)
        flags[0] /= world
    return flags


def data_parallel(args, rank: int, world: int) -> tuple[int, int]:
    """(this process's share, the number of shares) of each batch: every process reads its own share, except under
    --parallel tensor and pipeline, where all of them read the whole batch (they split the model instead)."""
    return (0, 1) if args.parallel in ("tensor", "pipeline") else (rank, world)


def wrap_for_training(model: GPT, compile_it: bool, dp_world: int, device: torch.device) -> torch.nn.Module:
    """The module the loop calls: the model itself, torch.compile'd (--compile), in DistributedDataParallel when the
    processes split the batch (torchrun). Both share `model`'s weights, which is what the checkpoints save."""
    train_model = torch.compile(model) if compile_it else model
    if dp_world > 1 and not isinstance(model, FSDPModule):   # FSDP2 averages the gradients itself
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    return train_model


def split_model(model: GPT, args, rank: int, world: int):
    """This process's part of the model: under --parallel fsdp2 its shards of every tensor, tensor its share of every
    Block's heads and hidden units, pipeline its share of the Blocks (a parallel.PipelineStage); else all of it."""
    if args.parallel != "ddp" and world == 1:
        raise UserError(f"--parallel {args.parallel} shards over processes: start it with torchrun "
                        f"--nproc_per_node=2 (or more)")
    if args.parallel == "fsdp2":
        shard_fsdp2(model)
    if args.parallel == "pipeline":
        if args.n_layer % world:
            raise UserError(f"--parallel pipeline gives each of the {world} processes as many of the {args.n_layer} "
                            f"Blocks: --n-layer must divide evenly")
        return PipelineStage(model, rank, world)
    if args.parallel == "tensor":
        hidden = model.h[0].mlp.c_proj.in_features
        if args.n_head % world or hidden % world:
            raise UserError(f"--parallel tensor splits the {args.n_head} heads and {hidden} hidden units of each "
                            f"Block over {world} processes: both must divide evenly")
        if args.dropout:
            raise UserError("--parallel tensor trains with --dropout 0: each process would drop different units of "
                            "the activations they all hold")
        tensor_parallel(model)
    return model


def make_optimizer(model, args, device: torch.device):
    """AdamW with decay groups over this process's parameters; under --parallel zero1 the same AdamW with its state
    split over the processes."""
    if args.parallel == "zero1":
        return ShardedAdamW(model, args.weight_decay, args.lr, (0.9, args.beta2))
    return model.configure_optimizer(args.weight_decay, args.lr, (0.9, args.beta2), device.type)


def clip_and_step(model: GPT, optimizer, scaler, args) -> torch.Tensor:
    """Clip the gradient's norm to --clip (a split model adds its shares' norms over the processes), then
    step the optimizer (through the fp16 loss scaler where there is one). -> the norm before clipping."""
    if scaler:
        scaler.unscale_(optimizer)
    clip = {"tensor": tp_clip_grad_norm, "pipeline": pp_clip_grad_norm}.get(args.parallel)
    grad_norm = clip(model, args.clip) if clip else torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return grad_norm


def log_memory(model: GPT, optimizer, world: int, master: bool, log) -> None:
    """Bytes of weights, gradients and optimizer state on each process (parallel.rank_bytes), gathered to rank 0:
    under --parallel zero1 and fsdp2 each holds a share of what DDP copies everywhere (activations are not counted)."""
    mine = rank_bytes(model, optimizer)
    per_rank = [mine]
    if world > 1:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, mine)
    if master:
        log.info(f"held per process after a step: {describe_bytes(per_rank)}")


def whole(model: GPT, optimizer, args) -> tuple:
    """What checkpoints read and write: the model and optimizer themselves, or, under FSDP2, tensor and pipeline
    parallelism, views (FullState, TPState, PPState) that gather the shares into one process's layout (and scatter it
    back on --resume)."""
    if args.parallel == "fsdp2":
        return FullState(model), FullState(model, optimizer)
    if args.parallel == "tensor":
        return TPState(model), TPState(model, optimizer)
    if args.parallel == "pipeline":
        return PPState(model), PPState(model, optimizer)
    return model, optimizer


def save_run(path: Path, optimizer=None, scaler=None, *, master: bool, args, config: GPTConfig, model: GPT,
             state: dict, batch_gen: torch.Generator, meta: dict) -> None:
    """Write a checkpoint (rank 0 only): best.pt holds the weights, last.pt also the optimizer and the loss scaler,
    everything --resume needs to continue exactly."""
    # sharded runs gather their state: every rank takes part, rank 0 writes
    model_state, optimizer_state = model.state_dict(), optimizer.state_dict() if optimizer is not None else None
    if not master:
        return
    obj = {"stage": STAGE, "kind": "language_model", "dataset": args.dataset, "config": config.to_dict(),
           "args": vars(args), "model": model_state, "state": state, "rng": rng_state(),
           "batch_generator": batch_gen.get_state(),
           "data": {"tokenizer": "tokenizer.json", "fingerprint": meta["fingerprint"]}}
    if optimizer is not None:
        obj["optimizer"] = optimizer_state
        obj["scaler"] = scaler.state_dict() if scaler is not None else None
    save_checkpoint(obj, path)


def final_report(args, out_dir: Path, data_dir: Path, model: GPT, splits: dict, meta: dict, state: dict,
                 device: torch.device, world: int, t_start: float, log) -> None:
    """The best checkpoint scored on every split, a sample of its text, the result file and its plot."""
    best = load_checkpoint(out_dir / "best.pt", stage=STAGE, kind="language_model")
    model = GPT(GPTConfig(**best["config"])).to(device)   # a plain model: a sharded one needs every process
    model.load_state_dict(best["model"])
    metrics = {}
    for split, data in splits.items():
        # a training split larger than FINAL_TRAIN_TOKENS is scored on evenly spread windows (course_mix's 29
        # million tokens would take most of an hour on 2 cores); validation and test splits are always scored whole
        every = max(1, math.ceil(len(data) / FINAL_TRAIN_TOKENS)) if split == "train" else 1
        loss, n = evaluate(model, data, args.block_size, device, every=every)
        metrics[f"{split}_loss"], metrics[f"{split}_ppl"] = round(loss, 4), round(math.exp(loss), 2)
        if every > 1:
            metrics[f"{split}_tokens_scored"] = n
            n = len(data) - 1       # the per-word figure below: the sample's loss per token, the split's tokens
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
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset=args.dataset, split="test" if "test" in splits else "val",
                 metrics=metrics, headline=headline, train_seconds=state["train_seconds"], device=device,
                 params=model.num_params(), command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick, "processes": world,
                        "steps": state["step"], "best_step": state["best_step"],
                        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9)),
                        "vocab_size": meta["vocab_size"], "config": model.cfg.to_dict(),
                        "hparams": resolved_config(args) | {"tokenizer": args.tokenizer and portable(args.tokenizer)},
                        "tokens": meta["tokens"], "words": meta["words"],
                        "sample": sample, "data_dir": portable(str(data_dir))})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss (nats/token)": {"train (per step)": tuple(zip(*h["train_loss"])), "val": tuple(zip(*h["val_loss"]))},
    }, title=f"GPT, {args.dataset}: {headline} {metrics[headline]}")
    log.info(f"wrote {result_path} and its plot" + (f" (the reference run {run!r}: publish it with "
                                                    f"`python scripts/publish.py {result_path}`)" if run else ""))


def main(argv=None) -> None:
    args, ckpt = resume_from(parse_args(argv))
    if args.batch_size % args.accum_steps:
        raise UserError(f"--batch-size {args.batch_size} must be a multiple of --accum-steps {args.accum_steps}")
    out_dir, data_dir = Path(args.out_dir), resolve_data_dir(args.data_dir)
    rank, world, device = setup_distributed(args.device, args.batch_size, args.accum_steps, args.dist_timeout)
    master = rank == 0
    log = get_logger(STAGE, out_dir / "train.log" if master else None)
    log.disabled = not master
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    set_seed(args.seed)
    t_start = time.time()

    # ---- data: one long array of token ids per split; a step draws random windows of it
    meta = prepare_data(args, data_dir, out_dir, master, world, ckpt, log.info)
    splits = hold_out_selection({s: load_split(out_dir, s) for s in meta["splits"]}, args.select_frac)
    eval_split = "select" if args.select_frac else "val"  # what the loop validates on and chooses best.pt by
    tokens_per_step = args.batch_size * args.block_size
    steps_per_epoch = max(1, len(splits["train"]) // tokens_per_step)
    total_steps = args.epochs * steps_per_epoch
    eval_interval = args.eval_interval or steps_per_epoch

    # ---- model and optimizer
    config = model_config(args, meta["vocab_size"])
    model = GPT(config).to(device)
    log.info(f"model: {model.num_params():,} parameters, {config}")
    model = split_model(model, args, rank, world)   # this process's part of it (all of it, but for --parallel)
    optimizer = make_optimizer(model, args, device)
    autocast, scaler = autocast_for(device, args.amp, args.cpu_bf16)
    dp_rank, dp_world = data_parallel(args, rank, world)
    log.info(f"{steps_per_epoch} steps per epoch ({args.batch_size} windows x {args.block_size} tokens"
             f"{f' over {world} processes' if dp_world > 1 else ''}), {total_steps} in all"
             + (f", or {args.time_budget} minutes" if args.time_budget else ""))
    batch_gen = torch.Generator().manual_seed(args.seed)  # the windows: the same stream in every process
    state = restore_training(ckpt, *whole(model, optimizer, args), scaler, batch_gen, log) if ckpt else new_state()
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    if rank > 0 or not ckpt:  # dropout: a different stream in each process
        torch.manual_seed(args.seed + rank + state["step"])
    train_model = wrap_for_training(model, args.compile, dp_world, device)
    tracker = RunTracker(out_dir, args.tensorboard, master, state["step"])
    model_io, optimizer_io = whole(model, optimizer, args)   # FSDP2, tensor: shares gathered into whole tensors
    save = functools.partial(save_run, master=master, args=args, config=config, model=model_io, state=state,
                             batch_gen=batch_gen, meta=meta)  # save(path) -> best.pt; save(path, optimizer, scaler)

    # ---- the training loop (Ctrl-C and SIGTERM raise a flag; the loop stops between steps and saves)
    stop, restore_signals = catch_stop_signals()
    micro = args.batch_size // args.accum_steps  # windows per micro-step, all processes together
    t_loop = time.time() - state["train_seconds"]  # training time excludes validation: t_loop moves on after each
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", disable=None if master else True)
    first_step = True
    try:
        model.train()
        while state["step"] < total_steps:
            t_step = time.time()
            for g in optimizer.param_groups:
                g["lr"] = lr_at(state["step"], time.time() - t_loop, args, total_steps)
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            if args.parallel == "pipeline":   # the micro-batches flow through the stages, 1F1B
                x, y = get_batch(splits["train"], args.batch_size, args.block_size, batch_gen, 0, 1)
                step_loss += pipeline_step(model, x.to(device), y.to(device), args.accum_steps)[0]
            else:
                for k in range(args.accum_steps):
                    x, y = get_batch(splits["train"], micro, args.block_size, batch_gen, dp_rank, dp_world)  # (b, T)
                    sync = k == args.accum_steps - 1 or world == 1  # DDP: average gradients on the last micro-step only
                    skip_sync = not sync and hasattr(train_model, "no_sync")   # FSDP2: it syncs every micro-step
                    with (train_model.no_sync() if skip_sync else contextlib.nullcontext()), autocast:
                        _, loss = train_model(x.to(device), y.to(device))
                    loss = loss / args.accum_steps
                    (scaler.scale(loss) if scaler else loss).backward()
                    step_loss += loss.detach()
            grad_norm = clip_and_step(model, optimizer, scaler, args)
            if first_step:   # what each process holds, once its gradients and optimizer state exist
                log_memory(model, optimizer, world, master, log)
                first_step = False
            # one small all-reduce a step: the mean loss over processes, and whether any process must stop
            over_budget = bool(args.time_budget and time.time() - t_loop >= 60 * args.time_budget)
            flags = agree([step_loss.item(), float(stop["by"] is not None), float(over_budget)], world, device)
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
            tracker.train(state["step"], loss=loss_value, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                          tokens_per_second=tokens_per_step / (time.time() - t_step))
            if state["step"] % eval_interval == 0 or state["step"] == total_steps or flags[2] > 0:
                state["train_seconds"] = time.time() - t_loop
                val_loss, _ = evaluate(model, splits[eval_split], args.block_size, device)
                t_loop = time.time() - state["train_seconds"]  # validation time is not training time
                state["history"]["val_loss"].append([state["step"], round(val_loss, 5)])
                tracker.evaluation(state["step"], eval_split, state["train_seconds"], loss=val_loss)
                log_validation(log, state, val_loss, eval_interval, eval_split)
                if val_loss < state["best_val_loss"]:
                    state["best_val_loss"], state["best_step"] = val_loss, state["step"]
                    save(out_dir / "best.pt")
                save(out_dir / "last.pt", optimizer_io, scaler)
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
        tracker.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        save(out_dir / "last.pt", optimizer_io, scaler)
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"{state['commands'][0]} --resume")   # the same flags: the same run folder, the same run name
    end_distributed(world)
    if stop["by"] not in (None, "max_steps"):
        sys.exit(130)
    if master and not stop["by"]:
        final_report(args, out_dir, data_dir, model, splits, meta, state, device, world, t_start, log)


if __name__ == "__main__":
    run_cli(main)
