"""sacreBLEU of a Stage 4 checkpoint on test2016 and test2017, and per-layer, per-head attention maps.

    python stage4_transformer/evaluate.py                                      # runs/stage4_transformer/multi30k_en_fr/best.pt
    python stage4_transformer/evaluate.py --beam-size 1 --maps 0,7             # greedy; maps for two test sentences
    python stage4_transformer/evaluate.py --maps 3 --map-kind encoder          # encoder self-attention instead

A map figure has one row per layer and one column per head. Cross-attention (the default) shows, for every word of
the translation, where each head looked in the source; encoder and decoder self-attention show how the words of one
sentence look at each other (the decoder's is lower-triangular: the causal mask).

The sentence classifier's figures are here too: `class_probabilities` (a batch of sentences -> softmax) and
`classification_metrics` (accuracy and macro-F1), which classify.py and predict.py use.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage4_transformer/evaluate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, load_checkpoint, positive_int, resolve_data_dir, run_cli
from stage4_transformer.data import BOS_ID, SPLITS, Vocab, load_pairs, pad, sentence_batches, vocab_beside
from stage4_transformer.decoding import bleu, translate
from stage4_transformer.model import Transformer, TransformerClassifier, TransformerConfig
from stage4_transformer.reference_runs import TRANSLATOR_CHECKPOINT

STAGE = "stage4_transformer"
MAP_KINDS = ("cross", "encoder", "decoder")


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[Transformer, Vocab, dict]:
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="translator")
    vocab = vocab_beside(checkpoint, ckpt)
    try:
        model = Transformer(TransformerConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, ckpt


@torch.no_grad()
def attention_maps(model: Transformer, vocab: Vocab, source: str, translation_ids: list[int], kind: str, device):
    """Every layer's and head's weights (L, h, rows, cols) for one sentence and its translation, with row and
    column labels: the translation is fed back with teacher forcing, which reproduces decoding's weights."""
    model.eval()  # no dropout in the maps
    src_ids = vocab.encode(source)
    src = torch.tensor([src_ids], device=device)
    tgt_in = torch.tensor([[BOS_ID] + translation_ids[:-1]], device=device)
    memory, src_mask, enc_ws = model.encode(src)
    _, self_ws, cross_ws = model.decode(tgt_in, memory, src_mask)
    src_tokens, tgt_tokens = [vocab.itos[i] for i in src_ids], [vocab.itos[i] for i in translation_ids]
    if kind == "encoder":
        return torch.stack(enc_ws)[:, 0].cpu(), src_tokens, src_tokens
    if kind == "decoder":
        return torch.stack(self_ws)[:, 0].cpu(), tgt_tokens, ["<bos>"] + tgt_tokens[:-1]
    return torch.stack(cross_ws)[:, 0].cpu(), tgt_tokens, src_tokens


@torch.no_grad()
def class_probabilities(model: TransformerClassifier, seqs: list[list[int]], device,
                        batch_size: int = 256) -> torch.Tensor:
    """The classifier's (N, n_classes) softmax probabilities on the CPU, in the order of `seqs` (encode_sentences)."""
    was_training = model.training
    model.eval()
    probs = torch.zeros(len(seqs), model.cfg.n_classes)
    for idx in sentence_batches(seqs, batch_size, seed=0, shuffle=False):
        logits = model(pad([seqs[i] for i in idx]).to(device))     # (B, n_classes)
        probs[idx] = logits.float().softmax(-1).cpu()
    model.train(was_training)
    return probs


def classification_metrics(preds: list[int], labels: list[int]) -> dict:
    """Accuracy, and macro-F1: the mean over the two classes of F1, so that a model that favours one class shows it."""
    f1s = []
    for c in (0, 1):
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        fp = sum(p == c and y != c for p, y in zip(preds, labels))
        fn = sum(p != c and y == c for p, y in zip(preds, labels))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    accuracy = sum(p == y for p, y in zip(preds, labels)) / max(len(labels), 1)
    return {"accuracy": round(accuracy, 4), "macro_f1": round(sum(f1s) / 2, 4)}


def score_classifier(model: TransformerClassifier, seqs: list[list[int]], labels: list[int], device) -> dict:
    """classification_metrics of the classifier's most probable class for each sentence."""
    return classification_metrics(class_probabilities(model, seqs, device).argmax(-1).tolist(), labels)


def plot_maps(path: str | Path, weights: torch.Tensor, rows: list[str], cols: list[str], title: str = "") -> None:
    """A grid of heat-maps: layers down, heads across. Drawn on a bare Figure: no display or pyplot state needed."""
    from matplotlib.figure import Figure

    L, H = weights.shape[:2]
    clean = [t.replace("\u2581", "") for t in cols], [t.replace("\u2581", "") for t in rows]
    fig = Figure(figsize=(2.2 * H + 1, 2.2 * L + 1))
    for i in range(L):
        for j in range(H):
            ax = fig.add_subplot(L, H, i * H + j + 1)
            ax.imshow(weights[i, j].numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks(range(len(cols)), clean[0] if i == L - 1 else [], rotation=90, fontsize=6)
            ax.set_yticks(range(len(rows)), clean[1] if j == 0 else [], fontsize=6)
            ax.set_title(f"layer {i + 1}, head {j + 1}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sacreBLEU on the test sets for a Stage 4 checkpoint; attention maps.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=TRANSLATOR_CHECKPOINT)
    p.add_argument("--data-dir", default=None, help="data folder (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--split", default="test", help="test (= test2016 and test2017), or one of: " + ", ".join(SPLITS))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--beam-size", type=positive_int, default=None, help="1 = greedy (default: the training run's)")
    p.add_argument("--length-penalty", type=float, default=None, help="alpha (default: the training run's)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sentences decoded together")
    p.add_argument("--maps", default="", help="comma-separated sentence numbers (0-based) of the first split")
    p.add_argument("--map-kind", choices=MAP_KINDS, default="cross", help="which attention to draw")
    p.add_argument("--maps-dir", default=None, help="where the PNGs go (default: <checkpoint dir>/attention)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, vocab, ckpt = load_model(args.checkpoint, device)
    run = ckpt["args"]
    splits = ["test2016", "test2017"] if args.split == "test" else [args.split]
    if any(s not in SPLITS for s in splits):
        raise UserError(f"Multi30k has no {args.split!r} split; choose from: test, {', '.join(SPLITS)}")
    try:
        maps = [int(i) for i in args.maps.split(",") if i.strip()]
    except ValueError:
        raise UserError(f"--maps takes sentence numbers like 0,7,42, got {args.maps!r}") from None
    beam = args.beam_size or run["beam_size"]
    alpha = run["length_penalty"] if args.length_penalty is None else args.length_penalty
    data_dir = resolve_data_dir(args.data_dir)
    results = {}
    for n, split in enumerate(splits):
        pairs = load_pairs(data_dir, split, run["src"], run["tgt"])
        if n == 0 and any(not 0 <= i < len(pairs) for i in maps):
            raise UserError(f"--maps: {split} has sentences 0 to {len(pairs) - 1}, got {args.maps}")
        out = translate(model, vocab, [s for s, _ in pairs], device, beam, alpha, args.batch_size)
        hyps, refs = [o["text"] for o in out], [t for _, t in pairs]
        cased, sig = bleu(hyps, refs)
        lower, sig_lc = bleu(hyps, refs, lowercase=True)
        results[split] = {"bleu": cased, "bleu_lc": lower, "sentences": len(pairs), "signature": sig,
                          "signature_lc": sig_lc}
        for i in maps if n == 0 else []:
            o = translate(model, vocab, [pairs[i][0]], device, beam, alpha, with_attention=True)[0]
            hyp_ids = [vocab.stoi[t] for t in o["tgt_tokens"]]  # the generated ids, <eos> included
            weights, rows, cols = attention_maps(model, vocab, pairs[i][0], hyp_ids, args.map_kind, device)
            path = Path(args.maps_dir or Path(args.checkpoint).parent / "attention") / f"{split}_{i}_{args.map_kind}.png"
            plot_maps(path, weights, rows, cols, title=f"{args.map_kind} attention: {pairs[i][0]}\n-> {hyps[i]}")
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "src": run["src"], "tgt": run["tgt"], "beam_size": beam,
                          "length_penalty": alpha, **results}))
        return
    print(f"{args.checkpoint}: multi30k {run['src']} -> {run['tgt']}, "
          f"{'greedy' if beam == 1 else f'beam {beam}, length penalty {alpha}'}")
    print(f"{'split':<10} {'BLEU':>6} {'BLEU lc':>8}")
    for split, r in results.items():
        print(f"{split:<10} {r['bleu']:>6.2f} {r['bleu_lc']:>8.2f}")
    print(f"signature: {results[splits[0]]['signature']}")


if __name__ == "__main__":
    run_cli(main)
