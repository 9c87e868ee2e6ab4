"""Generate text with a trained GPT, printed token by token as it is sampled.

    python stage5_gpt/generate.py --prompt "ROMEO:"                      # runs/stage5_gpt/tiny_shakespeare/best.pt
    python stage5_gpt/generate.py --prompt "ROMEO:" --temperature 0      # greedy: always the most likely token
    python stage5_gpt/generate.py --top-k 40 --top-p 0.9 --repetition-penalty 1.2
    python stage5_gpt/generate.py --interactive                          # a prompt loop
    python stage5_gpt/generate.py --no-kv-cache                          # recompute the whole prefix every step

With the KV cache (the default) the prompt is read once and each new token costs one row of attention; without it
every step re-reads the whole text. Both give the same tokens; --no-kv-cache is there to feel the difference.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/generate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, positive_float, positive_int, run_cli
from stage5_gpt.data import CharTokenizer
from stage5_gpt.evaluate import load_model
from stage5_gpt.tokenizer import EOT


def probability_or_none(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float) -> None:
    """The sampling flags, the same in generate.py and chat.py."""
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens)
    p.add_argument("--temperature", type=non_negative, default=temperature,
                   help="0 = greedy; below 1 sharper, above 1 flatter")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=probability_or_none, default=None,
                   help="nucleus sampling: the smallest set of tokens whose probability reaches p")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0,
                   help="> 1 makes tokens already in the text less likely")
    p.add_argument("--seed", type=int, default=1337)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generate text with a trained GPT (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/stage5_gpt/tiny_shakespeare/best.pt")
    p.add_argument("--prompt", default="", help="text to continue (empty: start from scratch)")
    add_sampling_args(p, max_new_tokens=300, temperature=0.8)
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole prefix at every step")
    p.add_argument("--no-stream", action="store_true", help="print the text once it is complete")
    p.add_argument("--interactive", action="store_true", help="read prompts in a loop (an empty line or Ctrl-D ends)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return p.parse_args(argv)


def encode_prompt(tok, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from a newline (characters) or <|endoftext|> (BPE)."""
    if isinstance(tok, CharTokenizer):
        missing = tok.unknown(prompt)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            raise UserError(f"the model knows {len(tok)} characters; the prompt has {len(missing)} others: {shown}")
        return tok.encode(prompt or "\n")
    return tok.encode(prompt, allowed_special="all") if prompt else [tok.token_to_id(EOT)]


def stream_text(model, tok, ids: list[int], max_new_tokens: int, device, temperature: float = 0.8,
                top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                seed: int = 1337, use_cache: bool = True):
    """Sample max_new_tokens tokens after the prompt `ids`; after each one yield (the continuation's text so far, the
    number of tokens so far). The text holds whole characters only: a UTF-8 character that byte-level BPE split over
    several tokens shows up once its last byte is there (the last text yielded is always the full decode). generate()
    below prints these texts; scripts/demo.py streams them into a web page."""
    idx = torch.tensor([ids], device=device)                                            # (1, T)
    gen = torch.Generator(device=device).manual_seed(seed)
    new, text = [], ""
    for next_id in model.generate_stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                         repetition_penalty=repetition_penalty, use_cache=use_cache, generator=gen):
        new.append(int(next_id[0]))
        decoded = tok.decode(new)
        if not decoded.endswith("\ufffd") or len(new) == max_new_tokens:  # a split character: wait for its last byte
            text = decoded
        yield text, len(new)


def generate(model, tok, prompt: str, args, device, out=sys.stdout) -> str:
    """Sample a continuation of `prompt`, writing it to `out` as it comes; returns the continuation."""
    ids = encode_prompt(tok, prompt)  # raises on a prompt the tokenizer cannot read, before anything is printed
    out.write(prompt)
    if len(ids) > model.cfg.block_size:
        print(f"(the prompt has {len(ids)} tokens; the model reads its last {model.cfg.block_size})", file=sys.stderr)
    text, shown, n, t0 = "", "", 0, time.perf_counter()
    for text, n in stream_text(model, tok, ids, args.max_new_tokens, device, args.temperature, args.top_k, args.top_p,
                               args.repetition_penalty, args.seed, use_cache=not args.no_kv_cache):
        if not args.no_stream:
            out.write(text[len(shown):])
            out.flush()
            shown = text
    if args.no_stream:
        out.write(text)
    out.write("\n")
    seconds = time.perf_counter() - t0
    print(f"({n} tokens in {seconds:.2f} s, {n / max(seconds, 1e-9):.0f} tokens/s, "
          f"{'no ' if args.no_kv_cache else ''}KV cache)", file=sys.stderr)
    return text


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, tok, _ = load_model(args.checkpoint, device)
    if not args.interactive:
        generate(model, tok, args.prompt, args, device)
        return
    print(f"{Path(args.checkpoint)}: type a prompt and press Enter (an empty line or Ctrl-D ends).", file=sys.stderr)
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            break
        if not prompt:
            break
        try:
            generate(model, tok, prompt, args, device)
        except UserError as e:  # one bad prompt does not end the session
            print(f"error: {e}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
