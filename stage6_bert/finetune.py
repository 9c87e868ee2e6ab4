"""Fine-tune the pre-trained BERT on a GLUE task: the second half of "pre-train, then fine-tune".

    python stage6_bert/finetune.py --task sst2                        # runs/stage6_bert/pretrain/best.pt, fine-tuned
    python stage6_bert/finetune.py --task sst2 --from-scratch         # the same network and tokenizer, random weights
    python stage6_bert/finetune.py --task stsb --epochs 5             # STS-B: a regression head, Pearson correlation
    python stage6_bert/finetune.py --task rte --quick                 # a smoke run on small slices

BERT reads "[CLS] sentence [SEP]" (or "[CLS] a [SEP] b [SEP]" for a pair, with segment ids 0 and 1), and a single
linear layer on the pooled [CLS] state gives the class scores (`BertClassifier`): cross-entropy for a classification
task, mean squared error for STS-B's similarity score (one output). Every weight is trained, with a small learning
rate, a linear warmup over the first --warmup-ratio of the steps and a linear decay to 0 (Devlin et al. 2019).
--from-scratch builds the same classifier with random weights and the same tokenizer: the gap between the two dev
figures is what pre-training bought.

Honest numbers. GLUE's test labels are private, so dev is our test set: it is scored once, at the end, with the epoch
that was best on a validation split held out from train (--val-size; by the task's headline metric). By default that
is 10% of train, at most 2,000 examples: WNLI 64, RTE 249, MRPC 367, STS-B 575, CoLA 855. The small tasks get a
proportion rather than a fixed count, so that enough is left to train on. SST-2 is different: its train set is every
phrase of the parse trees of some 8,500 movie-review sentences, so a random held-out example is nearly always a
phrase inside a training example (89% of them), and its score measures memory (val 0.91 while dev was 0.80). SST-2
holds out 500 whole sentences instead, like dev's, and drops every phrase inside them from train (`sentence_split`).
WNLI's dev set is adversarial to its train set, and BERT does not beat always answering the majority class (56.3%)
there either.

Outputs in --out-dir (default runs/stage6_bert/glue_<task>[_scratch]/): best.pt (the chosen classifier, what
evaluate.py reads), last.pt (to --resume exactly), tokenizer.json (copied from the pre-training run), finetune.log, and
<TASK>.tsv, the test predictions in the format GLUE's server takes. The result file is
stage6_bert/results/glue_<task>[_scratch].json with its plot (smoke runs: <out-dir>/result.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import random
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/finetune.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from tqdm import tqdm

from scripts.common import (REPO_ROOT, UserError, add_common_args, catch_stop_signals, get_device, get_logger,
                            load_checkpoint, note_command, plot_curves, positive_float, positive_int, probability,
                            resolve_data_dir, rng_state, run_cli, save_checkpoint, set_rng_state, set_seed,
                            write_result)
from stage6_bert.evaluate import QUICK_DEV, load_pretrained, predict
from stage6_bert.glue import (SPLITS, TASKS, Encoded, compute_metrics, encode, get_task, load_split, make_batch,
                              write_predictions)
from stage6_bert.model import BertClassifier, configure_optimizer
from stage6_bert.pretrain import autocast_for

STAGE = "stage6_bert"
QUICK_TRAIN, QUICK_TEST = 2_000, 200
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # from the command line on --resume


def val_size(text: str) -> float:
    value = positive_float(text)
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"a fraction below 1 or a whole number of examples, got {text}")
    return value


def val_count(spec: float | None, n_train: int, phrases: bool = False) -> int:
    """--val-size: None = 10% of train, at most 2,000 (a train set of phrases, SST-2: at most 500 sentences); below 1
    a fraction of train; else a number of examples."""
    if spec is None:
        return min(500 if phrases else 2000, round(0.1 * n_train))
    return round(spec * n_train) if spec < 1 else int(spec)


def sentence_split(texts: list[str], n_val: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train rows, val rows) for a train set made of phrases of sentences, as SST-2's is. Validation takes `n_val`
    whole sentences: examples that no other example contains, found in a random order. Train keeps every other
    example except the phrases inside a validation sentence, whose labels would give its answer away. What is left
    is the situation of dev: sentences the model has never seen, in whole or in part."""
    words = [t.split() for t in texts]
    padded = [f" {' '.join(w)} " for w in words]  # spaces around: "art" is not inside "party"
    having: dict[str, list[int]] = {}  # word -> the examples that hold it
    for i, w in enumerate(words):
        for word in set(w):
            having.setdefault(word, []).append(i)

    def whole(i: int) -> bool:  # only the examples with its rarest word can contain it
        rarest = min(set(words[i]), key=lambda word: len(having[word]), default=None)
        return rarest is not None and not any(j != i and padded[i] in padded[j] for j in having[rarest])

    order = list(range(len(texts)))
    rng.shuffle(order)
    val = []
    for i in order:
        if len(val) == n_val:
            break
        if whole(i):
            val.append(i)
    if len(val) < n_val:
        raise UserError(f"--val-size asks for {n_val} whole sentences, but the training set has only {len(val)}")
    inside = {" ".join(words[i][a:b]) for i in val for a in range(len(words[i])) for b in range(a + 1, len(words[i]) + 1)}
    held = set(val)
    train = [i for i in range(len(texts)) if i not in held and padded[i][1:-1] not in inside]
    return train, val


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to the peak over `warmup` steps, then a straight line down to 0 at `total` (BERT's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def length_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """One epoch's batches, each of examples of similar length. A batch is padded to its longest example, and SST-2
    mixes 3-token phrases with 60-token sentences: random batches would spend most of their compute on padding.
    Shuffle, cut into pools of `pool` batches, sort each pool by length, cut it into batches, shuffle the batches.
    Every example appears once; the order still changes every epoch, and the same rng state gives the same batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = pool * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def take(enc: Encoded, rows: list[int]) -> Encoded:
    return Encoded([enc.ids[i] for i in rows], [enc.segments[i] for i in rows], [enc.labels[i] for i in rows])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fine-tune the pre-trained BERT on a GLUE task (Stage 6).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=list(TASKS), help="the GLUE task")
    p.add_argument("--checkpoint", default="runs/stage6_bert/pretrain/best.pt",
                   help="the pre-training checkpoint (its tokenizer.json sits beside it); with --from-scratch only its "
                        "config and tokenizer are used")
    add_common_args(p, epochs=3, batch_size=32, lr=1e-4, out_dir="runs/stage6_bert/{name}")
    p.add_argument("--from-scratch", action="store_true",
                   help="random weights instead of the pre-trained ones (the same config and tokenizer)")
    p.add_argument("--max-len", type=positive_int, default=128, help="tokens per example, [CLS] and [SEP]s included")
    p.add_argument("--warmup-ratio", type=probability, default=0.1, help="share of the steps with linear warmup")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay on the weight matrices")
    p.add_argument("--val-size", type=val_size, default=None,
                   help="held out from train to choose the best epoch: a fraction (< 1) or a number of examples "
                        "(default: 10%% of train, at most 2000; SST-2: at most 500 whole sentences)")
    p.add_argument("--dropout", type=probability, default=0.1,
                   help="dropout while fine-tuning (embeddings, residual branches, attention weights, classifier "
                        "input), whatever pre-training used: a short pre-training run underfits and is best without "
                        "dropout, while a small labelled set overfits and needs it")
    p.add_argument("--pooling", choices=BertClassifier.POOLINGS, default="cls",
                   help="the sentence vector the head reads: BERT's pooled [CLS] state, or the mean of the last layer "
                        "over the real tokens (what an MLM-only pre-training trained; see BertClassifier)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); no effect on CPU")
    p.add_argument("--result", default=None, help="result JSON (default: stage6_bert/results/<run name>.json; "
                                                  "<out-dir>/result.json for smoke runs)")
    return p.parse_args(argv)


def run_name(args) -> str:
    return f"glue_{args.task}" + ("_scratch" if args.from_scratch else "")


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out_dir = args.out_dir.format(name=run_name(args))
    out_dir = Path(args.out_dir)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE)
        if ckpt.get("kind") != "finetune" or "optimizer" not in ckpt:
            raise UserError(f"{out_dir / 'last.pt'} is not the last.pt of a fine-tuning run")
        if ckpt.get("task") != args.task:
            raise UserError(f"{out_dir / 'last.pt'} fine-tunes {ckpt.get('task')}, not {args.task}")
        args = argparse.Namespace(**{**vars(args), **ckpt["args"], **{k: getattr(args, k) for k in RESUMABLE}})
    task = get_task(args.task)
    log = get_logger(STAGE, out_dir / "finetune.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- the pre-trained encoder (or its random twin) and a new head
    pre_state, cfg, tok, pre = load_pretrained(args.checkpoint)
    cfg = dataclasses.replace(cfg, dropout=args.dropout, attn_dropout=args.dropout)
    model = BertClassifier(cfg, task.num_labels, pooling=args.pooling)
    if not args.from_scratch:
        try:
            model.load_backbone(pre_state)
        except RuntimeError as e:
            raise UserError(f"{args.checkpoint}: the weights do not fit its config ({str(e).splitlines()[0]})") from None
    model.to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_src, tok_dst = Path(args.checkpoint).parent / pre["tokenizer"], out_dir / "tokenizer.json"
    if tok_src.resolve() != tok_dst.resolve():
        shutil.copyfile(tok_src, tok_dst)   # best.pt names it: the fine-tuned model travels with its tokenizer
    max_len = min(args.max_len, cfg.max_position)
    if max_len < (3 if len(task.text) == 2 else 2):
        raise UserError(f"--max-len {args.max_len} leaves no room for the text after [CLS] and [SEP]")

    # ---- data: train minus a held-out validation split, dev (scored once at the end), test (predictions only)
    data_dir = resolve_data_dir(args.data_dir)
    splits = {s: load_split(args.task, data_dir, s) for s in SPLITS}
    if args.quick:
        splits = {s: v.head({"train": QUICK_TRAIN, "dev": QUICK_DEV, "test": QUICK_TEST}[s]) for s, v in splits.items()}
    n_all = len(splits["train"])
    n_val = val_count(args.val_size, n_all, task.phrases)
    if not 1 <= n_val < n_all:
        raise UserError(f"--val-size {args.val_size or '(default: 10%)'} holds out {n_val} of {n_all} training "
                        f"examples; keep at least one for validation and one for training")
    rng = random.Random(0)  # a fixed split, whatever --seed is: runs with different seeds are comparable
    if task.phrases:
        train_rows, val_rows = sentence_split(splits["train"].a, n_val, rng)
    else:
        order = list(range(n_all))
        rng.shuffle(order)
        train_rows, val_rows = order[n_val:], order[:n_val]
    train_all = encode(tok, splits["train"], max_len)
    data = {"train": take(train_all, train_rows), "val": take(train_all, val_rows),
            "dev": encode(tok, splits["dev"], max_len), "test": encode(tok, splits["test"], max_len)}
    n_train = len(data["train"])
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup = round(args.warmup_ratio * total_steps)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    autocast, scaler = autocast_for(device, args.amp)
    cut = sum(len(ids) >= max_len for enc in data.values() for ids in enc.ids)
    dropped = n_all - n_train - n_val  # SST-2: the phrases inside the held-out sentences
    log.info(f"GLUE {task.name}: {n_train:,} train / {n_val:,} val (from train"
             f"{f'; {dropped:,} phrases of val sentences left out' if dropped else ''}) / {len(data['dev']):,} dev / "
             f"{len(data['test']):,} test | {cut:,} examples reach --max-len {max_len} | "
             f"{'random init' if args.from_scratch else 'pre-trained ' + str(args.checkpoint)} | "
             f"{sum(p.numel() for p in model.parameters()):,} parameters | {total_steps} steps, {warmup} warmup | "
             f"choosing the epoch by val {task.headline}")

    state = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_step": 0, "best_epoch": 0, "train_seconds": 0.0,
             "history": {"train_loss": [], "val": []}}
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
    note_command(state, "stage6_bert/finetune.py", argv)  # the checkpoints keep it: results name the first

    def checkpoint(path: Path, with_optimizer: bool = True) -> None:
        obj = {"stage": STAGE, "kind": "finetune", "task": args.task, "config": cfg.to_dict(),
               "num_labels": task.num_labels, "pooling": args.pooling, "model": model.state_dict(),
               "tokenizer": "tokenizer.json",
               "args": vars(args), "state": state, "rng": rng_state(),
               "pretrained": None if args.from_scratch else {"checkpoint": str(args.checkpoint),
                                                             "step": pre.get("state", {}).get("step")}}
        if with_optimizer:
            obj["optimizer"] = optimizer.state_dict()
            obj["scaler"] = scaler.state_dict() if scaler is not None else None
        save_checkpoint(obj, path)

    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop
    train = data["train"]
    t_loop = time.time() - state["train_seconds"]
    try:
        model.train()
        while state["epoch"] < args.epochs and not stop["by"]:
            # fixed by (seed, epoch): resumable mid-epoch
            batches = length_batches([len(ids) for ids in train.ids], args.batch_size,
                                     random.Random(args.seed + state["epoch"]))
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
                if args.max_steps and state["step"] >= args.max_steps:
                    stop["by"] = "max_steps"
                if stop["by"]:
                    break
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(state["step"], args.lr, warmup, total_steps)
                ids, segments, mask, labels = make_batch(train, idx, device)
                with autocast:
                    _, loss = model(ids, token_type_ids=segments, attention_mask=mask, labels=labels)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}) or a larger --warmup-ratio"
                                    + (", or --no-amp" if args.amp and device.type == "cuda" else ""))
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                state["history"]["train_loss"].append([state["step"], round(loss.item(), 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.close()
            if stop["by"]:
                break
            # ---- end of an epoch: score the held-out validation split; keep the best epoch
            state["train_seconds"] = time.time() - t_loop
            val = compute_metrics(args.task, predict(model, data["val"], device), data["val"].labels)
            t_loop = time.time() - state["train_seconds"]
            state["epoch"] += 1
            state["batch"] = 0
            state["history"]["val"].append([state["step"], val[task.headline]])
            recent = [v for _, v in state["history"]["train_loss"][-len(batches):]]
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val "
                     + " | ".join(f"{k} {v:.4f}" for k, v in val.items()) + f" | {state['train_seconds']:.0f}s")
            if state["best"] is None or val[task.headline] > state["best"]:
                state["best"], state["best_step"], state["best_epoch"] = val[task.headline], state["step"], state["epoch"]
                checkpoint(out_dir / "best.pt", with_optimizer=False)
            checkpoint(out_dir / "last.pt")
    finally:
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        if stop["by"] == "max_steps" and state["best"] is None:
            # no epoch finished yet: best.pt holds these weights, and the first finished epoch replaces them
            state["best_step"] = state["step"]
            checkpoint(out_dir / "best.pt", with_optimizer=False)
        checkpoint(out_dir / "last.pt")
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python stage6_bert/finetune.py --task {args.task} --out-dir {out_dir}"
                 + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)

    # ---- final report: the epoch that was best on val, scored once on dev; predictions for test
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE)["model"])
    metrics = compute_metrics(args.task, predict(model, data["dev"], device), data["dev"].labels)
    pred_path = write_predictions(args.task, out_dir / f"{task.name}.tsv", splits["test"].index,
                                  predict(model, data["test"], device))
    chosen = (f"best epoch on val: {state['best_epoch']} (step {state['best_step']})" if state["best"] is not None
              else f"no epoch finished: the weights at step {state['best_step']}")
    log.info(f"{chosen} | dev "
             + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f" | test predictions: {pred_path}")
    smoke = args.quick or args.max_steps is not None
    result_path = Path(args.result) if args.result else (
        out_dir / "result.json" if smoke else REPO_ROOT / STAGE / "results" / f"{run_name(args)}.json")
    write_result(result_path, stage=STAGE, dataset=f"GLUE {task.name}" + (" (random init)" if args.from_scratch else ""),
                 split="dev", metrics=metrics, headline=task.headline, train_seconds=state["train_seconds"],
                 device=device, params=sum(p.numel() for p in model.parameters()),
                 command=state["commands"],
                 extra={"task": args.task, "wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "from_scratch": args.from_scratch,
                        "pretrained": None if args.from_scratch else str(args.checkpoint),
                        "pretrained_step": pre.get("state", {}).get("step"),
                        "epochs_run": state["epoch"], "steps": state["step"], "best_epoch": state["best_epoch"],
                        "best_step": state["best_step"], f"best_val_{task.headline}": state["best"],
                        "sizes": {k: len(v) for k, v in data.items()}, "max_len": max_len,
                        "test_predictions": str(pred_path), "config": cfg.to_dict(),
                        "hparams": {k: v for k, v in vars(args).items() if k not in RESUMABLE}})
    h = state["history"]
    panels = {"loss": {"train (per step)": tuple(zip(*h["train_loss"]))}}
    if h["val"]:
        panels[task.headline] = {"val (held out from train)": tuple(zip(*h["val"]))}
    plot_curves(result_path.with_suffix(".png"), panels,
                title=f"BERT on {task.name} ({'from scratch' if args.from_scratch else 'pre-trained'}): "
                      f"dev {task.headline} {metrics[task.headline]}")
    log.info(f"wrote {result_path} and its plot")


if __name__ == "__main__":
    run_cli(main)
