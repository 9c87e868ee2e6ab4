"""Loss, perplexity and bits per character of a Stage 2 checkpoint on the val and test splits.

    python stage2_rnn_lstm/evaluate.py                      # runs/stage2_rnn_lstm/tiny_shakespeare_lstm/best.pt
    python stage2_rnn_lstm/evaluate.py --checkpoint runs/stage2_rnn_lstm/wikitext2_lstm/best.pt --split test

Perplexity is exp(loss): the number of equally likely tokens the model is, on average, choosing between.
Bits per character (loss / ln 2) is the usual unit for character models.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage2_rnn_lstm/evaluate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, load_checkpoint, positive_int, resolve_data_dir, run_cli
from stage2_rnn_lstm.data import Vocab, dataset_info, load_text, vocab_beside
from stage2_rnn_lstm.model import LMConfig, RNNLanguageModel
from stage2_rnn_lstm.reference_runs import LM_CHECKPOINT

STAGE = "stage2_rnn_lstm"


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[RNNLanguageModel, Vocab, dict]:
    """Model, vocabulary and checkpoint from a path; the vocabulary is the vocab.json beside the checkpoint."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="language_model")
    vocab = vocab_beside(checkpoint, ckpt)
    try:
        model = RNNLanguageModel(LMConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, ckpt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Loss, perplexity and bits per character for a Stage 2 checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=LM_CHECKPOINT,
                   help="a best.pt or last.pt from train.py")
    p.add_argument("--data-dir", default=None, help="data folder (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--split", default="all", help="val, test, or all the evaluation splits the data set has")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=positive_int, default=16, help="parallel streams")
    p.add_argument("--bptt", type=positive_int, default=None, help="window length (default: the training run's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def main(argv=None) -> None:
    from stage2_rnn_lstm.train import evaluate_loss  # the same scoring loop the training run reports with

    args = parse_args(argv)
    device = get_device(args.device)
    model, vocab, ckpt = load_model(args.checkpoint, device)
    dataset = ckpt["dataset"]
    available = [s for s in dataset_info(dataset)["splits"] if s != "train"]
    splits = available if args.split == "all" else [args.split]
    if any(s not in available for s in splits):
        raise UserError(f"{dataset} has no {args.split!r} evaluation split; choose from: all, {', '.join(available)}")
    data_dir = resolve_data_dir(args.data_dir)
    bptt = args.bptt or ckpt["args"]["bptt"]
    results = {}
    for split in splits:
        ids = torch.tensor(vocab.encode(load_text(dataset, data_dir, split)), dtype=torch.long)
        loss = evaluate_loss(model, ids, bptt, device, args.batch_size)
        results[split] = {"loss": round(loss, 4), "ppl": round(math.exp(loss), 2), "tokens": len(ids)}
        if vocab.vocab_type == "char":
            results[split]["bpc"] = round(loss / math.log(2), 4)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset, **results}))
        return
    print(f"{args.checkpoint} ({dataset}, {ckpt['config']['model_type']}, step {ckpt['state']['step']})")
    for split, r in results.items():
        extra = f" | {r['bpc']:.4f} bits/char" if "bpc" in r else ""
        print(f"  {split:5s} loss {r['loss']:.4f} nats/token | perplexity {r['ppl']:.2f}{extra} | {r['tokens']:,} tokens")


if __name__ == "__main__":
    run_cli(main)
