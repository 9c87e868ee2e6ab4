"""Stage 6's checkpoints as models: a pre-trained BERT, a fine-tuned classifier, and a classifier as a plain function.

    python stage6_bert/predict.py "a gripping , beautifully acted film ." "two hours i will never get back ."
    echo "what a waste of a great cast" | python stage6_bert/predict.py --checkpoint runs/stage6_bert/glue_sst2/best.pt

    load_pretrained(checkpoint)        a "masked_lm" checkpoint (pretrain.py) -> weights, config, tokenizer
    load_finetuned(checkpoint, device)  a "classifier" checkpoint (finetune.py) -> BertClassifier (or BertBiEncoder),
                                        tokenizer
    predict_rows(model, encoded, device) every row of a GLUE split -> class ids (or scores, for STS-B)
    load_predictor(checkpoint)          texts -> class probabilities (N, num_labels): what the demo and the capstone use

The tokenizer of a checkpoint is the file it names, beside it (tokenizer.json), and must have the model's vocabulary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/predict.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, load_checkpoint, run_cli
from stage6_bert.glue import Encoded, Split, encode, get_task, make_batch
from stage6_bert.model import BertBiEncoder, BertClassifier, BertConfig
from stage6_bert.tokenizer import WordPieceTokenizer

STAGE = "stage6_bert"


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
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="masked_lm")
    cfg = read_config(checkpoint, ckpt)
    return ckpt["model"], cfg, load_tokenizer_beside(checkpoint, ckpt, cfg), ckpt


def load_finetuned(checkpoint: str | Path, device) -> tuple[BertClassifier | BertBiEncoder, WordPieceTokenizer, dict]:
    """A fine-tuning checkpoint (finetune.py's best.pt or last.pt) -> (classifier in eval mode, tokenizer, dict).
    STS-B's regressor is a "classifier" checkpoint too: a task head with one output, or a bi-encoder
    ("pair_encoding": "bi"), whose pairs are encoded a sentence at a time (`separately`)."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="classifier")
    get_task(ckpt.get("task"))
    cfg = read_config(checkpoint, ckpt)
    try:
        if separately(ckpt):
            model = BertBiEncoder(cfg)
        else:
            model = BertClassifier(cfg, ckpt["num_labels"], pooling=ckpt.get("pooling", "cls"),   # older: [CLS]
                                   label_shift=ckpt.get("label_shift", 0.0),             # older: raw targets
                                   label_scale=ckpt.get("label_scale", 1.0))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), load_tokenizer_beside(checkpoint, ckpt, cfg), ckpt


def separately(ckpt: dict) -> bool:
    """Whether the checkpoint's model reads each sentence of a pair alone (a bi-encoder): encode(..., separately)."""
    return ckpt.get("pair_encoding") == "bi"


@torch.no_grad()
def predict_rows(model: BertClassifier, enc: Encoded, device, batch_size: int = 128) -> list:
    """Class ids (argmax), or scores for a regression head, for every row of enc, in row order. Always in float32
    (no autocast), so finetune.py and evaluate.py compute the same numbers."""
    was_training = model.training
    model.eval()
    out = [None] * len(enc)
    lengths = enc.lengths()
    order = sorted(range(len(enc)), key=lambda i: lengths[i])  # similar lengths together: less padding
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Classify texts with a fine-tuned single-sentence BERT (SST-2, CoLA): "
                                            "texts given as arguments, or one per line on stdin.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts to classify (none: read lines from stdin)")
    p.add_argument("--checkpoint", default="runs/stage6_bert/glue_sst2/best.pt",
                   help="a fine-tuned classifier (finetune.py's best.pt)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true", help="print one JSON object per text instead of a table")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    texts = [t for t in (args.texts or [line.rstrip("\n") for line in sys.stdin]) if t.strip()]
    if not texts:
        raise UserError("no text to classify: pass texts as arguments or one per line on stdin")
    predict = load_predictor(args.checkpoint, get_device(args.device))
    labels = get_task(load_checkpoint(args.checkpoint, stage=STAGE, kind="classifier")["task"]).labels
    for text, probs in zip(texts, predict(texts).tolist()):
        if args.json:
            print(json.dumps({"text": text, "probabilities": dict(zip(labels, probs))}, ensure_ascii=False))
        else:
            print("  ".join(f"{label}: {p:.3f}" for label, p in zip(labels, probs)) + f"  {text}")


if __name__ == "__main__":
    run_cli(main)
