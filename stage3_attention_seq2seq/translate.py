"""Translate sentences with a trained Stage 3 checkpoint: from arguments, from stdin, or in a prompt loop.

    python stage3_attention_seq2seq/translate.py "A man is riding a bike." "Two dogs play in the snow."
    echo "A girl in a red dress." | python stage3_attention_seq2seq/translate.py
    python stage3_attention_seq2seq/translate.py --interactive
    python stage3_attention_seq2seq/translate.py "A dog runs on the beach." --attention-map dog.png

Words the source vocabulary does not know are translated as <unk>; a note on stderr names them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage3_attention_seq2seq/translate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import UserError, get_device, positive_int, run_cli
from stage3_attention_seq2seq.data import normalize
from stage3_attention_seq2seq.decoding import translate
from stage3_attention_seq2seq.evaluate import load_model, plot_attention
from stage3_attention_seq2seq.reference_runs import TRANSLATOR_CHECKPOINT

MAX_CHARS = 1000  # one sentence at a time: the model was trained on captions of a few dozen words


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Translate sentences with a Stage 3 checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("sentences", nargs="*", help="sentences to translate (default: one per line from stdin)")
    p.add_argument("--checkpoint", default=TRANSLATOR_CHECKPOINT)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--beam-size", type=positive_int, default=5, help="1 = greedy search")
    p.add_argument("--length-penalty", type=float, default=0.6, help="alpha in ((5 + length) / 6) ** alpha")
    p.add_argument("--interactive", action="store_true", help="a prompt loop; an empty line or Ctrl-D ends it")
    p.add_argument("--attention-map", default=None,
                   help="save the attention heat-map as this PNG (several sentences: name_1.png, name_2.png, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object per sentence")
    return p.parse_args(argv)


def check_sentence(text: str) -> str:
    text = normalize(text)
    if not text:
        raise UserError("empty sentence: give some text to translate")
    if len(text) > MAX_CHARS:
        raise UserError(f"sentence of {len(text)} characters; the limit is {MAX_CHARS} (translate one sentence at a time)")
    return text


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, src_vocab, tgt_vocab, ckpt = load_model(args.checkpoint, device)
    if args.attention_map and model.cfg.attention == "none":
        raise UserError("this model has no attention (attention=none): there is no map to save")
    run = ckpt["args"]

    def answer(sentences: list[str]) -> None:
        sentences = [check_sentence(s) for s in sentences]
        for s in sentences:
            unknown = src_vocab.unknown(s)
            if unknown:
                print(f"note: not in the {run['src']} vocabulary, read as <unk>: {', '.join(unknown)}", file=sys.stderr)
        out = translate(model, src_vocab, tgt_vocab, sentences, device, args.beam_size, args.length_penalty,
                        with_attention=bool(args.attention_map))
        for i, (s, o) in enumerate(zip(sentences, out), 1):
            if args.attention_map:
                path = Path(args.attention_map)
                if len(sentences) > 1:
                    path = path.with_name(f"{path.stem}_{i}{path.suffix or '.png'}")
                plot_attention(path, o["src_tokens"], o["tgt_tokens"], o["attn"], title=f"{s}\n-> {o['text']}")
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
