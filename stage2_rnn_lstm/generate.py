"""Sample text from a Stage 2 checkpoint, one token at a time, printed as it comes.

    python stage2_rnn_lstm/generate.py --prompt "ROMEO:" --max-new-tokens 500
    python stage2_rnn_lstm/generate.py --temperature 0.5 --top-k 10 --seed 1
    python stage2_rnn_lstm/generate.py --interactive          # a prompt loop; an empty line or Ctrl-D ends it

The prompt is read through the network once to build up the hidden state; after that each new token costs
one step of the recurrence, whatever the length of the text so far.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage2_rnn_lstm/generate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, positive_float, positive_int, run_cli
from stage2_rnn_lstm.data import EOS, UNK, Vocab
from stage2_rnn_lstm.evaluate import load_model
from stage2_rnn_lstm.model import RNNLanguageModel
from stage2_rnn_lstm.reference_runs import LM_CHECKPOINT


@torch.no_grad()
def sample(model: RNNLanguageModel, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None):
    """Yield `max_new_tokens` new token ids, each drawn from the model's distribution given everything before it.

    temperature < 1 sharpens the distribution (safer, more repetitive text), > 1 flattens it (more surprising,
    more mistakes); top_k keeps only the k most likely tokens before drawing.
    """
    model.eval()
    device = next(model.parameters()).device
    out, _, state = model(torch.tensor([prompt_ids], device=device))  # (1, T, V): read the whole prompt once
    scores = out[0, -1]                                                # (V,) logits (or log-probabilities)
    for _ in range(max_new_tokens):
        scores = scores / temperature
        if top_k is not None and top_k < scores.numel():
            kth = torch.topk(scores, top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).item()
        yield token
        out, _, state = model(torch.tensor([[token]], device=device), state)  # one step of the recurrence
        scores = out[0, -1]


def prompt_to_ids(vocab: Vocab, prompt: str) -> list[int]:
    """Encode a prompt: unknown characters are an error; unknown words are read as <unk>, with a note."""
    if prompt == "":
        raise UserError("the prompt is empty: give some text to continue (or leave out --prompt)")
    unknown = vocab.unknown(prompt)
    if unknown and vocab.vocab_type == "word" and UNK in vocab.stoi:
        print(f"note: not in the vocabulary, read as {UNK}: {', '.join(unknown[:10])}", file=sys.stderr)
    elif unknown:
        shown = ", ".join(repr(t) for t in unknown[:10])
        raise UserError(f"the prompt has {len(unknown)} {vocab.vocab_type}(s) this model never saw: {shown}")
    ids = vocab.encode(prompt)
    if vocab.vocab_type == "word" and not prompt.endswith("\n"):
        ids = ids[:-1]  # tokenize closes every line with <eos>; a prompt in mid-line should not end its line
    if not ids:
        raise UserError(f"the prompt {prompt!r} holds no {vocab.vocab_type}s to continue from")
    return ids


def token_text(vocab: Vocab, token: int) -> str:
    if vocab.vocab_type == "char":
        return vocab.itos[token]
    return "\n" if vocab.itos[token] == EOS else " " + vocab.itos[token]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generate text with a Stage 2 language model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=LM_CHECKPOINT, help="a best.pt or last.pt from train.py")
    p.add_argument("--prompt", default=None, help="text to continue (default: a new line)")
    p.add_argument("--max-new-tokens", type=positive_int, default=500)
    p.add_argument("--temperature", type=positive_float, default=0.8)
    p.add_argument("--top-k", type=positive_int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--seed", type=int, default=None, help="fix the random draws: the same seed gives the same text")
    p.add_argument("--interactive", action="store_true", help="read prompts from the keyboard until an empty line")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, vocab, _ = load_model(args.checkpoint, device)
    generator = torch.Generator(device=device)
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()

    def continue_text(prompt: str) -> None:
        ids = prompt_to_ids(vocab, prompt)
        print(prompt, end="", flush=True)
        for token in sample(model, ids, args.max_new_tokens, args.temperature, args.top_k, generator):
            print(token_text(vocab, token), end="", flush=True)
        print()

    if not args.interactive:
        continue_text("\n" if args.prompt is None else args.prompt)
        return
    print("type a prompt and press Enter; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            prompt = input("prompt> ")
        except EOFError:
            break
        if not prompt:
            break
        try:
            continue_text(prompt)
        except UserError as e:  # a bad prompt should not end the session
            print(f"error: {e}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
