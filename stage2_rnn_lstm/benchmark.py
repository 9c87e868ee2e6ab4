"""Training speed of the hand-written cells against PyTorch's nn.RNN / nn.LSTM / nn.GRU, in one process.

    python stage2_rnn_lstm/benchmark.py                         # LSTM at the Tiny Shakespeare reference size
    python stage2_rnn_lstm/benchmark.py --model-type rnn --steps 20

Both models get the same config, the same random batches and a full training step (forward, backward,
gradient clipping, AdamW), timed after warm-up steps. The figure is tokens per second; the ratio says how
many times faster torch's implementation is (its inner loop runs in C++, ours in Python). The figures go to
--json (default runs/stage2_rnn_lstm/benchmark_<model-type>/result.json) with the command that measured them;
`python scripts/publish.py <that file>` publishes the reference run's (reference_runs.py) into results/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage2_rnn_lstm/benchmark.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (command_line, get_device, git_commit, portable, positive_int, reference_command,
                            reference_run_name, resolved_config, run_cli, set_seed, write_json)
from stage2_rnn_lstm.model import LMConfig, RNNLanguageModel, detach_state
from stage2_rnn_lstm.reference_runs import REFERENCE_RUNS

STAGE = "stage2_rnn_lstm"
SCRIPT = "stage2_rnn_lstm/benchmark.py"


def tokens_per_second(config: LMConfig, batch_size: int, bptt: int, steps: int, warmup: int, device) -> float:
    set_seed(0)
    model = RNNLanguageModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, config.vocab_size, (batch_size, bptt + 1), device=device)
    state = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        _, loss, state = model(x[:, :-1], state, targets=x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state = detach_state(state)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size * bptt / (time.perf_counter() - t0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Hand-written recurrent cells vs torch's, tokens per second in training.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-type", "--model_type", choices=["rnn", "lstm", "gru"], default="lstm")
    p.add_argument("--vocab-size", type=positive_int, default=65)
    p.add_argument("--emb-dim", type=positive_int, default=64)
    p.add_argument("--hidden-dim", type=positive_int, default=512)
    p.add_argument("--n-layers", type=positive_int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--bptt", type=positive_int, default=128)
    p.add_argument("--steps", type=positive_int, default=10, help="timed training steps per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", default="runs/stage2_rnn_lstm/benchmark_{model_type}/result.json",
                   help="write the figures to this JSON file (publish the reference run's with "
                        "`python scripts/publish.py <file>`)")
    args = p.parse_args(argv)
    args.json = args.json.format(model_type=args.model_type)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    speeds = {}
    for impl in ("scratch", "torch"):
        config = LMConfig(vocab_size=args.vocab_size, model_type=args.model_type, emb_dim=args.emb_dim,
                          hidden_dim=args.hidden_dim, n_layers=args.n_layers, dropout=0.2, impl=impl)
        speeds[impl] = tokens_per_second(config, args.batch_size, args.bptt, args.steps, args.warmup, device)
        print(f"{impl:8s} {speeds[impl]:10,.0f} tokens/s")
    ratio = speeds["torch"] / speeds["scratch"]
    print(f"torch's nn.{args.model_type.upper()} is {ratio:.2f}x the speed of the hand-written cells "
          f"({args.n_layers}x{args.hidden_dim}, batch {args.batch_size} x {args.bptt}, {device}, "
          f"{torch.get_num_threads()} threads)")
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    command = reference_command(REFERENCE_RUNS[run]) if run else command_line(SCRIPT, argv)
    write_json(args.json, {"stage": STAGE} | ({"run": run} if run else {}) | {
        "tokens_per_second": {k: round(v) for k, v in speeds.items()}, "ratio_torch_over_scratch": round(ratio, 2),
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "config": resolved_config(args), "command": portable(command), "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
