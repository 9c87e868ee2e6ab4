"""Evaluate a Stage 1 checkpoint: accuracy, macro-F1 and a confusion-matrix picture on a labelled split.

    python stage1_mlp/evaluate.py                                  # runs/stage1_mlp/imdb/best.pt on IMDb test
    python stage1_mlp/evaluate.py --checkpoint runs/stage1_mlp/sst2/best.pt

train.py imports `predict_bags` and `classification_metrics` from here, so the numbers in a result
file and the numbers this script prints are computed by the same code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage1_mlp/evaluate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F

from scripts.common import (UserError, get_device, load_checkpoint, positive_int, resolve_data_dir, run_cli)
from stage1_mlp.data import Bags, Vocab, dataset_info, load_split
from stage1_mlp.model import BagOfNgramsMLP, MLPConfig
from stage1_mlp.reference_runs import CLASSIFIER_CHECKPOINT

STAGE = "stage1_mlp"


@torch.no_grad()
def predict_bags(model: BagOfNgramsMLP, bags: Bags, batch_size: int, device: torch.device) -> torch.Tensor:
    """Class probabilities for every text in `bags`, in order: (N, n_classes)."""
    model.eval()
    probs = []
    for index in torch.arange(len(bags)).split(batch_size):
        ids, offsets, _ = bags.batch(index)
        logits = model(ids.to(device), offsets.to(device))  # (B, n_classes)
        probs.append(F.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(probs) if probs else torch.empty(0, model.config.n_classes)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, macro-F1 (the mean of per-class F1, so a small class counts as much as a big one),
    mean cross-entropy, and the confusion matrix (rows = true class, columns = predicted)."""
    n_classes = probs.shape[1]
    preds = probs.argmax(dim=1)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).double().clamp(min=1)  # of the texts predicted as c, how many are c
    recall = tp / confusion.sum(1).double().clamp(min=1)     # of the texts that are c, how many were found
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    loss = F.nll_loss(probs.clamp(min=1e-12).log(), labels).item()
    return {
        "accuracy": round((preds == labels).double().mean().item(), 4),
        "macro_f1": round(f1.mean().item(), 4),
        "loss": round(loss, 4),
        "n": int(len(labels)),
        "confusion": confusion.tolist(),
    }


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> None:
    from matplotlib.figure import Figure  # a bare Figure needs no display and leaves notebook plotting alone

    cm = torch.tensor(confusion, dtype=torch.float)
    shares = cm / cm.sum(1, keepdim=True).clamp(min=1)  # each row as a share of its true class
    fig = Figure(figsize=(1.4 * len(classes) + 2.2, 1.2 * len(classes) + 1.6))
    ax = fig.subplots()
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}\n{shares[i, j]:.1%}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[BagOfNgramsMLP, Vocab, dict]:
    """Model, vocabulary and checkpoint from a path; the vocabulary is the vocab.json beside the checkpoint."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="classifier")
    vocab_path = Path(checkpoint).parent / ckpt["vocab"]["file"]
    vocab = Vocab.load(vocab_path)
    if vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"{vocab_path} is not the vocabulary {checkpoint} was trained with (fingerprints differ)")
    model = BagOfNgramsMLP(MLPConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, ckpt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Accuracy, macro-F1 and a confusion matrix for a Stage 1 checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=CLASSIFIER_CHECKPOINT, help="a best.pt or last.pt from train.py")
    p.add_argument("--data-dir", default=None, help="data folder (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--split", default=None, help="split to score (default: the data set's test split; dev for SST-2)")
    p.add_argument("--out", default=None, help="confusion-matrix PNG (default: <checkpoint dir>/confusion_<split>.png)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=positive_int, default=1000)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, vocab, ckpt = load_model(args.checkpoint, device)
    name = ckpt["dataset"]
    info = dataset_info(name)
    split = args.split or info["eval_split"]
    if split not in info["files"]:
        raise UserError(f"{name} has no split {split!r}; choose one of: {', '.join(info['files'])}")
    texts, labels = load_split(name, resolve_data_dir(args.data_dir), split)
    bags = Bags.from_texts(texts, labels, vocab)
    m = classification_metrics(predict_bags(model, bags, args.batch_size, device), bags.labels)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"confusion_{split}.png"
    plot_confusion(m["confusion"], info["classes"], out,
                   title=f"{name} {split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    print(json.dumps({"dataset": name, "split": split, **{k: v for k, v in m.items() if k != "confusion"}}))
    print("confusion matrix (rows = true, columns = predicted):", file=sys.stderr)
    for cls, row in zip(info["classes"], m["confusion"]):
        print(f"  {cls:>10s} {row}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
