"""Where the gains of smaller weights and of speculative decoding start: decoding speed against the model's size.

    python stage5_gpt/decode_scaling.py        # -> runs/stage5_gpt/decode_scaling.json (+ .png)

quantize.py and speculative.py measure the trained WikiText-2 GPT, which is small: at batch 1 its 13 MB of float32
weights sit in the CPU's caches, and a decoding step costs mostly the Python and the launch of each small operation,
not the reading of weights. Both tricks attack the reading of weights, so both need a larger model to pay. This script
builds GPTs of the reference's shape (same vocabulary, rope, rmsnorm, swiglu, no biases) at growing widths and depths,
with random weights, since the speed of a matrix product does not depend on the values in it, and measures at each
size:

- greedy decoding tokens/s at batch 1 with the KV cache for float32, bf16 weights (where the CPU computes bf16
  natively), our int8 (quantize.py, PyTorch's fused int8 kernel) and PyTorch's own dynamic int8 (torch.ao);
- for speculative decoding, the cost of one target step, of the target checking k + 1 tokens in one pass, and of one
  step of the draft (the --draft-layers x --draft-embd GPT). If all k proposals were accepted a round would give k + 1
  tokens for k draft steps and one checking pass, so (k + 1) * step / (k * draft + check) is the best speed-up the
  pair can reach; with acceptance rate a the expected tokens per round fall to (1 - a^(k+1)) / (1 - a)
  (Leviathan et al. 2023, section 3). speculative.py measures a and the real speed-up on trained models.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/decode_scaling.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (UserError, cpu_has_native_bf16, positive_int, provenance, resolved_config, run_cli, set_seed,
                            write_json)
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.quantize import decode_speeds, quantize_model, torch_dynamic_int8
from stage5_gpt.reference_runs import REFERENCE_RUNS
from stage5_gpt.speculative import Cached


def parse_size(text: str) -> list[int]:
    """'4x192' -> [4 layers, 192 wide] (a list, as the result file records it)."""
    try:
        layers, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is LAYERSxWIDTH, like 4x192; got {text!r}") from None
    if layers < 1 or width < 64 or width % 64:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one layer, and a width that is a multiple of 64")
    return [layers, width]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Decoding speed of float32, bf16 and int8 weights, and the cost ratios "
                                            "of speculative decoding, at growing GPT sizes (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[[4, 192], [6, 384], [8, 512], [12, 768]],
                   help="LAYERSxWIDTH per model (heads: width / 64; the first is the WikiText-2 reference's shape)")
    p.add_argument("--vocab-size", type=positive_int, default=8000)
    p.add_argument("--draft-layers", type=positive_int, default=2, help="the draft GPT's layers")
    p.add_argument("--draft-embd", type=positive_int, default=64, help="the draft GPT's width")
    p.add_argument("--k", type=positive_int, default=4, help="proposals per round of speculative decoding")
    p.add_argument("--prompt-tokens", type=positive_int, default=16)
    p.add_argument("--new-tokens", type=positive_int, default=64, help="tokens per decoding-speed measurement")
    p.add_argument("--rounds", type=positive_int, default=3, help="timing repeats (the best counts)")
    p.add_argument("--json", default="runs/stage5_gpt/decode_scaling.json", help="where the figures go (+ .png)")
    args = p.parse_args(argv)
    if args.draft_embd % 32:
        p.error("--draft-embd must be a multiple of 32 (heads of 32)")
    return args


def gpt(layers: int, width: int, vocab: int, heads: int, block: int) -> GPT:
    set_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=width, dropout=0.0,
                         bias=False, pos="rope", norm="rmsnorm", mlp="swiglu")).eval()


@torch.no_grad()
def pass_seconds(model: GPT, context: list[int], new: int, rounds: int) -> float:
    """Seconds for one cached forward pass over `new` tokens after `context` (the best of `rounds`)."""
    best = float("inf")
    for _ in range(rounds):
        cached = Cached(model)
        cached.logits_after(context)
        t0 = time.perf_counter()
        cached.logits_after(context + context[:new])
        best = min(best, time.perf_counter() - t0)
    return best


def measure(layers: int, width: int, draft: GPT, args: argparse.Namespace) -> dict:
    block = args.prompt_tokens + args.new_tokens + args.k + 1
    fresh = lambda: gpt(layers, width, args.vocab_size, max(1, width // 64), block)  # noqa: E731  (the same weights)
    model = fresh()
    prompt = torch.randint(args.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    variants = {"float32": model}
    if cpu_has_native_bf16():
        variants["bf16"] = fresh().to(torch.bfloat16)
    variants["int8 (ours, fused kernel)"] = quantize_model(fresh())   # quantizes in place: a model of its own
    variants["int8 (torch.ao dynamic)"] = torch_dynamic_int8(model)
    speeds = decode_speeds(variants, prompt, args.new_tokens, args.rounds)   # the formats take turns
    step = pass_seconds(model, prompt, 1, 5 * args.rounds)                 # one target token
    check = pass_seconds(model, prompt, args.k + 1, 5 * args.rounds)       # k + 1 tokens in one target pass
    draft_step = pass_seconds(draft, prompt, 1, 5 * args.rounds)
    row = {"layers": layers, "width": width, "params": model.num_params(),
           "float32_mb": round(model.num_params() * 4 / 2**20, 1), "tokens_per_second": speeds,
           "speedup_over_float32": {n: round(s / speeds["float32"], 3) for n, s in speeds.items()},
           "target_step_ms": round(1e3 * step, 3), "target_check_ms": round(1e3 * check, 3),
           "draft_step_ms": round(1e3 * draft_step, 3),
           "speculative_best_speedup": round((args.k + 1) * step / (args.k * draft_step + check), 3)}
    print(f"{layers:2d} x {width:4d} ({row['params'] / 1e6:6.1f} M, {row['float32_mb']:6.1f} MB float32) | "
          + " | ".join(f"{n} {s:6.1f}" for n, s in speeds.items())
          + f" tokens/s | step {row['target_step_ms']:.2f} ms, check {args.k + 1} {row['target_check_ms']:.2f} ms, "
            f"draft {row['draft_step_ms']:.2f} ms: speculative at best {row['speculative_best_speedup']:.2f}x")
    return row


def plot(path: Path, result: dict) -> None:
    """Left: each format's decoding speed over float32's against the model's size. Right: speculative decoding's best
    case and the cost ratios behind it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    params = [r["params"] / 1e6 for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in rows[0]["speedup_over_float32"]:
        left.plot(params, [r["speedup_over_float32"][name] for r in rows], "o-", label=name)
    left.axhline(1, color="grey", lw=0.8)
    left.set_xscale("log")
    left.set_xlabel("parameters (millions, log scale)")
    left.set_ylabel("decoding tokens/s over float32's")
    left.legend(fontsize=8)
    right.plot(params, [r["speculative_best_speedup"] for r in rows], "o-", color="tab:green",
               label=f"speculative, every proposal accepted (k={result['config']['k']})")
    right.plot(params, [r["draft_step_ms"] / r["target_step_ms"] for r in rows], "s--", color="tab:purple",
               label="draft step / target step")
    right.plot(params, [r["target_check_ms"] / r["target_step_ms"] for r in rows], "^--", color="tab:brown",
               label=f"checking {result['config']['k'] + 1} tokens / one step")
    right.axhline(1, color="grey", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("target parameters (millions, log scale)")
    right.legend(fontsize=8)
    fig.suptitle(f"Batch-1 greedy decoding with the KV cache, random weights, {result['threads']} threads",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    if len({tuple(size) for size in args.sizes}) != len(args.sizes):
        raise UserError("--sizes has a size twice")
    block = args.prompt_tokens + args.new_tokens + args.k + 1
    draft = gpt(args.draft_layers, args.draft_embd, args.vocab_size, args.draft_embd // 32, block)
    print(f"draft: {args.draft_layers} x {args.draft_embd} ({draft.num_params() / 1e6:.2f} M parameters), "
          f"{torch.get_num_threads()} threads, bf16 native: {cpu_has_native_bf16()}")
    rows = [measure(layers, width, draft, args) for layers, width in args.sizes]
    result = {"stage": "stage5_gpt", "rows": rows, "draft_params": draft.num_params(),
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cpu_native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "config": resolved_config(args)} \
        | provenance(REFERENCE_RUNS, "stage5_gpt/decode_scaling.py", parse_args, args, argv)
    write_json(args.json, result)
    plot(Path(args.json).with_suffix(".png"), result)
    print(f"wrote {args.json} and {Path(args.json).with_suffix('.png')}")


if __name__ == "__main__":
    run_cli(main)
