"""Talk to an instructed GPT in the terminal: the conversation so far goes through the chat template every turn.

    python stage5_gpt/chat.py                                      # the SFT reference run's best.pt (SFT_CHECKPOINT)
    python stage5_gpt/chat.py --temperature 0 --max-new-tokens 80  # greedy answers
    python stage5_gpt/chat.py --message "Translate this English sentence into French:
    A dog runs on the beach."                                      # one question, one answer, then exit

The model has no memory: each turn, the whole conversation (your messages and its answers) is rendered again with
chat_template.render and read from the start, and the answer streams out token by token until the model writes
<|end|>. The context is finite (the model's block_size tokens), so when the conversation no longer fits, its oldest
exchanges are dropped (chat_template.prompt_ids) - the model forgets the beginning of a long chat. Type /reset to
start over; an empty line or Ctrl-D ends. The sampling flags are generate.py's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/chat.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, run_cli
from stage5_gpt.chat_template import SPECIAL_TOKENS, prompt_ids
from stage5_gpt.evaluate_chat import load_chat_model
from stage5_gpt.generate import add_sampling_args
from stage5_gpt.reference_runs import SFT_CHECKPOINT


def stream_reply(model, tok, ids: list[int], max_new_tokens: int, temperature: float = 0.7, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float = 1.0, seed: int = 1337):
    """Sample the assistant's reply after the prompt `ids` (it ends with <|assistant|>); after each token yield the
    reply's text so far (whole characters only, as generate.stream_text). Stops at <|end|>, or at any other template
    token, which is never shown. The last text yielded is the whole reply."""
    device = model.wte.weight.device
    stops = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
    gen = torch.Generator(device=device).manual_seed(seed)
    new, text = [], ""
    for next_id in model.generate_stream(torch.tensor([ids], device=device), max_new_tokens, temperature=temperature,
                                         top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                         generator=gen):
        if int(next_id[0]) in stops:
            break
        new.append(int(next_id[0]))
        decoded = tok.decode(new)
        if not decoded.endswith("\ufffd"):  # a character split over tokens shows once its last byte is there
            text = decoded
            yield text
    final = tok.decode(new)
    if final != text:
        yield final


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Chat with an instructed GPT in the terminal (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=SFT_CHECKPOINT, help="an instructed GPT (sft.py's best.pt)")
    p.add_argument("--message", default=None, help="ask this one question, print the answer and exit")
    add_sampling_args(p, max_new_tokens=128, temperature=0.7)
    p.add_argument("--no-stream", action="store_true", help="print each reply once it is complete")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return p.parse_args(argv)


def reply(model, tok, history: list[dict], args, out=None) -> str:
    """Answer the last user message of `history`, writing the reply to `out` as it comes; returns the reply."""
    out = out or sys.stdout
    ids = prompt_ids(tok, history, model.cfg.block_size, args.max_new_tokens)  # raises before anything is printed
    text, shown = "", ""
    for text in stream_reply(model, tok, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                             args.repetition_penalty, args.seed):
        if not args.no_stream:
            out.write(text[len(shown):])
            out.flush()
            shown = text
    if args.no_stream:
        out.write(text)
    out.write("\n")
    return text


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, tok, _ = load_chat_model(args.checkpoint, device)
    if args.message is not None:
        reply(model, tok, [{"role": "user", "content": args.message}], args)
        return
    print(f"{Path(args.checkpoint)}: chat away (/reset starts over; an empty line or Ctrl-D ends).", file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            message = input("you> ")
        except EOFError:
            break
        if not message:
            break
        if message.strip() == "/reset":
            history = []
            continue
        print("gpt> ", end="", flush=True)
        try:
            answer = reply(model, tok, history + [{"role": "user", "content": message}], args)
        except UserError as e:  # a message too long for the context: say so and keep chatting
            print(f"\nerror: {e}", file=sys.stderr)
            continue
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer or "..."}]


if __name__ == "__main__":
    run_cli(main)
