"""Classify texts with a trained Stage 1 model and show the class probabilities.

    python stage1_mlp/predict.py "A gripping, beautifully acted film." "Two hours I will never get back."
    echo "what a waste of a great cast" | python stage1_mlp/predict.py --checkpoint runs/stage1_mlp/sst2/best.pt
    python stage1_mlp/predict.py --json < reviews.txt     # one text per line, one JSON object per line out
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage1_mlp/predict.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, run_cli
from stage1_mlp.data import Bags, dataset_info
from stage1_mlp.evaluate import load_model, predict_bags
from stage1_mlp.reference_runs import CLASSIFIER_CHECKPOINT


def classify(model, vocab, texts: list[str], device) -> tuple[torch.Tensor, list[int]]:
    """Class probabilities (N, n_classes) and, for each text, how many of its n-grams the vocabulary knows: with 0 (only
    <unk>, id 0) the model has nothing to go on and its answer is a guess. predict.py and scripts/demo.py show both."""
    bags = Bags.from_texts(texts, [0] * len(texts), vocab)
    probs = predict_bags(model, bags, 256, device)                                      # (N, n_classes)
    known = [int((bags.ids[start:end] != 0).sum()) for start, end in zip(bags.starts[:-1], bags.starts[1:])]
    return probs, known


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """A trained model as a plain function: texts -> class probabilities (N, n_classes). The course's capstone
    (scripts/compare_classifiers.py) times every stage's classifier through a function like this one."""
    device = torch.device(device)
    model, vocab, _ = load_model(checkpoint, device)

    def predict(texts: list[str]) -> torch.Tensor:
        return classify(model, vocab, texts, device)[0]  # (N, n_classes)
    return predict


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Classify texts given as arguments, or one per line on stdin.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts to classify (none: read lines from stdin)")
    p.add_argument("--checkpoint", default=CLASSIFIER_CHECKPOINT, help="a best.pt or last.pt from train.py")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true", help="print one JSON object per text instead of a table")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    texts = args.texts if args.texts else [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError("no text to classify: pass texts as arguments or one per line on stdin")
    device = get_device(args.device)
    model, vocab, ckpt = load_model(args.checkpoint, device)
    classes = dataset_info(ckpt["dataset"])["classes"]
    probs, known_counts = classify(model, vocab, texts, device)  # (N, n_classes), n-grams the vocabulary knew
    for text, p, known in zip(texts, probs, known_counts):
        best = int(p.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": classes[best],
                              "probs": {c: round(float(x), 4) for c, x in zip(classes, p)},
                              "known_ngrams": known}, ensure_ascii=False))
        else:
            shown = text if len(text) <= 60 else text[:57] + "..."
            probs_str = "  ".join(f"{c} {float(x):.3f}" for c, x in zip(classes, p))
            note = "" if known else "  (no known n-grams: this is a guess)"
            print(f"{classes[best]:>9s}  [{probs_str}]  {shown}{note}")


if __name__ == "__main__":
    run_cli(main)
