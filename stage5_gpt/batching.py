"""Serving many requests at once: batched generation, then continuous batching, both from scratch.

    outs = generate_batch(model, [Request(prompt=a, max_new_tokens=20), Request(prompt=b, temperature=0.8, seed=1)])
    batcher = ContinuousBatcher(model, max_batch=8)
    handle = batcher.submit(Request(prompt=c, stop_ids=(end_id,)))       # any time, also while others are running
    while batcher.busy: batcher.step()                                   # handle.tokens grows; handle.done at the end
    python stage5_gpt/batching.py --checkpoint runs/stage5_gpt/sft/best.pt --concurrency 1 4 16 64   # throughput

At batch 1, decoding a token reads every weight of the model to do very little arithmetic; the same read can serve
many requests, so B requests decoded together cost little more than one. Two things make rows of a batch differ:

- Prompts have different lengths. `generate_batch` pads them on the left, so that every row's next token sits in the
  same column, and gives each row its own positions (the first real token is position 0) and a mask that hides the
  padding from attention. Each row keeps its own sampling settings, random generator and stop tokens, so its text is
  the text it would get alone (tests/test_stage5_batching.py checks exactly that).
- Requests arrive and finish at different times. A static batch waits for its longest answer, and a request that
  arrives meanwhile waits for the whole batch. `ContinuousBatcher` works at the level of one decoding step instead:
  before each step it admits waiting requests into free rows (their prompt is read alone, its keys and values copied
  into the row), then all busy rows decode one token together, and a row whose request has ended is freed at once.
  Each row sits at its own length in a shared cache (`RowCache`); the mask lets each row's query see its own keys only.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/batching.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (UserError, get_device, portable, positive_int, provenance, resolved_config, run_cli,
                            write_json)
from stage5_gpt.model import GPT, KVCache, sample_next


@dataclass
class Request:
    prompt: list[int]
    max_new_tokens: int = 64
    temperature: float = 0.0                    # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    stop_ids: tuple[int, ...] = ()              # generation ends after one of these (it is kept)
    seed: int = 0                               # this request's own random generator


@dataclass
class Handle:
    """What a caller holds for a submitted request: the tokens so far, whether it has ended and why."""
    request: Request
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    finish_reason: str | None = None            # "stop" (a stop token) or "length" (max_new_tokens)


SEEDS = (-2**63, 2**64)    # what torch.Generator.manual_seed takes: from the first, up to but not including the second


def check_request(model: GPT, req: Request) -> None:
    if not req.prompt:
        raise UserError("a request needs a prompt of at least one token")
    if req.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {req.max_new_tokens}")
    if len(req.prompt) + req.max_new_tokens > model.cfg.block_size:
        raise UserError(f"the prompt ({len(req.prompt)} tokens) and max_new_tokens ({req.max_new_tokens}) exceed the "
                        f"model's context of {model.cfg.block_size} tokens")
    if not SEEDS[0] <= req.seed < SEEDS[1]:
        raise UserError(f"seed must lie in [-2**63, 2**64), got {req.seed}")


def next_token(req: Request, logits: torch.Tensor, history: list[int], generator: torch.Generator) -> int:
    """One row's next token with its own settings, exactly as GPT.generate_stream draws it for one request."""
    idx = torch.tensor([history], device=logits.device)
    return int(sample_next(logits[None], idx, req.temperature, req.top_k, req.top_p, req.repetition_penalty,
                           generator)[0])


def record(handle: Handle, token: int) -> None:
    handle.tokens.append(token)
    if token in handle.request.stop_ids:
        handle.done, handle.finish_reason = True, "stop"
    elif len(handle.tokens) >= handle.request.max_new_tokens:
        handle.done, handle.finish_reason = True, "length"


@torch.no_grad()
def generate_one(model: GPT, req: Request) -> Handle:
    """The reference: one request alone, with GPT.generate_stream and the KV cache."""
    check_request(model, req)
    handle = Handle(req)
    gen = torch.Generator(device=model.wte.weight.device).manual_seed(req.seed)
    idx = torch.tensor([req.prompt], device=model.wte.weight.device)
    for token in model.generate_stream(idx, req.max_new_tokens, req.temperature, req.top_k, req.top_p,
                                       req.repetition_penalty, generator=gen):
        record(handle, int(token[0]))
        if handle.done:
            break
    return handle


@torch.no_grad()
def generate_batch(model: GPT, requests: list[Request]) -> list[Handle]:
    """All requests in one left-padded batch, decoded together until every one has ended."""
    for req in requests:
        check_request(model, req)
    device = model.wte.weight.device
    B, P = len(requests), max(len(r.prompt) for r in requests)
    pad = torch.tensor([P - len(r.prompt) for r in requests], device=device)                # (B,)
    ids = torch.zeros(B, P, dtype=torch.long, device=device)
    for b, r in enumerate(requests):
        ids[b, P - len(r.prompt):] = torch.tensor(r.prompt)                                 # left padding
    cols = torch.arange(P, device=device)
    positions = (cols[None] - pad[:, None]).clamp(min=0)                                    # (B, P): 0 at the 1st real
    real = cols[None] >= pad[:, None]                                                       # (B, P) keys to attend to
    causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    # a padding query sees only itself (a row of a softmax needs one key); its output is never used
    mask = (causal[None] & real[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)[None]   # (B, P, P)
    cache = KVCache(model.cfg.n_layer, P + max(r.max_new_tokens for r in requests))
    logits = model.lm_head(model.hidden_states(ids, cache, positions, mask[:, None]))[:, -1]   # (B, V)
    handles = [Handle(r) for r in requests]
    gens = [torch.Generator(device=device).manual_seed(r.seed) for r in requests]
    history = [list(r.prompt) for r in requests]
    step = 0
    while not all(h.done for h in handles):
        new = torch.zeros(B, dtype=torch.long, device=device)
        for b, h in enumerate(handles):
            if not h.done:                          # an ended row still takes part, with a dummy token
                new[b] = next_token(h.request, logits[b], history[b], gens[b])
                history[b].append(int(new[b]))
                record(h, int(new[b]))
        if all(h.done for h in handles):
            break
        real = torch.cat([real, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)  # (B, S)
        pos = (P + step - pad).clamp(max=model.cfg.block_size - 1)[:, None]     # (B, 1); ended rows: anything
        logits = model.lm_head(model.hidden_states(new[:, None], cache, pos, real[:, None, None, :]))[:, -1]
        step += 1
    return handles


class RowCache:
    """Keys and values for max_batch rows, each row at its own length (`lengths`). A decoding step writes one new
    position per busy row, at that row's length; attention reads the busy rows' buffers with a mask of their lengths.
    The attention layers call update() as they call KVCache's."""

    def __init__(self, n_layer: int, max_batch: int, max_len: int):
        self.max_len, self.pos = max_len, 0     # pos: unused (rows have their own lengths), the model advances it
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = torch.zeros(max_batch, dtype=torch.long)
        self.rows = torch.zeros(0, dtype=torch.long)                 # the rows the next update() writes to

    def allocate(self, like: torch.Tensor, layer: int) -> None:
        if self.keys[layer] is None:
            _, H, _, D = like.shape
            self.keys[layer] = like.new_zeros(len(self.lengths), H, self.max_len, D)
            self.values[layer] = like.new_zeros(len(self.lengths), H, self.max_len, D)

    def load_row(self, row: int, single: KVCache, length: int) -> None:
        """Copy a prompt's keys and values (read alone, batch 1) into row `row`."""
        for layer, (k, v) in enumerate(zip(single.keys, single.values)):
            self.allocate(k, layer)
            self.keys[layer][row, :, :length] = k[0, :, :length]
            self.values[layer][row, :, :length] = v[0, :, :length]
        self.lengths[row] = length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (R, H, 1, D) of the busy rows' new tokens -> those rows' keys and values (R, H, S, D), S the longest
        busy row's length with its new token: the positions beyond it hold nothing any busy row may read, so
        gathering and attending to them (max_len of them) would be work thrown away on every step."""
        lengths = self.lengths[self.rows]
        span = int(lengths.max()) + 1
        rows, at = self.rows.to(k.device), lengths.to(k.device)
        self.keys[layer][rows, :, at] = k[:, :, 0]
        self.values[layer][rows, :, at] = v[:, :, 0]
        return self.keys[layer][rows, :, :span], self.values[layer][rows, :, :span]


class ContinuousBatcher:
    """Requests in, tokens out, one decoding step at a time, at most max_batch requests in flight."""

    def __init__(self, model: GPT, max_batch: int = 8):
        self.model, self.device = model, model.wte.weight.device
        self.cache = RowCache(model.cfg.n_layer, max_batch, model.cfg.block_size)
        self.slots: list[Handle | None] = [None] * max_batch          # row -> the request in it
        self.waiting: deque[Handle] = deque()
        self.state: dict[int, dict] = {}                               # row -> its generator, history, next logits

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(s is not None for s in self.slots)

    def submit(self, req: Request) -> Handle:
        check_request(self.model, req)
        handle = Handle(req)
        self.waiting.append(handle)
        return handle

    def cancel(self, handle: Handle, reason: str = "cancelled") -> None:
        """End a request early (its client went away, or a stop string was found): it leaves the queue, or frees
        its row at once."""
        if handle in self.waiting:
            self.waiting.remove(handle)
        for row, h in enumerate(self.slots):
            if h is handle:
                self.slots[row] = None
                del self.state[row]
        if not handle.done:
            handle.done, handle.finish_reason = True, reason

    @property
    def in_flight(self) -> int:
        """Requests waiting or being decoded."""
        return len(self.waiting) + sum(s is not None for s in self.slots)

    def admit(self, row: int, handle: Handle) -> None:
        """Read the prompt alone (one forward pass over it), copy its cache into the row, keep its next logits."""
        prompt = handle.request.prompt
        single = KVCache(self.model.cfg.n_layer, self.model.cfg.block_size)
        hidden = self.model.hidden_states(torch.tensor([prompt], device=self.device), single)
        self.cache.load_row(row, single, len(prompt))
        self.slots[row] = handle
        self.state[row] = {"gen": torch.Generator(device=self.device).manual_seed(handle.request.seed),
                           "history": list(prompt), "logits": self.model.lm_head(hidden[0, -1])}

    @torch.no_grad()
    def step(self) -> None:
        """Admit what fits, give every busy row its next token, free the rows that ended, then one batched forward
        pass for the rows still busy (their logits for the next step)."""
        for row in range(len(self.slots)):
            if self.slots[row] is None and self.waiting:
                self.admit(row, self.waiting.popleft())
        busy, tokens = [], []
        for row, handle in enumerate(self.slots):
            if handle is None:
                continue
            st = self.state[row]
            token = next_token(handle.request, st["logits"], st["history"], st["gen"])
            st["history"].append(token)
            record(handle, token)
            if handle.done:
                self.slots[row] = None                                 # the row is free for the next request
                del self.state[row]
            else:
                busy.append(row)
                tokens.append(token)
        if not busy:
            return
        rows = torch.tensor(busy)
        self.cache.rows = rows
        lengths = self.cache.lengths[rows]                            # (R,) where each new token goes
        keys = torch.arange(self.cache.max_len)[None] <= lengths[:, None]   # (R, L): the row's own keys, and the new
        hidden = self.model.hidden_states(torch.tensor(tokens, device=self.device)[:, None], self.cache,
                                          lengths.to(self.device)[:, None], keys.to(self.device)[:, None, None, :])
        self.cache.lengths[rows] += 1
        logits = self.model.lm_head(hidden[:, -1])                     # (R, V)
        for i, row in enumerate(busy):
            self.state[row]["logits"] = logits[i]


# ----------------------------------------------------------------------------- throughput against concurrency

@torch.no_grad()
def throughput(model: GPT, prompts: list[list[int]], concurrency: int, max_batch: int, new_tokens: int) -> dict:
    """`concurrency` requests in flight at all times (a new one submitted as soon as one ends) until every prompt is
    answered -> generated tokens per second, and the mean time from submission to the last token."""
    batcher = ContinuousBatcher(model, max_batch)
    queue, live, done, latencies = deque(prompts), [], 0, []
    t0 = time.perf_counter()
    while queue or live:
        while queue and len(live) < concurrency:
            live.append((batcher.submit(Request(queue.popleft(), new_tokens)), time.perf_counter()))
        batcher.step()
        for handle, start in [x for x in live if x[0].done]:
            latencies.append(time.perf_counter() - start)
            done += len(handle.tokens)
        live = [x for x in live if not x[0].done]
    seconds = time.perf_counter() - t0
    return {"concurrency": concurrency, "tokens_per_second": round(done / seconds, 1),
            "mean_latency_s": round(sum(latencies) / len(latencies), 3), "requests": len(prompts)}


def parse_args(argv=None) -> argparse.Namespace:
    from stage5_gpt.reference_runs import SFT_CHECKPOINT
    p = argparse.ArgumentParser(description="Continuous batching: generation throughput against the number of "
                                            "concurrent requests (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=SFT_CHECKPOINT, help="a GPT checkpoint (train.py's or sft.py's best.pt)")
    p.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--requests", type=positive_int, default=64, help="requests per measurement")
    p.add_argument("--new-tokens", type=positive_int, default=32, help="tokens each request generates")
    p.add_argument("--prompt-tokens", type=positive_int, default=16, help="tokens per prompt")
    p.add_argument("--result", default="runs/stage5_gpt/batching_throughput.json",
                   help="where the figures go (a JSON, its plot beside it)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return p.parse_args(argv)


def plot(path: Path, rows: list[dict], title: str) -> None:
    """Tokens per second (left) and each request's mean latency (right) against the requests in flight."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = [r["concurrency"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(c, [r["tokens_per_second"] for r in rows], marker="o", label="continuous batching")
    left.plot(c, [rows[0]["tokens_per_second"] * k / c[0] for k in c], ls=":", color="grey",
              label="if B rows cost what one does")
    left.set_ylim(0, 1.15 * max(r["tokens_per_second"] for r in rows))
    left.set_ylabel("generated tokens per second, all requests")
    right.plot(c, [r["mean_latency_s"] for r in rows], marker="o", color="tab:red")
    right.set_ylabel("mean seconds per request")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(c, [str(k) for k in c])
        ax.set_xlabel("requests in flight (rows decoded together)")
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    import platform

    from stage5_gpt.evaluate import load_model
    from stage5_gpt.reference_runs import REFERENCE_RUNS
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise UserError(f"no checkpoint at {args.checkpoint}: train one first (stage5_gpt/sft.py writes the default), "
                        f"or name one with --checkpoint")
    device = get_device(args.device)
    model, _, _ = load_model(args.checkpoint, device)
    if args.prompt_tokens + args.new_tokens > model.cfg.block_size:
        raise UserError(f"--prompt-tokens and --new-tokens add up to more than the context ({model.cfg.block_size})")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, model.cfg.vocab_size, (args.prompt_tokens,), generator=g).tolist()
               for _ in range(args.requests)]
    rows = []
    for c in args.concurrency:
        rows.append(throughput(model, prompts, c, max_batch=c, new_tokens=args.new_tokens))
        print(f"{c:3d} concurrent: {rows[-1]['tokens_per_second']:8.1f} tokens/s, mean latency "
              f"{rows[-1]['mean_latency_s']:.2f} s")
    alone = next((r for r in rows if r["concurrency"] == 1), None)   # the baseline: one request at a time
    ratios = {str(r["concurrency"]): round(r["tokens_per_second"] / alone["tokens_per_second"], 2)
              for r in rows} if alone else None
    out = Path(args.result)
    write_json(out, {"stage": "stage5_gpt",
        "checkpoint": portable(str(args.checkpoint)), "parameters": model.num_params(), "rows": rows,
        "throughput_vs_one_at_a_time": ratios, "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens,
        "config": resolved_config(args), "threads": torch.get_num_threads(), "device": str(device),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
        | provenance(REFERENCE_RUNS, "stage5_gpt/batching.py", parse_args, args, argv))
    plot(out.with_suffix(".png"), rows, f"Continuous batching of {model.num_params() / 1e6:.1f} M-parameter GPT "
                                        f"({args.prompt_tokens}-token prompts, {args.new_tokens} new tokens each)")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    run_cli(main)
