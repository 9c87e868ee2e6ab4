"""The constant predictor on GLUE dev: what a model that ignores its input scores, the line every fine-tune must cross.

    python stage6_bert/baselines.py                    # all six tasks: a table, and runs/stage6_bert/glue_baselines/
    python stage6_bert/baselines.py --tasks mrpc cola  # some of them (an experiment: not the published run)

Why it is needed. A skewed task flatters a model that has learned nothing: 68 % of MRPC's dev pairs are paraphrases, so
always answering "paraphrase" scores F1 0.81 (glue.py's docstring has the other tasks). A fine-tuned model's figure
means something only next to this one, and a model at exactly this figure has most likely learned to say one thing.

What the constant is. It is chosen on TRAIN, as a model could choose it, never on dev: the most frequent class of the
task's training file (a tie goes to the class listed first in glue.py's Task.labels), and for STS-B, a regression, the
mean training score. Each constant is then scored on dev with glue.py's own metric functions (compute_metrics), the
ones finetune.py reports, so the figures compare like for like.

What a constant cannot score. Matthews correlation is 0 for any constant (matthews_corr returns 0 where its formula
divides by 0, as scikit-learn does). Pearson's and Spearman's correlations of a constant are undefined: both divide
by the spread of the predictions, which is 0. glue.pearson reports 0 there, a fair figure for a model that collapsed
to one score; this file records null instead, because no correlation is true of a constant, and records the constant's
mean squared error on dev ("mse"), the error a regressor must go below to have learned anything from the sentences.

The result file (--out-dir/result.json, default runs/stage6_bert/glue_baselines/) has "metrics" per task,
{task: {metric: value}}, and in "tasks" what each constant was and how often it occurs in train. Six tasks have no
single headline metric, so the file is not a row of the results table (write_result with headline=None): the GLUE
table of stage6_bert/README.md (scripts/results_table.py) shows each task's figures next to its fine-tuned models.
Published as stage6_bert/results/glue_baselines.json (reference_runs.py); no training, no model: seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/baselines.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scripts.common import (command_line, reference_run_name, resolve_data_dir, resolved_config, run_cli,
                            write_result)
from stage6_bert.glue import TASKS, Split, compute_metrics, get_task, load_split
from stage6_bert.reference_runs import REFERENCE_RUNS

STAGE = "stage6_bert"
SCRIPT = "stage6_bert/baselines.py"
UNDEFINED = ("a constant prediction has no spread, so its correlation with the gold scores is undefined (0 / 0): "
             "recorded as null; mse is the constant's mean squared error on dev")


def majority_class(labels: list[int], num_labels: int) -> int:
    """The most frequent class id; a tie goes to the lowest id, the label listed first in the task's Task.labels."""
    counts = [labels.count(c) for c in range(num_labels)]
    return counts.index(max(counts))


def mean_squared_error(preds: list[float], labels: list[float]) -> float:
    return sum((p - y) ** 2 for p, y in zip(preds, labels)) / len(labels)


def constant_baseline(task: str, train: Split, dev: Split) -> tuple[dict, dict]:
    """The constant chosen on train, scored on dev -> (its dev metrics, what the constant is)."""
    t = get_task(task)
    sizes = {"train_rows": len(train.labels), "dev_rows": len(dev.labels)}
    if t.labels is None:   # STS-B: a score; the constant is the mean training score
        mean = sum(train.labels) / len(train.labels)
        preds = [mean] * len(dev.labels)
        metrics = {name: None for name in t.metrics} | {"mse": round(mean_squared_error(preds, dev.labels), 4)}
        return metrics, {"predicts": round(mean, 4), "rule": "the mean training score", **sizes, "note": UNDEFINED}
    c = majority_class(train.labels, t.num_labels)
    preds = [c] * len(dev.labels)
    return compute_metrics(task, preds, dev.labels), {
        "predicts": t.labels[c], "rule": "the most frequent class of train",
        "train_share": round(train.labels.count(c) / len(train.labels), 4), **sizes}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The dev metrics of the constant predictor (the majority class of train; "
                                            "STS-B: the mean training score) on each GLUE task.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="the GLUE tasks to score")
    p.add_argument("--data-dir", default=None, help="folder with the data sets (default: $MY_LLM_DATA, "
                                                     "else ~/.cache/my_llm/data)")
    p.add_argument("--out-dir", default="runs/stage6_bert/glue_baselines", help="where result.json goes")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json); publish the "
                                                  "reference run with python scripts/publish.py <out-dir>/result.json")
    args = p.parse_args(argv)
    args.tasks = [t for t in TASKS if t in args.tasks]   # GLUE's order, each once: the same run however typed
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    t_start = time.time()
    metrics, tasks = {}, {}
    for task in args.tasks:
        train, dev = load_split(task, data_dir, "train"), load_split(task, data_dir, "dev")
        metrics[task], tasks[task] = constant_baseline(task, train, dev)
        shown = " | ".join(f"{k} {'undefined' if v is None else f'{v:.4f}'}" for k, v in metrics[task].items())
        print(f"{get_task(task).name:6s} always {tasks[task]['predicts']!s:15s} {shown}")

    result_path = Path(args.result) if args.result else Path(args.out_dir) / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset="GLUE, constant predictor (majority class of train; STS-B: "
                                                   "the mean training score)",
                 split="dev", metrics=metrics, headline=None, train_seconds=0.0, device="cpu", params=0,
                 command=command_line(SCRIPT, argv), run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"tasks": tasks, "wall_seconds": round(time.time() - t_start, 1),
                        "hparams": resolved_config(args)})
    print(f"wrote {result_path}" + (f" (reference run {run}: publish it with python scripts/publish.py "
                                    f"{result_path})" if run else ""))


if __name__ == "__main__":
    run_cli(main)
