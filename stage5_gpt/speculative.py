"""Speculative decoding from scratch (Leviathan et al. 2023; Chen et al. 2023): a small draft model guesses, the big
model checks k guesses in one forward pass, and the text is exactly what the big model alone would have written.

    ids, stats = speculative_generate(target, draft, prompt, max_new_tokens=128, k=4)               # greedy
    ids, stats = speculative_generate(target, draft, prompt, 128, k=4, temperature=0.8, generator=g) # sampled
    python stage5_gpt/speculative.py --checkpoint big/best.pt --draft small/best.pt --k 1 2 4 8

Decoding one token at a time with the KV cache costs one forward pass of the model per token, and at batch 1 that
pass is slow mostly because every weight has to be read from memory, whatever the number of tokens in the pass. So
checking k tokens costs about as much as producing one. Speculative decoding uses that:

1. the draft model (same tokenizer, much cheaper) proposes k tokens, one by one;
2. the target model reads the last accepted token and the k proposals in one pass (its cache makes that k+1 new
   positions), which gives its own distribution q at each of the k+1 places;
3. proposals are accepted from the left while they pass the test: greedy, the draft's token must be the target's
   argmax; sampling, token d (drawn from the draft's p) is kept with probability min(1, q(d) / p(d)). At the first
   rejection a token is drawn from the leftover max(0, q - p), normalised, and the round ends; if all k pass, one more
   token comes free from the target's last distribution. Every round adds 1 to k+1 tokens;
4. both caches are rolled back to the accepted text (KVCache.pos: later writes overwrite what is beyond).

The accept/reject rule is why the output distribution is exactly the target's (the proof is two lines in the docs;
tests/test_stage5_speculative.py checks it empirically on a small vocabulary). The speed-up depends on how often the
draft agrees with the target (the acceptance rate) and on how much cheaper the draft is.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/speculative.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (UserError, get_device, portable, positive_int, provenance, resolved_config, run_cli,
                            write_json)
from stage5_gpt.evaluate import load_model
from stage5_gpt.model import GPT, KVCache, next_token_probs
from stage5_gpt.reference_runs import DRAFT_CHECKPOINT, GPT_CHECKPOINT, REFERENCE_RUNS


def device_of(model: torch.nn.Module) -> torch.device:
    """Where a model's tensors are (a quantized model's embedding keeps its weights as buffers, not parameters)."""
    return next(itertools.chain(model.parameters(), model.buffers())).device


class Cached:
    """A model with its KV cache and how many of the text's tokens the cache holds: `logits_after(ids)` feeds the
    tokens it has not seen yet and returns the logits after each of them; `rollback(n)` forgets all but the first n."""

    def __init__(self, model: GPT):
        self.model, self.cache = model, KVCache(model.cfg.n_layer, model.cfg.block_size)
        self.device = device_of(model)

    @property
    def seen(self) -> int:
        return self.cache.pos

    def logits_after(self, ids: list[int]) -> torch.Tensor:
        """The logits following each new token of ids (those from position `seen` on) -> (n_new, V)."""
        new = torch.tensor([ids[self.seen:]], device=self.device)                      # (1, n_new)
        return self.model.lm_head(self.model.hidden_states(new, self.cache))[0].float()

    def rollback(self, n: int) -> None:
        self.cache.pos = min(self.cache.pos, n)


def pick(logits: torch.Tensor, temperature: float, top_k, top_p, generator) -> tuple[int, torch.Tensor | None]:
    """One token from logits (V,) -> (token, the distribution it came from; None when greedy)."""
    if temperature == 0:
        return int(logits.argmax()), None
    probs = next_token_probs(logits[None], temperature, top_k, top_p)[0]
    return int(torch.multinomial(probs, 1, generator=generator)), probs


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, prompt: list[int], max_new_tokens: int, k: int = 4,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None, stop_id: int | None = None) -> tuple[list, dict]:
    """-> (the new tokens, {"rounds", "proposed", "accepted", "acceptance_rate", "target_passes"}). The text is the
    target's own: identical to its greedy decoding at temperature 0, distributed as its sampling otherwise. Stops at
    max_new_tokens, at stop_id (kept), or where the context (block_size) is full."""
    if k < 1:
        raise UserError(f"k (tokens the draft proposes per round) must be at least 1, got {k}")
    if not prompt:
        raise UserError("the prompt is empty: give at least one token")
    block = min(target.cfg.block_size, draft.cfg.block_size)
    ids, new = list(prompt), []
    t, d = Cached(target), Cached(draft)
    stats = {"rounds": 0, "proposed": 0, "accepted": 0, "target_passes": 0}
    if len(ids) >= block:
        raise UserError(f"the prompt is {len(ids)} tokens: the models read at most {block}")
    t.logits_after(ids[:-1]) if len(ids) > 1 else None   # both caches hold all but the last token: it is fed next
    d.logits_after(ids[:-1]) if len(ids) > 1 else None
    while len(new) < max_new_tokens and len(ids) < block and (stop_id is None or not new or new[-1] != stop_id):
        room = min(k, block - len(ids) - 1, max_new_tokens - len(new) - 1)   # the target reads ids + proposals
        proposals, draft_probs = [], []
        for _ in range(max(room, 0)):                    # 1. the draft proposes, one token at a time
            token, probs = pick(d.logits_after(ids + proposals)[-1], temperature, top_k, top_p, generator)
            proposals.append(token)
            draft_probs.append(probs)
        q = t.logits_after(ids + proposals)[-(len(proposals) + 1):]   # 2. (n+1, V): the target checks them at once
        stats["target_passes"] += 1
        accepted = 0
        for i, token in enumerate(proposals):            # 3. accept from the left
            if temperature == 0:
                ok = int(q[i].argmax()) == token
            else:
                qi = next_token_probs(q[i][None], temperature, top_k, top_p)[0]
                ok = bool(torch.rand((), generator=generator) < (qi[token] / draft_probs[i][token]).clamp(max=1))
            if not ok:
                break
            accepted += 1
        if accepted < len(proposals):                    # rejected: the target's correction
            if temperature == 0:
                extra = int(q[accepted].argmax())
            else:
                qi = next_token_probs(q[accepted][None], temperature, top_k, top_p)[0]
                leftover = (qi - draft_probs[accepted]).clamp(min=0)
                extra = int(torch.multinomial(leftover / leftover.sum(), 1, generator=generator))
        else:                                            # all accepted: one more from the target's last distribution
            extra = pick(q[-1], temperature, top_k, top_p, generator)[0]
        round_tokens = proposals[:accepted] + [extra]
        if stop_id is not None and stop_id in round_tokens:
            round_tokens = round_tokens[:round_tokens.index(stop_id) + 1]
        round_tokens = round_tokens[:max_new_tokens - len(new)]
        stats["rounds"] += 1
        stats["proposed"] += len(proposals)
        stats["accepted"] += accepted
        ids += round_tokens
        new += round_tokens
        t.rollback(len(ids) - 1)                         # 4. keep what was accepted; the last token is fed next
        d.rollback(len(ids) - 1)
    stats["acceptance_rate"] = round(stats["accepted"] / max(stats["proposed"], 1), 4)
    return new, stats


@torch.no_grad()
def plain_generate(model: GPT, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The target alone, greedy, with its KV cache: what speculative decoding must reproduce, and its speed rival."""
    idx = torch.tensor([prompt], device=device_of(model))
    n = min(max_new_tokens, model.cfg.block_size - len(prompt))
    return [int(x[0]) for x in model.generate_stream(idx, n, temperature=0)]


@torch.no_grad()
def plain_sampled(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float, generator) -> list[int]:
    """The model alone, sampling (the tests' reference for what a distribution looks like without checking)."""
    idx = torch.tensor([prompt], device=device_of(model))
    return [int(x[0]) for x in model.generate_stream(idx, max_new_tokens, temperature=temperature,
                                                      generator=generator)]


def check_pair(target_ckpt: dict, draft_ckpt: dict, target_path, draft_path) -> None:
    if target_ckpt["data"]["fingerprint"] != draft_ckpt["data"]["fingerprint"]:
        raise UserError(f"the draft {draft_path} has another tokenizer than {target_path}: speculative decoding needs "
                        f"the same token ids in both models")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Speculative decoding: a draft GPT proposes, the target checks (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=GPT_CHECKPOINT, help="the target GPT (train.py's best.pt)")
    p.add_argument("--draft", default=DRAFT_CHECKPOINT, help="a smaller GPT with the same tokenizer")
    p.add_argument("--k", type=positive_int, nargs="+", default=[1, 2, 4, 8], help="proposals per round to measure")
    p.add_argument("--prompt", default="The history of")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--rounds", type=positive_int, default=10,
                   help="timing rounds, plain decoding and each k taking turns in each (the best counts)")
    p.add_argument("--result", default="runs/stage5_gpt/speculative.json",
                   help="where the figures go, their plot beside them as .png (publish the reference run's with "
                        "`python scripts/publish.py <this file>`)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    return p.parse_args(argv)



def val_ppl(checkpoint) -> float | None:
    """The validation perplexity the checkpoint's own training run recorded (result.json beside it), if it did."""
    result = Path(checkpoint).parent / "result.json"
    return json.loads(result.read_text()).get("metrics", {}).get("val_ppl") if result.exists() else None


def plot(path: Path, result: dict) -> None:
    """Tokens/s per k against plain decoding (left) and the share of proposals the target accepted (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r for r in result["rows"] if r != "plain"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.bar(["plain"] + ks, [result["rows"][r]["tokens_per_second"] for r in ["plain"] + ks],
             color=["0.6"] + ["tab:blue"] * len(ks))
    for i, r in enumerate(ks, start=1):
        left.text(i, result["rows"][r]["tokens_per_second"], f"{result['rows'][r]['speedup']:.2f}x", ha="center",
                  va="bottom", fontsize=8)
    left.set_ylabel("greedy decoding, batch 1 (tokens/s)")
    right.plot([int(r[2:]) for r in ks], [result["rows"][r]["acceptance_rate"] for r in ks], "o-")
    right.set_xlabel("k (tokens the draft proposes per round)")
    right.set_ylabel("share of proposals accepted")
    right.set_ylim(0, 1)
    fig.suptitle(f"target {result['target_params'] / 1e6:.2f} M parameters, draft {result['draft_params'] / 1e6:.2f} "
                 f"M: same text as the target alone", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    target, tok, t_ckpt = load_model(args.checkpoint, device)
    draft, _, d_ckpt = load_model(args.draft, device)
    check_pair(t_ckpt, d_ckpt, args.checkpoint, args.draft)
    prompt = tok.encode(args.prompt) or [0]
    plain = plain_generate(target, prompt, args.max_new_tokens)
    runs = {"plain": lambda: (plain_generate(target, prompt, args.max_new_tokens), None)}
    runs |= {f"k={k}": (lambda k=k: speculative_generate(target, draft, prompt, len(plain), k)) for k in args.k}
    best, stats = dict.fromkeys(runs, float("inf")), {}
    for _ in range(args.rounds):          # every way takes its turn in each round: the CPU's moods fall on all
        for name, run in runs.items():
            t0 = time.perf_counter()
            new, stats[name] = run()
            best[name] = min(best[name], time.perf_counter() - t0)
            if new != plain:
                raise RuntimeError(f"{name}: speculative greedy text differs from the target's own")  # a bug
    plain_s = best["plain"]
    rows = {"plain": {"tokens_per_second": round(len(plain) / plain_s, 1)}}
    print(f"plain KV-cache decoding: {len(plain)} tokens, {rows['plain']['tokens_per_second']} tokens/s")
    for k in args.k:
        s = best[f"k={k}"]
        rows[f"k={k}"] = {**stats[f"k={k}"], "tokens_per_second": round(len(plain) / s, 1),
                          "speedup": round(plain_s / s, 3)}
        print(f"k={k}: {rows[f'k={k}']['tokens_per_second']} tokens/s ({rows[f'k={k}']['speedup']}x), acceptance "
              f"{rows[f'k={k}']['acceptance_rate']:.2f}, {rows[f'k={k}']['target_passes']} target passes for "
              f"{len(plain)} tokens")
    result = {"stage": "stage5_gpt", "target": portable(str(args.checkpoint)), "draft": portable(str(args.draft)),
        "target_params": target.num_params(), "draft_params": draft.num_params(),
        "target_model": target.cfg.to_dict(), "draft_model": draft.cfg.to_dict(),
        "target_val_ppl": val_ppl(args.checkpoint), "draft_val_ppl": val_ppl(args.draft),
        "prompt": args.prompt, "threads": torch.get_num_threads(), "greedy_identical": True, "rows": rows,
        "text": tok.decode(plain), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "config": resolved_config(args)} | provenance(REFERENCE_RUNS, "stage5_gpt/speculative.py", parse_args, args, argv)
    write_json(args.result, result)
    plot(Path(args.result).with_suffix(".png"), result)
    print(f"wrote {args.result} and {Path(args.result).with_suffix('.png')}")


if __name__ == "__main__":
    run_cli(main)
