"""sacreBLEU of a Stage 3 checkpoint on the test sets, and attention heat-maps for chosen sentences.

    python stage3_attention_seq2seq/evaluate.py                                    # runs/.../multi30k_en_fr/best.pt
    python stage3_attention_seq2seq/evaluate.py --checkpoint runs/stage3_attention_seq2seq/multi30k_de_en/best.pt
    python stage3_attention_seq2seq/evaluate.py --beam-size 1 --maps 0,7,42        # greedy; three attention maps

BLEU is computed by sacreBLEU on our detokenised output against the raw reference files, cased (the WMT
convention) and lowercased (for comparison with papers that lowercase). The signature printed with the score
says exactly how it was computed; a score without its signature cannot be compared with another.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage3_attention_seq2seq/evaluate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, load_checkpoint, positive_int, resolve_data_dir, run_cli
from stage3_attention_seq2seq.data import Vocab, dataset_info, load_pairs
from stage3_attention_seq2seq.decoding import bleu, translate
from stage3_attention_seq2seq.model import Seq2Seq, Seq2SeqConfig
from stage3_attention_seq2seq.reference_runs import TRANSLATOR_CHECKPOINT

STAGE = "stage3_attention_seq2seq"


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[Seq2Seq, Vocab, Vocab, dict]:
    """Model, source and target vocabularies (the JSON files beside the checkpoint) and the checkpoint."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="translator")
    vocabs = [Vocab.load(Path(checkpoint).parent / f) for f in ckpt["vocab"]["files"]]
    if [v.fingerprint() for v in vocabs] != ckpt["vocab"]["fingerprints"]:
        raise UserError(f"the vocabularies beside {checkpoint} are not the ones it was trained with (fingerprints differ)")
    try:
        model = Seq2Seq(Seq2SeqConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocabs[0], vocabs[1], ckpt


def plot_attention(path: str | Path, src_tokens: list[str], tgt_tokens: list[str], attn: torch.Tensor,
                   title: str = "") -> None:
    """Save `attention_figure` as a PNG."""
    fig = attention_figure(src_tokens, tgt_tokens, attn, title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def attention_figure(src_tokens: list[str], tgt_tokens: list[str], attn: torch.Tensor, title: str = ""):
    """A heat-map: one row per generated word, one column per source word; row i shows where the decoder looked.
    attn is (len(tgt_tokens), len(src_tokens)), each row summing to 1. scripts/demo.py shows it in a web page.

    Drawn on a bare Figure (no pyplot), so it neither needs a display nor changes a notebook's plotting backend."""
    from matplotlib.figure import Figure

    def label(t: str) -> str:
        return t.replace("\u2581", "")
    fig = Figure(figsize=(0.45 * len(src_tokens) + 2, 0.4 * len(tgt_tokens) + 1.5))
    ax = fig.add_subplot()
    ax.imshow(attn.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_tokens)), [label(t) for t in src_tokens], rotation=60, ha="right")
    ax.set_yticks(range(len(tgt_tokens)), [label(t) for t in tgt_tokens])
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sacreBLEU on the test sets for a Stage 3 checkpoint; attention maps.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=TRANSLATOR_CHECKPOINT, help="a best.pt or last.pt from train.py")
    p.add_argument("--data-dir", default=None, help="data folder (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--split", default="test", help="a split name (test2016, test2017, val, ...) or test = every test set")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--beam-size", type=positive_int, default=None, help="1 = greedy (default: the training run's)")
    p.add_argument("--length-penalty", type=float, default=None, help="alpha (default: the training run's)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sentences decoded together")
    p.add_argument("--maps", default="", help="comma-separated sentence numbers (0-based) of the first split "
                                             "to draw attention maps for")
    p.add_argument("--maps-dir", default=None, help="where the map PNGs go (default: <checkpoint dir>/attention)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, src_vocab, tgt_vocab, ckpt = load_model(args.checkpoint, device)
    run = ckpt["args"]
    info = dataset_info(run["dataset"])
    splits = info["test_splits"] if args.split == "test" else [args.split]
    if any(s not in info["splits"] for s in splits):
        raise UserError(f"{run['dataset']} has no {args.split!r} split; choose from: test, {', '.join(info['splits'])}")
    try:
        maps = [int(i) for i in args.maps.split(",") if i.strip()]
    except ValueError:
        raise UserError(f"--maps takes sentence numbers like 0,7,42, got {args.maps!r}") from None
    if maps and model.cfg.attention == "none":
        raise UserError("this model has no attention (attention=none): there are no maps to draw")
    beam = args.beam_size or run["beam_size"]
    alpha = run["length_penalty"] if args.length_penalty is None else args.length_penalty
    data_dir = resolve_data_dir(args.data_dir)
    results = {}
    for n, split in enumerate(splits):
        pairs = load_pairs(run["dataset"], data_dir, split, run["src"], run["tgt"])
        if any(not 0 <= i < len(pairs) for i in maps):
            raise UserError(f"--maps: {split} has sentences 0 to {len(pairs) - 1}, got {args.maps}")
        out = translate(model, src_vocab, tgt_vocab, [s for s, _ in pairs], device, beam, alpha, args.batch_size,
                        with_attention=n == 0 and bool(maps))
        hyps, refs = [o["text"] for o in out], [t for _, t in pairs]
        cased, sig = bleu(hyps, refs)
        lower, sig_lc = bleu(hyps, refs, lowercase=True)
        results[split] = {"bleu": cased, "bleu_lc": lower, "sentences": len(pairs), "signature": sig,
                          "signature_lc": sig_lc}
        if n == 0 and maps:
            folder = Path(args.maps_dir or Path(args.checkpoint).parent / "attention")
            for i in maps:
                o = out[i]
                path = folder / f"{split}_{i}.png"
                plot_attention(path, o["src_tokens"], o["tgt_tokens"], o["attn"],
                               title=f"{pairs[i][0]}\n-> {o['text']}")
                print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": run["dataset"], "src": run["src"],
                          "tgt": run["tgt"], "beam_size": beam, "length_penalty": alpha, **results}))
        return
    print(f"{args.checkpoint}: {run['dataset']} {run['src']} -> {run['tgt']}, "
          f"{'greedy' if beam == 1 else f'beam {beam}, length penalty {alpha}'}")
    print(f"{'split':<10} {'BLEU':>6} {'BLEU lc':>8}")
    for split, r in results.items():
        print(f"{split:<10} {r['bleu']:>6.2f} {r['bleu_lc']:>8.2f}")
    print(f"signature: {results[splits[0]]['signature']}")


if __name__ == "__main__":
    run_cli(main)
