"""Zero-shot sentence similarity: how alike two sentences are, read off a pre-trained encoder with no training at all.

    python stage6_bert/similarity.py                                    # all-MiniLM-L6-v2 on GLUE STS-B dev
    python stage6_bert/similarity.py --pretrained path/to/a/bert/folder --split train
    python stage6_bert/similarity.py --pairs "a man plays a guitar ." "someone is playing music ."

Each sentence is encoded alone ([CLS] sentence [SEP]); its vector is the mean of the last layer's states over its real
tokens (not the pads), the pooling all-MiniLM-L6-v2 was trained with; the similarity of two sentences is the cosine of
their vectors, from -1 to 1. STS-B's gold scores run from 0 (unrelated) to 5 (the same meaning), so the figure of merit
is a correlation, which ignores the scale: Pearson (do the cosines rise linearly with the gold scores?) and Spearman
(the same on ranks), the metrics of GLUE's STS-B (glue.py computes both from scratch).

Why this is the first lesson of real weights. Nothing here is fitted to STS-B: no head, no step of gradient descent.
Whatever correlation comes out is what pre-training (distillation from a large BERT, then about a billion sentence
pairs pulled together or apart, see pretrained.py) put into the weights. Fine-tuning on STS-B train
(finetune.py --task stsb --pretrained all-MiniLM-L6-v2) must beat this figure to have taught the model anything.

The result file (--out-dir/result.json, default runs/stage6_bert/stsb_zero_shot_<weights>/) records the metrics,
the weights it read and the command, like every other script's; its plot shows each pair's cosine against its gold
score. There is no training, so train_seconds is 0 and the time spent encoding is "wall_seconds".
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/similarity.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F

from scripts.common import (UserError, command_line, get_device, positive_int, reference_run_name, resolve_data_dir,
                            resolved_config, run_cli, write_result)
from stage6_bert.glue import QUICK_ROWS, Split, compute_metrics, encode, load_split, make_batch
from stage6_bert.model import Bert, mean_pool
from stage6_bert.pretrained import load_pretrained_bert, short_name
from stage6_bert.reference_runs import REFERENCE_RUNS

STAGE = "stage6_bert"
SCRIPT = "stage6_bert/similarity.py"


@torch.no_grad()
def embed(model: Bert, tok, texts: list[str], max_len: int, device, batch_size: int = 64) -> torch.Tensor:
    """Texts -> (N, C) unit vectors: the mean of the last layer over each text's real tokens, L2-normalised.
    Batches of similar lengths (less padding); the rows come back in the order of `texts`."""
    model.eval()
    enc = encode(tok, Split(list(texts), None, None, [str(i) for i in range(len(texts))]), max_len)
    order = sorted(range(len(enc)), key=lambda i: len(enc.ids[i]))
    out = torch.empty(len(enc), model.cfg.hidden)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, segments, mask, _ = make_batch(enc, idx, device)
        hidden, _ = model(ids, token_type_ids=segments, attention_mask=mask)     # (B, T, C)
        mean = mean_pool(hidden, mask)                                           # (B, C): pads left out
        out[idx] = F.normalize(mean.float(), dim=-1).cpu()                       # unit length: dot = cosine
    return out


def cosine_pairs(model: Bert, tok, a: list[str], b: list[str], max_len: int, device) -> list[float]:
    """The cosine similarity of a[i] and b[i], for every i."""
    return (embed(model, tok, a, max_len, device) * embed(model, tok, b, max_len, device)).sum(-1).tolist()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Zero-shot sentence similarity on GLUE STS-B with pre-trained weights "
                                            "(mean-pooled cosine, no training).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pretrained", default="all-MiniLM-L6-v2",
                   help="a Hugging Face BERT folder, a name under <data-dir>/pretrained/, or a hub id (pretrained.py)")
    p.add_argument("--split", choices=["dev", "train"], default="dev", help="the STS-B split to score")
    p.add_argument("--max-len", type=positive_int, default=128,
                   help="tokens per sentence, [CLS] and [SEP] included (the longest STS-B dev sentence has 53)")
    p.add_argument("--quick", action="store_true", help=f"the first {QUICK_ROWS['dev']} pairs only (a smoke run)")
    p.add_argument("--pairs", nargs=2, action="append", metavar=("A", "B"), default=None,
                   help="score these sentence pairs instead (printed, no result file); may be repeated")
    p.add_argument("--data-dir", default=None, help="folder with the data sets (default: $MY_LLM_DATA, "
                                                     "else ~/.cache/my_llm/data)")
    p.add_argument("--out-dir", default="runs/stage6_bert/{name}", help="where result.json and its plot go")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    args = p.parse_args(argv)
    args.out_dir = args.out_dir.format(name=f"stsb_zero_shot_{short_name(args.pretrained)}")
    return args


def plot_scatter(path: Path, cosines: list[float], gold: list[float], title: str) -> None:
    """Each pair as a dot: its gold score (x) against its cosine (y)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.scatter(gold, cosines, s=4, alpha=0.4)
    ax.set_xlabel("gold similarity (0 to 5)")
    ax.set_ylabel("cosine of the mean-pooled vectors")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    t_start = time.time()
    model, tok, source = load_pretrained_bert(args.pretrained, data_dir, Bert)
    model = model.to(device).eval()
    max_len = min(args.max_len, model.cfg.max_position)
    if max_len < 3:
        raise UserError(f"--max-len {args.max_len} leaves no room for a word after [CLS] and [SEP]")
    if args.pairs:   # a person's own sentences: print the cosines, write nothing
        for (a, b), cos in zip(args.pairs, cosine_pairs(model, tok, *zip(*args.pairs), max_len, device)):
            print(f"{cos:7.4f}  {a!r} ~ {b!r}")
        return

    stsb = load_split("stsb", data_dir, args.split)
    if args.quick:
        stsb = stsb.head(QUICK_ROWS["dev"])
    cosines = cosine_pairs(model, tok, stsb.a, stsb.b, max_len, device)
    metrics = compute_metrics("stsb", cosines, stsb.labels)   # pearson (the headline), spearman
    seconds = time.time() - t_start
    longest = max(len(tok.encode(t)) + 2 for t in stsb.a + stsb.b)
    print(f"STS-B {args.split}, {len(stsb):,} pairs, zero-shot with {args.pretrained}: "
          + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f" ({seconds:.0f} s)")

    out_dir = Path(args.out_dir)
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset=f"GLUE STS-B (zero-shot, {args.pretrained})", split=args.split,
                 metrics=metrics, headline="pearson", train_seconds=0.0, device=device,
                 params=sum(p.numel() for p in model.parameters()), command=command_line(SCRIPT, argv),
                 run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"task": "stsb", "quick": args.quick, "wall_seconds": round(seconds, 1), "pretrained": source,
                        "pooling": "mean over the real tokens, then cosine", "pairs": len(stsb), "max_len": max_len,
                        "longest_sentence_tokens": longest, "config": model.cfg.to_dict(),
                        "hparams": resolved_config(args)})
    plot_scatter(result_path.with_suffix(".png"), cosines, stsb.labels,
                 f"STS-B {args.split}, zero-shot {args.pretrained}: Pearson {metrics['pearson']}")
    print(f"wrote {result_path} and its plot" + (f" (reference run {run}: publish it with python "
                                               f"scripts/publish.py {result_path})" if run else ""))


if __name__ == "__main__":
    run_cli(main)
