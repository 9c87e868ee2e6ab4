"""Five ways to train on two processes, one answer: each scheme's losses next to one process's, on real text.

    python stage5_gpt/parallel_equality.py              # about 2 minutes on 2 CPU cores; figures and a plot
    python stage5_gpt/parallel_equality.py --steps 40   # longer curves

Section 25 of the docs splits the training of one GPT over processes in five ways: DDP (every process a whole copy),
ZeRO-1 (the optimizer state split), FSDP2 (everything split, gathered layer by layer), tensor parallelism (each Block's
heads and hidden units split) and pipeline parallelism (the Blocks split into stages, micro-batches passed along). Each
is only correct if it computes what one process computes. This script shows it the way a practitioner would check a
new setup: the same small GPT, the same seed, the same global batch of Tiny Shakespeare, trained --steps steps by
stage5_gpt/train.py alone and under `torchrun --nproc_per_node=2` with each --parallel scheme, then every step's
training loss compared.

The figures (one process's losses, each scheme's, the largest relative difference) go to --json, and a plot beside it:
the curves on top of each other, and below them how far apart they are, next to one process with another seed: what a
different computation looks like. train.py keeps a loss to 5 decimals in its
history, so a difference below one unit of the 5th decimal (3e-6 relative at these losses) reads as 0 and one unit as
about 3e-6: the bound is a relative 1e-5, the one tests/test_stage5_parallel.py holds every scheme to on every run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/parallel_equality.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (REPO_ROOT, UserError, load_checkpoint, positive_int, provenance, resolve_data_dir,
                            resolved_config, run_cli, write_json)
from stage5_gpt.reference_runs import REFERENCE_RUNS

SCHEMES = ("ddp", "zero1", "fsdp2", "tensor", "pipeline")
# A GPT small enough that 5 schemes x 20 steps take a couple of minutes, with the course's reference parts (RoPE,
# RMSNorm, SwiGLU); dropout 0, which tensor parallelism requires (the ranks would drop different units otherwise).
MODEL = ["--block-size", "64", "--n-layer", "2", "--n-head", "4", "--n-embd", "64", "--pos", "rope", "--norm",
         "rmsnorm", "--mlp", "swiglu", "--no-bias", "--dropout", "0", "--batch-size", "16", "--lr", "3e-3",
         "--warmup-steps", "5"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a small GPT with each parallel scheme on 2 processes and compare "
                                            "every step's loss with one process's (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=positive_int, default=20, help="optimizer steps of every run")
    p.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    p.add_argument("--data-dir", default=None, help="where tiny_shakespeare is (default: $MY_LLM_DATA or the cache)")
    p.add_argument("--json", default="runs/stage5_gpt/parallel_equality.json", help="where the figures go "
                                                                                   "(the plot: the same name, .png)")
    return p.parse_args(argv)


def train(out_dir: Path, steps: int, data_dir: Path, scheme: str | None, seed: int = 1337) -> tuple[list[float], float]:
    """train.py for `steps` steps, alone (scheme None) or on 2 processes -> (every step's loss, seconds)."""
    # the pipeline cuts each batch into 2 micro-batches; the others take the same 2, accumulated, so that every run
    # computes the same global batch the same way
    argv = ["stage5_gpt/train.py", "--data-dir", str(data_dir), "--out-dir", str(out_dir), "--max-steps", str(steps),
            "--eval-interval", str(steps), "--accum-steps", "2", "--seed", str(seed), *MODEL]
    launcher = [sys.executable] if scheme is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([*launcher, *argv, *(["--parallel", scheme] if scheme else [])], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()][-1:]
        raise UserError(f"train.py {'alone' if scheme is None else '--parallel ' + scheme} failed: {last}")
    history = load_checkpoint(out_dir / "last.pt", stage="stage5_gpt")["state"]["history"]["train_loss"]
    return [loss for _, loss in history], time.perf_counter() - t0


def plot(path: Path, one: list[float], runs: dict[str, list[float]], other_seed: list[float]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, height_ratios=[3, 2])
    steps = range(1, len(one) + 1)
    top.plot(steps, one, color="black", lw=3.5, alpha=0.35, label="one process")
    for (name, losses), style in zip(runs.items(), ["-", "--", ":", "-.", (0, (1, 3))]):
        top.plot(steps, losses, ls=style, lw=1.4, label=f"2 processes, {name}")
    top.plot(steps, other_seed, color="grey", lw=1, ls=":", label="one process, another seed")
    top.set_ylabel("training loss (nats per character)")
    top.set_title(f"One GPT on Tiny Shakespeare: one process, and {len(runs)} schemes on two", fontsize=11)
    top.legend(fontsize=8)
    floor = 1e-7                   # where a difference of 0 is drawn: equal to the 5 decimals train.py keeps
    for name, losses in [*runs.items(), ("another seed", other_seed)]:
        diff = [max(abs(a - b) / abs(b), floor) for a, b in zip(losses, one)]
        bottom.semilogy(steps, diff, marker="o", ms=3, lw=1, label=name,
                        **({"color": "grey", "ls": ":"} if name == "another seed" else {}))
    bottom.axhline(1e-5, color="black", lw=0.8, ls="--")
    bottom.text(1, 1.4e-5, "1e-5 relative (the tests' bound)", fontsize=8)
    bottom.text(1, 1.5e-7, "drawn here: 0, equal to the 5 decimals kept", fontsize=8, va="bottom")
    bottom.set_ylim(0.5e-7, 1)
    bottom.set_ylabel("|loss - one process's| / loss")
    bottom.set_xlabel("optimizer step")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir, t0 = resolve_data_dir(args.data_dir), time.perf_counter()
    if not (data_dir / "tiny_shakespeare").is_dir():
        raise UserError(f"no tiny_shakespeare in {data_dir}: run python stage5_gpt/train.py once to download it, or "
                        f"name the data directory with --data-dir")
    with tempfile.TemporaryDirectory(prefix="parallel_equality_") as tmp:
        one, seconds = train(Path(tmp) / "one", args.steps, data_dir, None)
        print(f"one process: {args.steps} steps in {seconds:.0f} s, loss {one[0]:.4f} -> {one[-1]:.4f}")
        other_seed, _ = train(Path(tmp) / "seed2", args.steps, data_dir, None, seed=2)  # a different computation
        print(f"one process, another seed: largest relative difference "
              f"{max(abs(a - b) / abs(b) for a, b in zip(other_seed, one)):.1e}")
        runs, worst, times = {}, {}, {"one process": round(seconds, 1)}
        for scheme in args.schemes:
            runs[scheme], times[scheme] = train(Path(tmp) / scheme, args.steps, data_dir, scheme)
            worst[scheme] = max(abs(a - b) / abs(b) for a, b in zip(runs[scheme], one))
            print(f"2 processes, {scheme:8s}: {times[scheme]:5.0f} s, largest relative difference from one process "
                  f"{worst[scheme]:.1e}")
            times[scheme] = round(times[scheme], 1)
    out = Path(args.json)
    write_json(out, {"stage": "stage5_gpt",
        "dataset": "tiny_shakespeare", "steps": args.steps, "processes": 2, "one_process": one, "schemes": runs,
        "max_relative_difference": {k: float(f"{v:.2e}") for k, v in worst.items()},
        "one_process_another_seed": other_seed,
        "within_1e-5_relative": {k: v <= 1e-5 for k, v in worst.items()},   # the bound the tests hold it to
        "seconds": times, "wall_seconds": round(time.perf_counter() - t0, 1), "model_flags": MODEL, "config": resolved_config(args), "threads_per_process": 1,
        "torch": torch.__version__}
        | provenance(REFERENCE_RUNS, "stage5_gpt/parallel_equality.py", parse_args, args, argv))
    plot(out.with_suffix(".png"), one, runs, other_seed)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    run_cli(main)
