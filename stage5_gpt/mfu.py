"""How close one process comes to this machine's limit: the model FLOPs utilisation (MFU) of a training step.

    python stage5_gpt/mfu.py                  # the WikiText-2 reference size -> runs/stage5_gpt/mfu.json (+ .png)
    python stage5_gpt/mfu.py --compile        # the same step under torch.compile too, beside the eager one

The limit: the best throughput this machine reaches on a square matrix product (sizes 1024 to 4096), in float32, and
in bf16 where the CPU computes it natively (AVX512-BF16 or AMX) or on a GPU. The step: forward, loss, backward,
clipping and AdamW on a random batch, as train.py takes it, timed after warm-up steps, the best of --rounds.

A transformer's training step costs about 6N + 12·L·T·d floating-point operations per token (Kaplan et al. 2020;
Chowdhery et al. 2022, appendix B): 6 per parameter (2 in the forward pass, 4 in the backward), plus attention's
scores and weighted sums, which grow with the context T instead of with the parameters (L layers, width d). MFU is
those operations times the measured tokens/s, over the peak: the share of the hardware's arithmetic that the model's
own mathematics uses. Everything else, the optimizer, norms, softmax, memory traffic and Python, counts against it.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/mfu.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (cpu_has_native_bf16, get_device, positive_int, provenance, resolved_config, run_cli, set_seed,
                            write_json)
from stage5_gpt.benchmark import time_training
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.reference_runs import REFERENCE_RUNS


def matmul_peak(dtype: torch.dtype, device: torch.device, sizes: list[int], repeats: int = 3) -> tuple[float, int]:
    """(the best FLOP/s of an n x n by n x n product over `sizes`, the n that reached it): 2·n³ operations each."""
    best, best_n = 0.0, sizes[0]
    for n in sizes:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b                                                  # warm-up: threads, caches, kernel choice
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            flops = 2 * n ** 3 / (time.perf_counter() - t0)
            if flops > best:
                best, best_n = flops, n
    return best, best_n


def flops_per_token(cfg: GPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 per parameter, plus 12·L·T·d for attention's scores and weighted sums."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Model FLOPs utilisation of a GPT training step against this machine's "
                                            "measured matmul peak.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # the WikiText-2 reference run's model and batch (stage5_gpt/reference_runs.py "wikitext2")
    p.add_argument("--vocab-size", type=positive_int, default=8000)
    p.add_argument("--n-layer", type=positive_int, default=4)
    p.add_argument("--n-head", type=positive_int, default=4)
    p.add_argument("--n-embd", type=positive_int, default=192)
    p.add_argument("--block-size", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--pos", default="rope", choices=["learned", "rope"])
    p.add_argument("--norm", default="rmsnorm", choices=["layernorm", "rmsnorm"])
    p.add_argument("--mlp", default="swiglu", choices=["gelu", "swiglu"])
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--compile", action="store_true", help="also time the step of the torch.compile'd model")
    p.add_argument("--steps", type=positive_int, default=10, help="timed training steps per round")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds; each precision keeps its best")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles in them)")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[1024, 2048, 3072, 4096],
                   help="square matmul sizes the peak is measured on")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", default="runs/stage5_gpt/mfu.json",
                   help="where the figures go (and their plot, as .png; publish the reference run's with "
                        "`python scripts/publish.py <this file>`)")
    return p.parse_args(argv)


def plot(path: Path, result: dict) -> None:
    """Each precision's measured matmul peak as a grey bar, and beside it what each training step reaches of it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = [r["name"] for r in rows]
    ax.bar(names, [r["peak_gflops"] for r in rows], color="0.85", label="matmul peak (same precision)")
    bars = ax.bar(names, [r["step_gflops"] for r in rows], width=0.5, color="tab:blue", label="training step")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{100 * r['mfu']:.0f} %", ha="center",
                va="bottom", fontsize=9)
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"MFU of a {result['params'] / 1e6:.1f} M-parameter GPT training step "
                 f"({result['threads']} threads, {result['device']})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=args.bias, pos=args.pos,
                    norm=args.norm, mlp=args.mlp)
    set_seed(0)
    model = GPT(cfg).to(device)
    per_token = flops_per_token(cfg, model.num_params())
    g = torch.Generator().manual_seed(0)
    data = torch.randint(args.vocab_size, (args.batch_size, args.block_size + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]                                                  # (B, T) each
    precisions = {"float32": (torch.float32, None)}
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        precisions["bf16"] = (torch.bfloat16, torch.autocast(device.type, dtype=torch.bfloat16))
    steps = [("eager", model)] + ([("compiled", torch.compile(model))] if args.compile else [])
    print(f"model: {model.num_params():,} parameters, {per_token / 1e6:.1f} MFLOPs per token "
          f"(6N + 12·L·T·d), batch {args.batch_size} x {args.block_size}, {device}, {torch.get_num_threads()} threads")
    figures, rows = {}, []
    for name, (dtype, autocast) in precisions.items():
        peak, n = matmul_peak(dtype, device, args.sizes)
        for how, step_model in steps:
            seconds = min(time_training(step_model, x, y, args.steps, args.warmup, device, autocast)
                          for _ in range(args.rounds))
            tokens_per_second = args.steps * x.numel() / seconds
            mfu = per_token * tokens_per_second / peak
            key = name if how == "eager" else f"{name} compiled"
            figures[key] = {"peak_gflops": round(peak / 1e9, 1), "peak_at_n": n,
                            "train_tokens_per_second": round(tokens_per_second), "mfu": round(mfu, 4)}
            rows.append({"name": key, "peak_gflops": round(peak / 1e9, 1),
                         "step_gflops": round(per_token * tokens_per_second / 1e9, 1), "mfu": round(mfu, 4)})
            print(f"{key:17s} peak {peak / 1e9:8.1f} GFLOP/s (n={n}) | step {tokens_per_second:9,.0f} tokens/s "
                  f"= {per_token * tokens_per_second / 1e9:7.1f} GFLOP/s | MFU {100 * mfu:.1f} %")
    result = {"stage": "stage5_gpt", "flops_per_token": per_token, "params": model.num_params(), "precisions": figures,
              "rows": rows, "compile": args.compile, "device": str(device), "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "cpu_native_bf16": cpu_has_native_bf16(),
              "torch": torch.__version__, "config": resolved_config(args)} \
        | provenance(REFERENCE_RUNS, "stage5_gpt/mfu.py", parse_args, args, argv)
    write_json(args.json, result)
    plot(Path(args.json).with_suffix(".png"), result)
    print(f"wrote {args.json} and {Path(args.json).with_suffix('.png')}")


if __name__ == "__main__":
    run_cli(main)
