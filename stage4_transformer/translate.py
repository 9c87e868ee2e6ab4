"""Translate sentences with a trained Stage 4 checkpoint: from arguments, from stdin, or in a prompt loop.

    python stage4_transformer/translate.py "A man is riding a bike." "Two dogs play in the snow."
    echo "A girl in a red dress." | python stage4_transformer/translate.py
    python stage4_transformer/translate.py --interactive
    python stage4_transformer/translate.py "A dog runs on the beach." --attention-map dog.png

--attention-map saves every layer's and head's cross-attention for the sentence (see evaluate.py for the reading).
Words the vocabulary does not know are translated as <unk>; a note on stderr names them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage4_transformer/translate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import UserError, get_device, positive_int, run_cli
from stage4_transformer.data import normalize, tokenize
from stage4_transformer.decoding import translate
from stage4_transformer.evaluate import attention_maps, load_model, plot_maps
from stage4_transformer.reference_runs import TRANSLATOR_CHECKPOINT

MAX_CHARS = 1000  # the model was trained on captions of a few dozen words
MAX_TOKENS = 200  # and its positional table stops at 256


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Translate sentences with a Stage 4 checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("sentences", nargs="*", help="sentences to translate (default: one per line from stdin)")
    p.add_argument("--checkpoint", default=TRANSLATOR_CHECKPOINT)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--beam-size", type=positive_int, default=5, help="1 = greedy search")
    p.add_argument("--length-penalty", type=float, default=0.6, help="alpha in ((5 + length) / 6) ** alpha")
    p.add_argument("--interactive", action="store_true", help="a prompt loop; an empty line or Ctrl-D ends it")
    p.add_argument("--attention-map", default=None,
                   help="save the cross-attention maps as this PNG (several sentences: name_1.png, name_2.png, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object per sentence")
    return p.parse_args(argv)


def check_sentence(text: str) -> str:
    text = normalize(text)
    if not text:
        raise UserError("empty sentence: give some text to translate")
    if len(text) > MAX_CHARS:
        raise UserError(f"sentence of {len(text)} characters; the limit is {MAX_CHARS} (translate one sentence at a time)")
    if len(tokenize(text)) > MAX_TOKENS:
        raise UserError(f"sentence of {len(tokenize(text))} tokens; the limit is {MAX_TOKENS} (translate one sentence at a time)")
    return text


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, vocab, ckpt = load_model(args.checkpoint, device)
    run = ckpt["args"]

    def answer(sentences: list[str]) -> None:
        sentences = [check_sentence(s) for s in sentences]
        for s in sentences:
            unknown = vocab.unknown(s)
            if unknown:
                print(f"note: not in the vocabulary, read as <unk>: {', '.join(unknown)}", file=sys.stderr)
        out = translate(model, vocab, sentences, device, args.beam_size, args.length_penalty,
                        with_attention=bool(args.attention_map))
        for i, (s, o) in enumerate(zip(sentences, out), 1):
            if args.attention_map:
                path = Path(args.attention_map)
                if len(sentences) > 1:
                    path = path.with_name(f"{path.stem}_{i}{path.suffix or '.png'}")
                ids = [vocab.stoi[t] for t in o["tgt_tokens"]]
                weights, rows, cols = attention_maps(model, vocab, s, ids, "cross", device)
                plot_maps(path, weights, rows, cols, title=f"cross attention: {s}\n-> {o['text']}")
                print(f"wrote {path}", file=sys.stderr)
            print(json.dumps({"source": s, "translation": o["text"]}, ensure_ascii=False) if args.json else o["text"],
                  flush=True)

    if args.interactive:
        print(f"{run['src']} -> {run['tgt']}; an empty line or Ctrl-D ends.", file=sys.stderr)
        while True:
            try:
                line = input(f"{run['src']}> ")
            except EOFError:
                break
            if not line.strip():
                break
            try:
                answer([line])
            except UserError as e:  # a bad line should not end the session
                print(f"error: {e}", file=sys.stderr)
        return
    sentences = args.sentences
    if not sentences:
        if sys.stdin.isatty():
            raise UserError("give sentences as arguments, pipe them on stdin, or use --interactive")
        sentences = [line for line in sys.stdin.read().splitlines() if line.strip()]
        if not sentences:
            raise UserError("stdin had no sentences")
    answer(sentences)


if __name__ == "__main__":
    run_cli(main)
