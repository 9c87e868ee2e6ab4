"""Score a fine-tuned BERT on its GLUE task's dev set: the task's metrics, and a confusion matrix for a classifier.

    python stage6_bert/evaluate.py --checkpoint runs/stage6_bert/glue_sst2/best.pt
    python stage6_bert/evaluate.py --checkpoint runs/stage6_bert/glue_stsb/best.pt --json

The task, the sequence length and the tokenizer come from the checkpoint (finetune.py writes them; the tokenizer file
sits beside it). The numbers are the ones finetune.py reported for dev: the same rows (the first 200 for a --quick
run), the same batches. A pre-training checkpoint has no classifier yet: fine-tune it first. The checkpoint loaders
are in predict.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/evaluate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import get_device, positive_int, resolve_data_dir, run_cli
from stage6_bert.glue import QUICK_ROWS, compute_metrics, confusion, encode, get_task, load_split
from stage6_bert.predict import load_finetuned, predict_rows, separately


def format_confusion(counts: list[list[int]], names: tuple[str, ...]) -> str:
    """A table: one row per true label, one column per predicted label."""
    corner = "true \\ predicted"
    first = max(len(corner), *(len(n) for n in names))
    width = max(6, *(len(n) for n in names)) + 2
    lines = [f"{corner:<{first}}" + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{name:<{first}}" + "".join(f"{c:>{width}}" for c in row) for name, row in zip(names, counts)]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Dev-set metrics of a BERT fine-tuned on a GLUE task (Stage 6).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/stage6_bert/glue_sst2/best.pt",
                   help="a fine-tuned classifier (finetune.py's best.pt); the task is read from it")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data sets (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="examples per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, tok, ckpt = load_finetuned(args.checkpoint, device)
    task_name, run_args = ckpt["task"], ckpt.get("args", {})
    task = get_task(task_name)
    dev = load_split(task_name, resolve_data_dir(args.data_dir), "dev")
    if run_args.get("quick"):
        dev = dev.head(QUICK_ROWS["dev"])
    enc = encode(tok, dev, min(run_args.get("max_len") or 128, model.cfg.max_position), separately(ckpt))
    preds = predict_rows(model, enc, device, args.batch_size)
    metrics = compute_metrics(task_name, preds, dev.labels)
    counts = confusion(preds, dev.labels, task.num_labels) if task.labels else None
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "task": task_name, "split": "dev", "examples": len(dev),
                          "metrics": metrics, "confusion": counts}, indent=2))
        return
    step = ckpt.get("state", {}).get("best_step", ckpt.get("state", {}).get("step"))
    print(f"{args.checkpoint}: GLUE {task.name}, dev, {len(dev):,} examples (fine-tuned to step {step})")
    print("  " + " | ".join(f"{name} {value:.4f}" for name, value in metrics.items()) + f"   (headline: {task.headline})")
    if counts is not None:
        print(format_confusion(counts, task.labels))


if __name__ == "__main__":
    run_cli(main)
