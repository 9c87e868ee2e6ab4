"""Speed of this GPT, in one process: training tokens/s against Hugging Face's GPT2LMHeadModel at the same
configuration, and generation tokens/s with and without the KV cache.

    python stage5_gpt/benchmark.py              # the WikiText-2 reference size -> runs/stage5_gpt/benchmark.json
    python scripts/publish.py runs/stage5_gpt/benchmark.json                 # -> stage5_gpt/results/benchmark.json

Training: both models get the same sizes, the same random batch and a full step (forward, loss, backward, clipping,
AdamW), timed after warm-up steps. The two are timed in alternating rounds and each keeps its best round, so a
background job slowing one round does not decide the ratio. On a CPU with bf16 instructions a third contestant joins
the rounds: our model under the bf16 autocast of `train.py --cpu-bf16`, reported as its ratio to our float32 steps.
Generation: greedy decoding of --new-tokens tokens after a short prompt, once feeding only the newest token with the
KV cache and once re-reading the whole text every step; the two outputs must be identical.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/benchmark.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn as nn

from scripts.common import (UserError, cpu_has_native_bf16, get_device, positive_int, provenance, resolved_config,
                            run_cli, set_seed, write_json)
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.reference_runs import REFERENCE_RUNS


class HFGPT2(nn.Module):
    """transformers' GPT2LMHeadModel behind our interface: (ids, targets) -> (logits, loss)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel
        self.model = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            activation_function="gelu_new", layer_norm_epsilon=cfg.layer_norm_epsilon,
            bos_token_id=None, eos_token_id=None))  # GPT-2's id 50256 is outside a small vocabulary: none, no warning

    def forward(self, idx, targets):
        logits = self.model(input_ids=idx).logits                                  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def time_training(model: nn.Module, x, y, steps: int, warmup: int, device, autocast=None) -> float:
    """Seconds for `steps` full training steps, after `warmup` untimed ones; the forward pass runs under `autocast`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast or contextlib.nullcontext():
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.no_grad()
def time_generation(model: GPT, prompt, new_tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0.0, use_cache=use_cache)
    return time.perf_counter() - t0, out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPT speed: training vs GPT2LMHeadModel, generation with/without KV cache.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab-size", type=positive_int, default=8000)
    p.add_argument("--n-layer", type=positive_int, default=4)
    p.add_argument("--n-head", type=positive_int, default=4)
    p.add_argument("--n-embd", type=positive_int, default=256)
    p.add_argument("--block-size", type=positive_int, default=128, help="training context")
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per training step")
    p.add_argument("--steps", type=positive_int, default=10, help="timed training steps per round")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds; each model keeps its best")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--new-tokens", type=positive_int, default=512, help="tokens to generate")
    p.add_argument("--prompt-tokens", type=positive_int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", default="runs/stage5_gpt/benchmark.json",
                   help="where the figures go (publish the reference run's with "
                        "`python scripts/publish.py <this file>`)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("the comparison needs Hugging Face transformers: pip install -r requirements.txt") from None
    device = get_device(args.device)
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(args.vocab_size, (args.batch_size, args.block_size + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]                                      # (B, T) each
    contestants = [("ours", GPT, None), ("GPT2LMHeadModel", HFGPT2, None)]
    if device.type == "cpu" and cpu_has_native_bf16():
        contestants.append(("ours, cpu bf16", GPT, torch.autocast("cpu", dtype=torch.bfloat16)))
    models, autocasts = {}, {}
    for name, cls, autocast in contestants:
        set_seed(0)
        models[name], autocasts[name] = cls(cfg).to(device), autocast
    best = {name: float("inf") for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            best[name] = min(best[name], time_training(model, x, y, args.steps, args.warmup, device, autocasts[name]))
    tokens = args.steps * x.numel()
    speeds = {name: tokens / s for name, s in best.items()}
    for name, s in speeds.items():
        print(f"train  {name:16s} {s:10,.0f} tokens/s")
    ratio = speeds["ours"] / speeds["GPT2LMHeadModel"]
    print(f"ours trains at {ratio:.2f}x the speed of GPT2LMHeadModel ({args.n_layer} layers, {args.n_head} heads, "
          f"{args.n_embd} wide, batch {args.batch_size} x {args.block_size}, {device}, {torch.get_num_threads()} threads)")
    bf16_ratio = speeds["ours, cpu bf16"] / speeds["ours"] if "ours, cpu bf16" in speeds else None
    if bf16_ratio:
        print(f"ours with bf16 autocast on this CPU (train.py --cpu-bf16) trains at {bf16_ratio:.2f}x its float32 speed")

    # generation: a context long enough for the prompt and every new token, so the cache is used all the way
    gen_cfg = GPTConfig(**{**cfg.to_dict(), "block_size": args.prompt_tokens + args.new_tokens})
    set_seed(0)
    model = GPT(gen_cfg).to(device).eval()
    prompt = torch.randint(args.vocab_size, (1, args.prompt_tokens), generator=g).to(device)
    t_cache, out_cache = time_generation(model, prompt, args.new_tokens, use_cache=True)
    t_full, out_full = time_generation(model, prompt, args.new_tokens, use_cache=False)
    same = torch.equal(out_cache, out_full)
    gen = {"kv_cache": args.new_tokens / t_cache, "no_cache": args.new_tokens / t_full}
    print(f"generate {args.new_tokens} tokens: {gen['kv_cache']:,.0f} tokens/s with the KV cache, "
          f"{gen['no_cache']:,.0f} without: {t_full / t_cache:.1f}x faster; identical greedy output: {same}")
    if not same:
        raise UserError("cached and uncached greedy decoding disagree")
    write_json(args.json, {"stage": "stage5_gpt",
        "train_tokens_per_second": {k: round(v) for k, v in speeds.items()},
        "train_ratio_ours_over_hf": round(ratio, 2),
        "train_ratio_cpu_bf16_over_fp32": round(bf16_ratio, 2) if bf16_ratio else None,
        "generate_tokens_per_second": {k: round(v, 1) for k, v in gen.items()},
        "kv_cache_speedup": round(t_full / t_cache, 1), "identical_greedy_output": same,
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "config": resolved_config(args)}
        | provenance(REFERENCE_RUNS, "stage5_gpt/benchmark.py", parse_args, args, argv))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
