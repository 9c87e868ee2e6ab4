"""Score a fine-tuned BERT on its GLUE task's dev set: the task's metrics, and a confusion matrix for a classifier.

    python stage6_bert/evaluate.py --checkpoint runs/stage6_bert/glue_sst2/best.pt
    python stage6_bert/evaluate.py --checkpoint runs/stage6_bert/glue_stsb/best.pt --json

The task, the sequence length and the tokenizer come from the checkpoint (finetune.py writes them; the tokenizer file
sits beside it). The numbers are the ones finetune.py reported for dev: the same rows (the first 200 for a --quick
run), the same batches. A pre-training checkpoint has no classifier yet: fine-tune it first.

This file also holds the two checkpoint loaders the other scripts share: `load_pretrained` (a pre-training run:
BertPretrain weights, config, tokenizer) and `load_finetuned` (a classifier and its task).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/evaluate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, load_checkpoint, positive_int, resolve_data_dir, run_cli
from stage6_bert.glue import Encoded, Split, compute_metrics, confusion, encode, get_task, load_split, make_batch
from stage6_bert.model import BertClassifier, BertConfig
from stage6_bert.tokenizer import WordPieceTokenizer

STAGE = "stage6_bert"
QUICK_DEV = 200  # dev rows a --quick fine-tuning run scores (finetune.py uses the same)


def load_tokenizer_beside(checkpoint: str | Path, ckpt: dict, cfg: BertConfig) -> WordPieceTokenizer:
    """The tokenizer file named in the checkpoint, next to it; its size must be the model's vocabulary."""
    name = ckpt.get("tokenizer")
    if not isinstance(name, str) or not name:
        raise UserError(f"{checkpoint} names no tokenizer file")
    tok = WordPieceTokenizer.load(Path(checkpoint).parent / name)
    if len(tok) != cfg.vocab_size:
        raise UserError(f"the tokenizer beside {checkpoint} has {len(tok)} tokens, the model {cfg.vocab_size}: "
                        f"it is not the tokenizer this model was trained with")
    return tok


def read_config(checkpoint, ckpt: dict) -> BertConfig:
    try:
        return BertConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{checkpoint}: bad model config ({str(e).splitlines()[0]})") from None


def load_pretrained(checkpoint: str | Path) -> tuple[dict, BertConfig, WordPieceTokenizer, dict]:
    """A pre-training checkpoint -> (its BertPretrain state dict, config, tokenizer, the checkpoint dict)."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE)
    if ckpt.get("kind") != "pretrain":
        what = f"a fine-tuned {ckpt.get('task')} classifier" if ckpt.get("kind") == "finetune" else \
            f"a {ckpt.get('kind', 'unknown')!s} checkpoint"
        raise UserError(f"{checkpoint} is {what}, not a pre-training checkpoint (stage6_bert/pretrain.py writes one: "
                        f"runs/stage6_bert/pretrain/best.pt)")
    cfg = read_config(checkpoint, ckpt)
    return ckpt["model"], cfg, load_tokenizer_beside(checkpoint, ckpt, cfg), ckpt


def load_finetuned(checkpoint: str | Path, device) -> tuple[BertClassifier, WordPieceTokenizer, dict]:
    """A fine-tuning checkpoint (finetune.py's best.pt or last.pt) -> (classifier in eval mode, tokenizer, dict)."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE)
    if ckpt.get("kind") != "finetune":
        hint = " (it is a pre-training checkpoint: fine-tune it first with stage6_bert/finetune.py --task TASK " \
               f"--checkpoint {checkpoint})" if ckpt.get("kind") == "pretrain" else ""
        raise UserError(f"{checkpoint} is not a fine-tuned classifier{hint}")
    get_task(ckpt.get("task"))
    cfg = read_config(checkpoint, ckpt)
    try:
        model = BertClassifier(cfg, ckpt["num_labels"], pooling=ckpt.get("pooling", "cls"))  # older: [CLS]
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), load_tokenizer_beside(checkpoint, ckpt, cfg), ckpt


@torch.no_grad()
def predict(model: BertClassifier, enc: Encoded, device, batch_size: int = 128) -> list:
    """Class ids (argmax), or scores for a regression head, for every row of enc, in row order. Always in float32
    (no autocast), so finetune.py and this script compute the same numbers."""
    was_training = model.training
    model.eval()
    out = [None] * len(enc)
    order = sorted(range(len(enc)), key=lambda i: len(enc.ids[i]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, segments, mask, _ = make_batch(enc, idx, device)
        logits, _ = model(ids, token_type_ids=segments, attention_mask=mask)   # (B, num_labels)
        preds = logits.squeeze(-1).tolist() if model.num_labels == 1 else logits.argmax(-1).tolist()
        for i, p in zip(idx, preds):
            out[i] = p
    model.train(was_training)
    return out


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """A fine-tuned single-sentence classifier as a plain function: texts -> class probabilities (N, num_labels).
    The course's capstone (scripts/compare_classifiers.py) times every stage's classifier through such a function."""
    device = torch.device(device)
    model, tok, ckpt = load_finetuned(checkpoint, device)
    if model.num_labels == 1 or len(get_task(ckpt["task"]).text) > 1:
        raise UserError(f"{checkpoint} is a {ckpt['task']} model; load_predictor takes single-sentence classifiers")
    max_len = min(ckpt.get("args", {}).get("max_len") or 128, model.cfg.max_position)

    @torch.no_grad()  # on the function it returns: a decorator on load_predictor would end before predict runs
    def predict(texts: list[str]) -> torch.Tensor:
        enc = encode(tok, Split(list(texts), None, None, [str(i) for i in range(len(texts))]), max_len)
        ids, segments, mask, _ = make_batch(enc, list(range(len(enc))), device)
        logits, _ = model(ids, token_type_ids=segments, attention_mask=mask)   # (N, num_labels)
        return logits.float().softmax(-1).cpu()
    return predict


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
        dev = dev.head(QUICK_DEV)
    enc = encode(tok, dev, min(run_args.get("max_len") or 128, model.cfg.max_position))
    preds = predict(model, enc, device, args.batch_size)
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
