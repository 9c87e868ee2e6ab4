"""Score a trained GPT: loss, perplexity and bits per token on each split; per-word perplexity on WikiText-2.

    python stage5_gpt/evaluate.py                                            # runs/stage5_gpt/tiny_shakespeare/best.pt
    python stage5_gpt/evaluate.py --checkpoint runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt --splits test --json

Every token of a split is predicted once, in consecutive windows of the model's context (what train.py reports).
A per-token perplexity depends on the tokenizer: a tokenizer that cuts text finer has easier tokens. The per-word
perplexity spreads the same total loss over the words instead (whitespace-separated, plus one <eos> per line, as
Stage 2 counts them), so it compares across tokenizers and with Stage 2's word-level LSTM.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/evaluate.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
import torch.nn.functional as F

from scripts.common import UserError, get_device, load_checkpoint, positive_int, resolve_data_dir, run_cli
from stage5_gpt.corpus import dataset_info, load_text
from stage5_gpt.data import count_words, encode_split, eval_windows, load_tokenizer, tokenizer_fingerprint
from stage5_gpt.model import GPT, GPTConfig

STAGE = "stage5_gpt"


def load_model(checkpoint: str | Path, device: torch.device):
    """-> (model in eval mode, its tokenizer, the checkpoint dict). The tokenizer file sits beside the checkpoint."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="language_model")
    tok_path = Path(checkpoint).parent / ckpt["data"]["tokenizer"]
    tok = load_tokenizer(tok_path)
    if tokenizer_fingerprint(tok_path) != ckpt["data"]["fingerprint"]:
        raise UserError(f"the tokenizer beside {checkpoint} is not the one it was trained with (fingerprints differ)")
    try:
        model = GPT(GPTConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), tok, ckpt


@torch.no_grad()
def score_split(model: GPT, ids: np.ndarray, device, batch_size: int = 32) -> tuple[float, int]:
    """(mean loss per token, tokens predicted) over a whole split. The loss is computed in float32 whatever the
    model's own precision (a bf16 model's logits are scored, not rounded to bf16 first)."""
    total, count = 0.0, 0
    for x, y in eval_windows(ids, model.cfg.block_size, batch_size):
        logits, _ = model(x.to(device))                                           # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten())
        total, count = total + loss.item() * y.numel(), count + y.numel()
    return total / count, count


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Loss and perplexity of a trained GPT (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/stage5_gpt/tiny_shakespeare/best.pt")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data sets (default: $MY_LLM_DATA, else ~/.cache/my_llm/data)")
    p.add_argument("--splits", nargs="+", default=None, help="default: every split of the data set")
    p.add_argument("--batch-size", type=positive_int, default=32, help="windows per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    model, tok, ckpt = load_model(args.checkpoint, device)
    dataset = ckpt["dataset"]
    info = dataset_info(dataset)
    splits = args.splits or info["splits"]
    data_dir = resolve_data_dir(args.data_dir)
    metrics = {}
    for split in splits:
        text = load_text(dataset, data_dir, split)
        ids = np.array(encode_split(tok, text), dtype=np.int64)
        loss, n = score_split(model, ids, device, args.batch_size)
        m = {"loss": round(loss, 4), "ppl": round(math.exp(loss), 2), "bits_per_token": round(loss / math.log(2), 4),
             "tokens": n}
        if info["tokenizer"] == "bpe":
            words = count_words(text)
            m.update({"words": words, "ppl_word": round(math.exp(loss * n / words), 2)})
        metrics[split] = m
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset, "metrics": metrics}, indent=2))
        return
    unit = "char" if info["tokenizer"] == "char" else "token"
    print(f"{args.checkpoint}: {dataset}, step {ckpt['state']['step']}")
    for split, m in metrics.items():
        line = f"  {split:5s} loss {m['loss']:.4f} | ppl {m['ppl']:.2f} | {m['bits_per_token']:.3f} bits/{unit}"
        if "ppl_word" in m:
            line += f" | per-word ppl {m['ppl_word']:.2f} ({m['words']:,} words)"
        print(line)


if __name__ == "__main__":
    run_cli(main)
