"""The pipeline's bubble, measured: how long each stage waits, against (p - 1) / (m + p - 1), as micro-batches grow.

    python stage5_gpt/pipeline_bubble.py                   # 2 stages on 2 processes, m = 1 to 16; about 3 minutes
    python stage5_gpt/pipeline_bubble.py --micro 1 4 --steps 3

Section 25 cuts a GPT into p stages, one per process, and sends m micro-batches through them (parallel.pipeline_step,
GPipe's order or 1F1B's). While the pipeline fills and drains, a stage has nothing to do: in the textbook picture,
where every stage takes the same time for every micro-batch and sending costs nothing, that idle share is
(p - 1) / (m + p - 1): half the time for p = 2 and m = 1, a ninth for m = 8. This script measures it. It starts itself
under `torchrun --nproc_per_node=2` (one thread per process), and for each schedule and each m runs --steps timed
training steps (forward and backward, after --warmup untimed ones) of the same global batch; pipeline_step times the
seconds each stage computes, so 1 - computing / wall-clock is the share it waited. Before that, rank 0 times the whole
model on one process (one thread), the baseline: what the two processes buy.

What the textbook picture leaves out shows up here too: the micro-batches shrink as m grows (the global batch is
fixed), and small matrix products use a core less well; each send and receive costs time; and the stages are not
equal (the last one also computes the output layer and the loss). The batches are random token ids of a
character-sized vocabulary (65, as Tiny Shakespeare's), which keeps the two stages close to equal: the measurement is
of the schedule, not of any text. The figures go to --json, a plot beside it.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/pipeline_bubble.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.distributed as dist

from scripts.common import (REPO_ROOT, UserError, end_distributed, positive_int, provenance, resolved_config, run_cli,
                            write_json)
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.parallel import PipelineStage, pipeline_step
from stage5_gpt.reference_runs import REFERENCE_RUNS

SCHEDULES = ("gpipe", "1f1b")
VOCAB = 65   # Tiny Shakespeare's characters: a small output layer, so the last stage costs about what the first does


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Measure the pipeline bubble of GPipe and 1F1B on 2 processes against "
                                            "(p - 1) / (m + p - 1) (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--micro", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="numbers of micro-batches m to measure (each must divide --batch-size)")
    p.add_argument("--steps", type=positive_int, default=8, help="timed steps per schedule and m")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=positive_int, default=32, help="windows per step, all micro-batches together")
    p.add_argument("--block-size", type=positive_int, default=128)
    p.add_argument("--n-layer", type=positive_int, default=4, help="Blocks, split evenly over the stages")
    p.add_argument("--n-embd", type=positive_int, default=256)
    p.add_argument("--n-head", type=positive_int, default=4)
    p.add_argument("--json", default="runs/stage5_gpt/pipeline_bubble.json", help="where the figures go "
                                                                                 "(the plot: the same name, .png)")
    args = p.parse_args(argv)
    if bad := [m for m in args.micro if args.batch_size % m]:
        p.error(f"--micro {bad[0]} does not divide --batch-size {args.batch_size}")
    if args.warmup < 0:
        p.error(f"--warmup must be 0 or more, got {args.warmup}")
    return args


def config(args) -> GPTConfig:
    return GPTConfig(vocab_size=VOCAB, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, dropout=0.0, bias=False, pos="rope", norm="rmsnorm", mlp="swiglu")


def batches(args, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, VOCAB, (args.batch_size, args.block_size), generator=g),
             torch.randint(0, VOCAB, (args.batch_size, args.block_size), generator=g)) for _ in range(n)]


def time_one_process(args) -> float:
    """Seconds per training step (forward and backward) of the whole model on this process: the baseline."""
    torch.manual_seed(0)
    model = GPT(config(args))
    data = batches(args, args.warmup + args.steps)
    for i, (x, y) in enumerate(data):
        if i == args.warmup:
            t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
    return (time.perf_counter() - t0) / args.steps


def time_pipeline(args, schedule: str, micro: int) -> dict:
    """This stage's seconds computing and in all over --steps pipelined steps (after --warmup)."""
    torch.manual_seed(0)
    stage = PipelineStage(GPT(config(args)), dist.get_rank(), dist.get_world_size())
    busy = wall = 0.0
    for i, (x, y) in enumerate(batches(args, args.warmup + args.steps)):
        stage.zero_grad(set_to_none=True)
        dist.barrier()                     # every step starts together, as after an optimizer step
        _, times = pipeline_step(stage, x, y, micro, schedule)
        if i >= args.warmup:
            busy, wall = busy + times["busy"], wall + times["wall"]
    return {"busy": busy, "wall": wall}


def plot(path: Path, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = result["rows"]
    ms = sorted({r["micro"] for r in rows})
    fine = [m / 4 for m in range(4, 4 * max(ms) + 1)]
    p = result["processes"]
    left.plot(fine, [(p - 1) / (m + p - 1) for m in fine], color="black", lw=1, ls="--",
              label="(p - 1) / (m + p - 1)")
    for schedule, marker in zip(SCHEDULES, "os"):
        mine = [r for r in rows if r["schedule"] == schedule]
        left.plot([r["micro"] for r in mine], [r["idle_mean"] for r in mine], marker=marker, label=f"{schedule}, "
                  "measured (mean of the stages)")
        right.plot([r["micro"] for r in mine], [r["step_seconds"] for r in mine], marker=marker, label=schedule)
    right.axhline(result["one_process_step_seconds"], color="grey", ls=":", label="whole model, one process")
    right.axhline(result["one_process_step_seconds"] / p, color="grey", ls="--", lw=0.8,
                  label=f"one process / {p}: no bubble, free sends")
    left.set_ylabel("share of the step a stage waits")
    left.set_ylim(0, 0.65)
    right.set_ylabel("seconds per training step")
    right.set_ylim(0, 1.15 * max(result["one_process_step_seconds"], *[r["step_seconds"] for r in rows]))
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.set_xlabel("micro-batches per step (m)")
        ax.legend(fontsize=8)
    fig.suptitle(f"A {result['parameters'] / 1e6:.1f} M-parameter GPT in {p} pipeline stages, batch "
                 f"{result['config']['batch_size']} x {result['config']['block_size']} tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def worker(args, argv) -> None:
    """Under torchrun: the measurements on every rank; rank 0 gathers them and writes the result."""
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.n_layer % world:
        raise UserError(f"--n-layer {args.n_layer} does not split evenly into {world} stages")
    one = time_one_process(args) if rank == 0 else None   # the other rank waits at the barrier: nothing competes
    dist.barrier()
    rows = []
    for schedule in SCHEDULES:
        for micro in args.micro:
            mine = time_pipeline(args, schedule, micro)
            every: list = [None] * world
            dist.all_gather_object(every, mine)
            idle = [1 - t["busy"] / t["wall"] for t in every]
            rows.append({"schedule": schedule, "micro": micro, "idle_per_stage": [round(v, 4) for v in idle],
                         "idle_mean": round(sum(idle) / world, 4), "theory": round((world - 1) / (micro + world - 1), 4),
                         "step_seconds": round(max(t["wall"] for t in every) / args.steps, 4)})
            if rank == 0:
                r = rows[-1]
                print(f"{schedule:5s} m={micro:2d}: idle {r['idle_mean']:.3f} (stages {r['idle_per_stage']}), "
                      f"theory {r['theory']:.3f}, {r['step_seconds']:.3f} s per step", flush=True)
    if rank == 0:
        out = Path(args.json)
        result = ({"stage": "stage5_gpt",
            "processes": world, "threads_per_process": 1, "parameters": GPT(config(args)).num_params(),
            "model": config(args).to_dict(), "one_process_step_seconds": round(one, 4), "rows": rows,
            "config": resolved_config(args), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__}
            | provenance(REFERENCE_RUNS, "stage5_gpt/pipeline_bubble.py", parse_args, args, argv))
        write_json(out, result)
        plot(out.with_suffix(".png"), result)
        print(f"one process: {one:.3f} s per step; wrote {out} and {out.with_suffix('.png')}")
    end_distributed(world)


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" in os.environ:
        return worker(args, argv)
    # not under torchrun: start the two processes, this script in each
    argv = sys.argv[1:] if argv is None else list(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "stage5_gpt/pipeline_bubble.py", *argv], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip() and "error" in line.lower()][-1:]
        raise UserError(f"the 2 processes failed: {last[0] if last else proc.stderr.strip()[-300:]}")


if __name__ == "__main__":
    run_cli(main)
