"""Training speed of this Transformer against torch's nn.Transformer at the same configuration, in one process.

    python stage4_transformer/benchmark.py                       # the reference configuration
    python stage4_transformer/benchmark.py --steps 20 --json runs/stage4_transformer/benchmark_20.json

Both get the same sizes, the same random padded batches and a full training step (forward, label-smoothed loss,
backward, clipping, AdamW), timed after warm-up steps, in alternating rounds where each keeps its best. nn.Transformer
gets the same embeddings (token + sinusoidal positions) and a tied output layer, so only the encoder-decoder stacks
differ. The figure is source + target tokens per second; the ratio is ours over torch's.

The figures go to --json (default runs/stage4_transformer/benchmark.json) with the command, the device, the thread
count and the torch version; `python scripts/publish.py runs/stage4_transformer/benchmark.json` copies the reference
run's (reference_runs.py) into stage4_transformer/results/benchmark.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage4_transformer/benchmark.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.common import (command_line, get_device, git_commit, portable, positive_int, reference_command,
                            reference_run_name, resolved_config, run_cli, set_seed, write_json)
from stage4_transformer.model import Embedding, Transformer, TransformerConfig, causal_mask
from stage4_transformer.reference_runs import REFERENCE_RUNS

SCRIPT = "stage4_transformer/benchmark.py"


class TorchTransformer(nn.Module):
    """nn.Transformer between the same embedding and output layer as ours."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg.src_vocab_size, cfg)
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # a note about its own fast path
        self.core = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_enc_layers, cfg.n_dec_layers, cfg.d_ff, cfg.dropout,
                                   batch_first=True, norm_first=cfg.norm == "pre")
        self.out = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.out.weight = self.embed.tokens.weight

    def forward(self, src, tgt_in, tgt_out=None, label_smoothing: float = 0.0):
        pad = src == self.cfg.pad_id
        h = self.core(self.embed(src), self.embed(tgt_in), tgt_mask=~causal_mask(tgt_in.shape[1], src.device),
                      src_key_padding_mask=pad, memory_key_padding_mask=pad, tgt_key_padding_mask=tgt_in == self.cfg.pad_id)
        logits = self.out(h)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=self.cfg.pad_id,
                               label_smoothing=label_smoothing)
        return logits, loss


def random_batch(cfg: TransformerConfig, batch: int, src_len: int, tgt_len: int, device):
    """Token ids with realistic padding: lengths drawn between half and all of the maximum."""
    g = torch.Generator().manual_seed(0)

    def ids(n):
        x = torch.randint(4, cfg.src_vocab_size, (batch, n), generator=g)
        lengths = torch.randint(n // 2, n + 1, (batch,), generator=g)
        x[torch.arange(n)[None, :] >= lengths[:, None]] = cfg.pad_id
        return x.to(device)
    src, tgt = ids(src_len), ids(tgt_len + 1)
    return src, tgt[:, :-1], tgt[:, 1:]


def tokens_per_second(model: nn.Module, batch, steps: int, warmup: int, device) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    src, tgt_in, tgt_out = batch
    n_tokens = int((src != 0).sum() + (tgt_out != 0).sum())
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        _, loss = model(src, tgt_in, tgt_out, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * n_tokens / (time.perf_counter() - t0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="This Transformer vs nn.Transformer, training tokens per second.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vocab-size", type=positive_int, default=10_000)
    p.add_argument("--d-model", type=positive_int, default=256)
    p.add_argument("--n-heads", type=positive_int, default=8)
    p.add_argument("--layers", type=positive_int, default=3)
    p.add_argument("--d-ff", type=positive_int, default=512)
    p.add_argument("--norm", choices=["pre", "post"], default="pre")
    p.add_argument("--batch-size", type=positive_int, default=128, help="sentences per batch")
    p.add_argument("--src-len", type=positive_int, default=16)
    p.add_argument("--tgt-len", type=positive_int, default=18)
    p.add_argument("--steps", type=positive_int, default=10, help="timed training steps per implementation")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds; each model keeps its best")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", default="runs/stage4_transformer/benchmark.json",
                   help="where the figures go; publish them with `python scripts/publish.py <this file>`")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    cfg = TransformerConfig(args.vocab_size, args.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
                            n_enc_layers=args.layers, n_dec_layers=args.layers, d_ff=args.d_ff, dropout=0.1,
                            norm=args.norm, share_embeddings=True)
    batch = random_batch(cfg, args.batch_size, args.src_len, args.tgt_len, device)
    models = {}
    for name, cls in (("ours", Transformer), ("nn.Transformer", TorchTransformer)):
        set_seed(0)
        models[name] = cls(cfg).to(device)
    speeds = {name: 0.0 for name in models}
    for _ in range(args.rounds):  # alternating rounds, each model keeps its best: a busy moment cannot decide the ratio
        for name, model in models.items():
            speeds[name] = max(speeds[name], tokens_per_second(model, batch, args.steps, args.warmup, device))
    for name, speed in speeds.items():
        print(f"{name:15s} {speed:10,.0f} tokens/s")
    ratio = speeds["ours"] / speeds["nn.Transformer"]
    print(f"ours runs at {ratio:.2f}x the speed of nn.Transformer (d_model {args.d_model}, {args.layers}+{args.layers} "
          f"layers, FFN {args.d_ff}, batch {args.batch_size} x ({args.src_len}+{args.tgt_len}), {device}, "
          f"{torch.get_num_threads()} threads)")
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    command = reference_command(REFERENCE_RUNS[run]) if run else portable(command_line(SCRIPT, argv))
    write_json(args.json, {"stage": "stage4_transformer"} | ({"run": run} if run else {}) | {
        "command": command, "tokens_per_second": {k: round(v) for k, v in speeds.items()},
        "ratio_ours_over_torch": round(ratio, 2), "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "config": resolved_config(args), "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
