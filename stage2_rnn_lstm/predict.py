"""Classify sentences with a trained Stage 2 SST-2 classifier (classify.py) and show the class probabilities.

    python stage2_rnn_lstm/predict.py "a gorgeous , witty , seductive movie ." "It's dull."
    echo "what a waste of a great cast" | python stage2_rnn_lstm/predict.py --checkpoint runs/.../best.pt
    python stage2_rnn_lstm/predict.py --json < sentences.txt     # one sentence per line, one JSON object per line out

For other scripts, `load_predictor(checkpoint)` turns the checkpoint into a plain function, sentences -> (N, 2)
probabilities: the capstone (scripts/compare_classifiers.py) scores and times every stage's classifier that way.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage2_rnn_lstm/predict.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, load_checkpoint, run_cli
from stage2_rnn_lstm.data import SentenceVocab, make_batch, vocab_beside
from stage2_rnn_lstm.model import ClassifierConfig, RNNClassifier
from stage2_rnn_lstm.reference_runs import CLASSIFIER_CHECKPOINT

STAGE = "stage2_rnn_lstm"
LABELS = ("negative", "positive")  # SST-2's classes: column 0 and column 1 of the probabilities


@torch.no_grad()
def predict_proba(model: RNNClassifier, seqs: list[list[int]], device, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N, n_classes) in the order of `seqs`, computed in batches of similar length."""
    was_training = model.training
    model.eval()
    probs = torch.empty(len(seqs), model.config.n_classes)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, lengths = make_batch([seqs[i] for i in idx], model.config.pad_id)  # (B, T), (B,)
        probs[idx] = model(ids.to(device), lengths.to(device)).softmax(-1).float().cpu()
    model.train(was_training)
    return probs


def load_classifier(checkpoint: str | Path, device: torch.device) -> tuple[RNNClassifier, SentenceVocab, dict]:
    """Model (in eval mode), vocabulary and checkpoint; the vocabulary is the vocab.json beside the checkpoint."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="classifier")
    vocab = vocab_beside(checkpoint, ckpt, SentenceVocab)
    try:
        model = RNNClassifier(ClassifierConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, ckpt


def load_predictor(checkpoint: str | Path = CLASSIFIER_CHECKPOINT, device: str | torch.device = "cpu"):
    """A function: list of sentences -> class probabilities (N, 2), column 0 negative, column 1 positive.

    The sentences are tokenised and encoded with the run's own vocabulary, and read by the same model code that
    training used.
    """
    device = get_device(device) if isinstance(device, str) else torch.device(device)
    model, vocab, _ = load_classifier(checkpoint, device)

    def predict(sentences: list[str]) -> torch.Tensor:
        return predict_proba(model, [vocab.encode(s) for s in sentences], device)  # (N, 2)
    return predict


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Classify sentences given as arguments, or one per line on stdin.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("texts", nargs="*", help="sentences to classify (none: read lines from stdin)")
    p.add_argument("--checkpoint", default=CLASSIFIER_CHECKPOINT, help="a best.pt or last.pt from classify.py")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true", help="print one JSON object per sentence instead of a table")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    texts = [t for t in (args.texts or [line.rstrip("\n") for line in sys.stdin]) if t.strip()]
    if not texts:
        raise UserError("no sentence to classify: pass sentences as arguments or one per line on stdin")
    probs = load_predictor(args.checkpoint, args.device)(texts)  # (N, 2)
    for text, p in zip(texts, probs.tolist()):
        label = LABELS[max(range(len(p)), key=p.__getitem__)]
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": dict(zip(LABELS, p))}))
        else:
            print(f"{label:8s} {max(p):.3f}  {text}")


if __name__ == "__main__":
    run_cli(main)
