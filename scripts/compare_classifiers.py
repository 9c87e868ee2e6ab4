"""The capstone: one task, five architectures. SST-2 sentiment (train -> dev) with each stage's own classifier.

    python scripts/compare_classifiers.py                       # train all five -> runs/compare_sst2/compare_sst2.json
    python scripts/publish.py runs/compare_sst2/compare_sst2.json   # copy it (and its plot) to results/
    python scripts/compare_classifiers.py --only mlp lstm       # a subset (the table then holds only those)
    python scripts/compare_classifiers.py --reuse               # score checkpoints an earlier run left, train no more
    python scripts/compare_classifiers.py --quick               # a smoke run on slices, under runs/compare_sst2_quick/

Every model is trained by its own stage's script, in its own process, with the flags of that stage's declared SST-2
reference run (<stage>/reference_runs.py), so each row is what a learner gets from that stage:

    mlp          Stage 1  bag of word and bigram embeddings -> MLP             stage1_mlp/train.py --dataset sst2
    lstm         Stage 2  LSTM over word embeddings, last state -> linear      stage2_rnn_lstm/classify.py
    transformer  Stage 4  Transformer encoder from scratch -> linear           stage4_transformer/classify.py
    gpt          Stage 5  GPT pre-trained on WikiText-2, fine-tuned            stage5_gpt/finetune.py
    bert         Stage 6  BERT pre-trained with MLM, fine-tuned                stage6_bert/finetune.py --task sst2

Stages 5 and 6 fine-tune a pre-trained checkpoint (--gpt-checkpoint, --bert-checkpoint); the script says which
command makes one when it is missing. Each model chooses its epoch on data held out from train and meets dev once.

What the table shows, per model: dev accuracy and macro-F1 (computed here, from the model's own predictions, and
checked against the figure its stage wrote), parameters, training seconds (and the pre-training seconds the fine-tuned
models started from), and inference milliseconds per sentence, one sentence at a time, on this machine's threads.
`python scripts/results_table.py --write` copies the table into docs/roadmap.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/compare_classifiers.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import (REPO_ROOT, UserError, all_reference_runs, get_device, git_commit, load_checkpoint,
                            portable, reference_command, resolve_data_dir, run_cli, set_seed, write_json)
from scripts.results_table import compare_table
from stage5_gpt.reference_runs import GPT_CHECKPOINT
from stage6_bert.reference_runs import BERT_CHECKPOINT



@dataclass
class Model:
    name: str                 # the key used by --only
    stage: str                # the stage folder whose code trains and runs it
    architecture: str         # what the table calls it
    run: str                  # the stage's declared SST-2 reference run (its published file): its script and flags
    predictor: str            # the module whose load_predictor(checkpoint, device) turns texts into probabilities
    pretrained: str | None = None                 # "gpt" or "bert": fine-tunes the checkpoint given by that flag
    pretrained_run: str | None = None             # the declared pre-training run (its command, its time)

    @property
    def argv(self) -> list[str]:
        """[script, *flags] of the declared run, read from the stage's reference_runs.py."""
        return all_reference_runs()[self.run]


MODELS = [
    Model("mlp", "stage1_mlp", "bag of n-grams + MLP", "stage1_mlp/results/sst2.json", "stage1_mlp.predict"),
    Model("lstm", "stage2_rnn_lstm", "LSTM", "stage2_rnn_lstm/results/sst2_lstm.json", "stage2_rnn_lstm.predict"),
    Model("transformer", "stage4_transformer", "Transformer encoder", "stage4_transformer/results/sst2_classifier.json",
          "stage4_transformer.predict"),
    Model("gpt", "stage5_gpt", "GPT, pre-trained + fine-tuned", "stage5_gpt/results/sst2_finetune.json",
          "stage5_gpt.predict", pretrained="gpt", pretrained_run="stage5_gpt/results/wikitext2.json"),
    Model("bert", "stage6_bert", "BERT, pre-trained + fine-tuned", "stage6_bert/results/glue_sst2.json",
          "stage6_bert.predict", pretrained="bert", pretrained_run="stage6_bert/results/pretrain.json"),
]
NAMES = [m.name for m in MODELS]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def train_command(model: Model, args, out_dir: Path) -> list[str]:
    """The stage's declared SST-2 run, writing into out_dir instead of the stage's runs/ folder."""
    cmd = [sys.executable, *model.argv]
    if model.pretrained:
        cmd += ["--checkpoint", str(getattr(args, f"{model.pretrained}_checkpoint"))]
    cmd += ["--out-dir", str(out_dir), "--result", str(out_dir / "result.json"), "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    if args.quick:
        cmd += ["--quick"]
    return cmd


def check_pretrained(model: Model, args) -> None:
    """A fine-tuned model needs its pre-trained checkpoint: say how to make it rather than fail inside the stage."""
    if not model.pretrained:
        return
    path = Path(getattr(args, f"{model.pretrained}_checkpoint"))
    if not path.is_file():
        how = reference_command(all_reference_runs()[model.pretrained_run])
        raise UserError(f"'{model.name}' fine-tunes a pre-trained checkpoint, and {path} does not exist. Make it with "
                        f"`{how}` (or pass --{model.pretrained}-checkpoint PATH, or leave it out with --only)")


def train(model: Model, args, out_dir: Path, log) -> dict:
    """Run the stage's script (unless --reuse finds its result) and return the result file it wrote."""
    result = out_dir / "result.json"
    if args.reuse and result.is_file() and (out_dir / "best.pt").is_file():
        log(f"[{model.name}] reusing {result}")
        return read_json(result)
    cmd = train_command(model, args, out_dir)
    log(f"[{model.name}] {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise UserError(f"training '{model.name}' failed (exit {proc.returncode}); its log is in {out_dir}")
    if not result.is_file():
        raise UserError(f"training '{model.name}' wrote no {result}")
    return read_json(result)


def classification_scores(preds: list[int], labels: list[int]) -> dict:
    """Accuracy and macro-F1 (the mean of the two classes' F1), the same definition every stage uses."""
    acc = sum(p == y for p, y in zip(preds, labels)) / len(labels)
    f1s = []
    for c in (0, 1):
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        fp = sum(p == c and y != c for p, y in zip(preds, labels))
        fn = sum(p != c and y == c for p, y in zip(preds, labels))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return {"accuracy": round(acc, 4), "macro_f1": round(sum(f1s) / 2, 4)}


def score(model: Model, checkpoint: Path, sentences: list[str], labels: list[int], device) -> dict:
    """Dev metrics and inference time per sentence, through the stage's own load_predictor, one sentence at a time
    (what a user of a demo or an API waits for), after a few warm-up calls."""
    load_predictor = importlib.import_module(model.predictor).load_predictor
    predict = load_predictor(checkpoint, device)
    with torch.inference_mode():
        for s in sentences[:5]:
            predict([s])
        preds, start = [], time.perf_counter()
        for s in sentences:
            preds.append(int(predict([s])[0].argmax()))
        seconds = time.perf_counter() - start
    return {**classification_scores(preds, labels), "infer_ms_per_sentence": round(1000 * seconds / len(sentences), 3)}


def pretraining(model: Model, args) -> dict | None:
    """What the fine-tuned model started from: the checkpoint, and its training time as the checkpoint records it."""
    if not model.pretrained:
        return None
    path = Path(getattr(args, f"{model.pretrained}_checkpoint"))
    state = load_checkpoint(path, stage=model.stage).get("state", {})
    return {"checkpoint": portable(str(path)), "train_seconds": round(float(state.get("train_seconds", 0.0)), 1),
            "steps": state.get("step"),
            "reference_command": reference_command(all_reference_runs()[model.pretrained_run])}


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    panels = [("dev accuracy", [r["accuracy"] for r in rows], False),
              ("parameters (millions)", [r["params"] / 1e6 for r in rows], False),
              ("training seconds (+ pre-training, hatched)", [r["train_seconds"] for r in rows], True),
              ("inference ms / sentence", [r["infer_ms_per_sentence"] for r in rows], True)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (label, values, log_scale) in zip(axes, panels):
        bars = ax.bar(names, values, color="tab:blue")
        if label.startswith("training"):
            pre = [(r.get("pretraining") or {}).get("train_seconds", 0.0) for r in rows]
            ax.bar(names, pre, bottom=values, color="white", edgecolor="tab:blue", hatch="//")
        if log_scale:
            ax.set_yscale("log")
        elif label.startswith("dev"):  # the differences are a few points: start the axis near the lowest bar
            ax.set_ylim(min(values) - 0.05, min(1.0, max(values) + 0.03))
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
        else:
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train and compare five stages' classifiers on SST-2 (the capstone).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", nargs="+", choices=NAMES, default=NAMES, metavar="MODEL",
                   help=f"models to train and compare, from: {' '.join(NAMES)}")
    p.add_argument("--gpt-checkpoint", default=GPT_CHECKPOINT, help="the pre-trained GPT that 'gpt' fine-tunes")
    p.add_argument("--bert-checkpoint", default=BERT_CHECKPOINT, help="the pre-trained BERT that 'bert' fine-tunes")
    p.add_argument("--data-dir", default=None, help="folder with the data sets (default: $MY_LLM_DATA, else "
                                                      "~/.cache/my_llm/data)")
    p.add_argument("--out-dir", default=None, help="where each model's run goes (default: runs/compare_sst2, or "
                                                     "runs/compare_sst2_quick with --quick)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="for training and timing; cpu by default, so the times compare")
    p.add_argument("--seed", type=int, default=1337, help="seed for the timing process (each stage seeds its own run)")
    p.add_argument("--reuse", action="store_true", help="score the checkpoints in --out-dir instead of training again")
    p.add_argument("--quick", action="store_true", help="each stage's --quick smoke run; results stay in --out-dir")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/compare_sst2.json; publish it "
                                                   "to results/ with `python scripts/publish.py`)")
    args = p.parse_args(argv)
    args.only = [n for n in NAMES if n in args.only]  # the table keeps the course's order
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    out_root = Path(args.out_dir or ("runs/compare_sst2_quick" if args.quick else "runs/compare_sst2"))
    result_path = Path(args.result) if args.result else out_root / "compare_sst2.json"
    models = [m for m in MODELS if m.name in args.only]
    for m in models:  # before any training: a missing checkpoint should not surface an hour in
        check_pretrained(m, args)
    data_dir = resolve_data_dir(args.data_dir)
    from stage1_mlp.data import load_split  # any stage's reader would do: dev is the same file for all five
    sentences, labels = load_split("sst2", data_dir, "dev")
    if args.quick:
        sentences, labels = sentences[:100], labels[:100]
    device = get_device(args.device)
    set_seed(args.seed)

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} | {message}", flush=True)

    rows = []
    for m in models:
        out_dir = out_root / m.name
        stage_result = train(m, args, out_dir, log)
        scored = score(m, out_dir / "best.pt", sentences, labels, device)
        if abs(scored["accuracy"] - stage_result["metrics"]["accuracy"]) > 0.002 and not args.quick:
            log(f"[{m.name}] note: accuracy here {scored['accuracy']} vs {stage_result['metrics']['accuracy']} in "
                f"its stage's result (one sentence at a time here, batched there)")
        rows.append({"name": m.name, "stage": m.stage, "architecture": m.architecture, **scored,
                     "stage_accuracy": stage_result["metrics"]["accuracy"], "params": stage_result["params"],
                     "train_seconds": round(stage_result["train_seconds"], 1), "pretraining": pretraining(m, args),
                     "command": stage_result["command"], "checkpoint": portable(str(out_dir / "best.pt"))})
        log(f"[{m.name}] dev accuracy {scored['accuracy']:.4f} | macro-F1 {scored['macro_f1']:.4f} | "
            f"{stage_result['params']:,} params | {stage_result['train_seconds']:.0f} s training | "
            f"{scored['infer_ms_per_sentence']:.2f} ms/sentence")

    result = {"task": "sst2", "train": "train", "split": "dev", "examples": len(labels), "quick": args.quick,
              "command": " ".join(["python", "scripts/compare_classifiers.py", *(sys.argv[1:] if argv is None else argv)]),
              "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "models": rows}
    write_json(result_path, result)
    plot(result_path.with_suffix(".png"), rows, f"SST-2 dev, five architectures ({len(labels)} sentences)")
    print()
    print(compare_table(result))
    log(f"wrote {result_path} and {result_path.with_suffix('.png')}; publish them to results/ with "
        f"`python scripts/publish.py {portable(str(result_path))}`")


if __name__ == "__main__":
    run_cli(main)
