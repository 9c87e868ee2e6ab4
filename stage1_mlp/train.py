"""Train the Stage 1 bag-of-n-grams MLP on IMDb, SST-2 or AG News.

    python stage1_mlp/train.py                      # IMDb with the reference settings
    python stage1_mlp/train.py --dataset sst2
    python stage1_mlp/train.py --quick              # a one-minute smoke run on small slices (lr 0.01 unless --lr)
    python stage1_mlp/train.py --resume             # continue an interrupted run exactly

Steps: read the data -> carve a validation set out of train -> vocabulary on train only -> bags of
n-gram ids -> AdamW with a linearly decaying learning rate -> validate after each epoch, keep the
best, stop early when validation accuracy stops improving -> score the best model once on the test
split -> write the result file (<out-dir>/result.json + curves PNGs). Runs write under runs/ only; a reference run
(stage1_mlp/reference_runs.py) is published into stage1_mlp/results/ with `python scripts/publish.py
<out-dir>/result.json`.

Checkpoints (<out-dir>/last.pt after every epoch, on Ctrl-C, SIGTERM and --max-steps; best.pt for the
best validation accuracy) hold everything needed to resume: the batch order of every epoch comes
from (seed, epoch), and the random-number state is saved, so a resumed run repeats the losses an
uninterrupted run would have had. Loss, learning rate, gradient norm and texts/s go to TensorBoard
(`tensorboard --logdir runs`), and every validation to <out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage1_mlp/train.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, catch_stop_signals, get_device, get_logger, load_checkpoint,
                            merge_resumed_args, note_command, parse_with_quick_defaults, plot_curves, portable,
                            positive_float, positive_int, probability, reference_run_name, resolve_data_dir,
                            resolved_config, rng_state, run_cli, RunTracker, save_checkpoint, set_rng_state,
                            set_seed, write_result)
from stage1_mlp.data import (DATASETS, Bags, Vocab, dataset_info, load_split, phrase_groups, subsample,
                             train_val_split)
from stage1_mlp.evaluate import classification_metrics, plot_confusion, predict_bags
from stage1_mlp.model import BagOfNgramsMLP, MLPConfig
from stage1_mlp.reference_runs import REFERENCE_RUNS

STAGE, SCRIPT, KIND = "stage1_mlp", "stage1_mlp/train.py", "classifier"
QUICK_TRAIN, QUICK_EVAL = 2000, 500  # --quick: slices of the real data, enough to see the loss fall
QUICK_LR = 1e-2  # --quick without --lr: 2,000 texts are only ~16 steps an epoch, too few to learn at the full-run lr
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # flags a resumed run may change


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a bag-of-n-grams MLP text classifier (Stage 1).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="imdb", choices=list(DATASETS))
    add_common_args(p, epochs=6, batch_size=128, lr=2e-3, out_dir="runs/stage1_mlp/{dataset}")
    p.add_argument("--emb-dim", type=positive_int, default=32, help="n-gram embedding size")
    p.add_argument("--hidden-dim", type=positive_int, default=64, help="hidden layer width")
    p.add_argument("--n-layers", type=int, default=1, choices=range(0, 5), help="hidden layers (0 = linear model)")
    p.add_argument("--dropout", type=probability, default=0.3, help="dropout on the text vector and hidden layers")
    p.add_argument("--ngram-dropout", type=probability, default=0.0,
                   help="in training, drop each n-gram of a text with this probability (word dropout)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay")
    p.add_argument("--sentence-weight", type=positive_float, default=1.0,
                   help="SST-2 only: loss weight of a whole training sentence relative to one of its phrases")
    p.add_argument("--ngram", type=int, default=2, choices=[1, 2, 3], help="longest n-gram (2 = words + bigrams)")
    p.add_argument("--min-freq", type=positive_int, default=2, help="keep n-grams found in at least this many texts")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out for validation")
    p.add_argument("--patience", type=positive_int, default=2,
                   help="epochs without a better val accuracy before stopping early")
    p.add_argument("--result", default=None,
                   help="result JSON path (default: <out-dir>/result.json); a reference run's result is published "
                        "with `python scripts/publish.py <out-dir>/result.json`")
    args = parse_with_quick_defaults(p, argv, {"lr": QUICK_LR})
    args.out_dir = args.out_dir.format(dataset=args.dataset)
    if not 0.0 < args.val_fraction < 0.5:
        p.error(f"--val-fraction must be in (0, 0.5), got {args.val_fraction}")
    if args.weight_decay < 0:
        p.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.sentence_weight != 1.0 and not dataset_info(args.dataset).get("phrases"):
        p.error(f"--sentence-weight applies to data sets of sentences and their phrases (sst2), not {args.dataset}")
    return args


def resume_run(args: argparse.Namespace) -> tuple[argparse.Namespace, dict, Vocab]:
    """--resume: the interrupted run's last.pt and vocabulary from --out-dir, and the settings it started with
    (only the flags in RESUMABLE come from this command line)."""
    out_dir = Path(args.out_dir)
    ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE, kind=KIND)
    if ckpt["args"]["dataset"] != args.dataset:
        raise UserError(f"{out_dir / 'last.pt'} is a {ckpt['args']['dataset']} run, not {args.dataset}")
    vocab = Vocab.load(out_dir / "vocab.json")
    if vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"{out_dir / 'vocab.json'} does not belong to {out_dir / 'last.pt'} (fingerprints differ)")
    return merge_resumed_args(args, ckpt["args"], RESUMABLE), ckpt, vocab


def prepare_data(args, data_dir: Path, vocab: Vocab | None, log):
    """Read the splits, hold out validation, build (or reuse) the vocabulary, and encode everything as bags.

    Returns the bags of each split, the vocabulary, and a loss weight per training text.
    """
    info = dataset_info(args.dataset)
    texts, labels = load_split(args.dataset, data_dir, "train")
    test_texts, test_labels = load_split(args.dataset, data_dir, info["eval_split"])
    if args.quick:
        texts, labels = subsample(texts, labels, QUICK_TRAIN, args.seed)
        test_texts, test_labels = subsample(test_texts, test_labels, QUICK_EVAL, args.seed)
    groups = phrase_groups(texts) if info.get("phrases") else None  # SST-2: hold out whole sentences
    train_idx, val_idx = train_val_split(len(texts), args.val_fraction, args.seed, groups)
    weights = torch.ones(len(train_idx))                                  # (N_train,) loss weight per text
    kind = "texts"
    if groups is not None:
        # SST-2 mixes whole sentences with their phrases; dev holds whole sentences only. So validate on the
        # held-out sentences alone, count n-gram frequencies over sentences (below), and let --sentence-weight
        # give sentences more say in the loss than the many short phrases cut from them.
        kind = "sentences"
        is_sentence = torch.tensor([g == i for i, g in enumerate(groups)])  # (N,) row heads its own group
        val_idx = val_idx[is_sentence[val_idx]]
        weights[is_sentence[train_idx]] = args.sentence_weight
    train_texts = [texts[i] for i in train_idx.tolist()]
    train_labels = [labels[i] for i in train_idx.tolist()]
    log.info(f"{args.dataset}: {len(train_texts):,} train / {len(val_idx):,} val {kind} (held out from train) / "
             f"{len(test_texts):,} {info['eval_split']}")
    # Document frequency counts texts. In SST-2 a word of one sentence is also in each of that sentence's
    # phrases, so counted over phrases every word would pass --min-freq; counting over whole sentences
    # keeps only n-grams seen in >= min_freq *different* sentences, as for IMDb reviews.
    vocab_texts = train_texts if groups is None else [texts[i] for i in train_idx[is_sentence[train_idx]].tolist()]
    if vocab is None:
        progress = tqdm(vocab_texts, desc="vocabulary", leave=False, disable=None)
        vocab = Vocab.build(progress, args.ngram, args.min_freq)
    log.info(f"vocabulary: {len(vocab):,} n-grams (1..{args.ngram}-grams in >= {args.min_freq} train {kind})")
    splits = {
        "train": (train_texts, train_labels),
        "val": ([texts[i] for i in val_idx.tolist()], [labels[i] for i in val_idx.tolist()]),
        "test": (test_texts, test_labels),
    }
    bags = {k: Bags.from_texts(tqdm(t, desc=f"encode {k}", leave=False, disable=None), y, vocab)
            for k, (t, y) in splits.items()}
    return bags, vocab, weights


def save_run(path: Path, args, model: BagOfNgramsMLP, vocab: Vocab, state: dict, optimizer=None,
             scheduler=None) -> None:
    """Write a checkpoint: the model, its config and settings, the loop's state and every random-number state.
    last.pt also holds the optimizer and the schedule (`--resume` needs them); best.pt, the model to use, does not."""
    obj = {"stage": STAGE, "kind": KIND, "dataset": args.dataset, "config": model.config.to_dict(), "args": vars(args),
           "model": model.state_dict(), "state": state, "rng": rng_state(),
           "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}}
    if optimizer is not None:
        obj.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
    save_checkpoint(obj, path)


@torch.no_grad()
def validate(model: BagOfNgramsMLP, val: Bags, device: torch.device) -> dict[str, float]:
    """Mean loss, accuracy and macro-F1 on the validation bags; leaves the model in training mode."""
    m = classification_metrics(predict_bags(model, val, 1000, device), val.labels)
    model.train()
    return {k: m[k] for k in ("loss", "accuracy", "macro_f1")}


def stop_message(by: str, args, step: int) -> str:
    """What the log says when the loop stopped before the end (a signal or --max-steps), and how to continue."""
    last = Path(args.out_dir) / "last.pt"
    resume = f"python {SCRIPT} --dataset {args.dataset} --out-dir {args.out_dir} --resume"
    if by == "max_steps":
        return f"stopped at --max-steps {args.max_steps}; saved {last}. Continue with: {resume}"
    return f"stopped by {by} at step {step}; saved {last}. Continue with: {resume}"


def final_report(args, model: BagOfNgramsMLP, vocab: Vocab, bags: dict, state: dict, device: torch.device,
                 data_dir: Path, t_start: float, log) -> None:
    """Score the best checkpoint once on the held-out test split, then write the result file and its plots."""
    info = dataset_info(args.dataset)
    out_dir = Path(args.out_dir)
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind=KIND)["model"])
    split = info["eval_split"]
    m = classification_metrics(predict_bags(model, bags["test"], 1000, device), bags["test"].labels)
    log.info(f"{args.dataset} {split} (best epoch {state['best_epoch']}): accuracy {m['accuracy']:.4f} | "
             f"macro-F1 {m['macro_f1']:.4f} | train time {state['train_seconds']:.0f}s")
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    metrics = {k: m[k] for k in ("accuracy", "macro_f1", "loss")}
    metrics["best_val_accuracy"] = state["best_val_acc"]
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset=args.dataset, split=split, metrics=metrics, headline="accuracy",
                 train_seconds=state["train_seconds"], device=device, params=model.num_params(),
                 command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1),  # this process: data prep + training + test
                        "quick": args.quick, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
                        "steps": state["step"], "vocab_size": len(vocab), "config": model.config.to_dict(),
                        "hparams": resolved_config(args), "sizes": {k: len(b) for k, b in bags.items()},
                        "confusion": m["confusion"], "data_dir": portable(str(data_dir.resolve()))})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss": {"train (per step)": tuple(zip(*h["train_loss"])), "val": tuple(zip(*h["val_loss"]))},
        "accuracy": {"val": tuple(zip(*h["val_acc"]))},
    }, title=f"Stage 1 MLP on {args.dataset}: {split} accuracy {m['accuracy']:.4f}")
    plot_confusion(m["confusion"], info["classes"], result_path.with_name(result_path.stem + "_confusion.png"),
                   title=f"{args.dataset} {split}")
    log.info(f"wrote {result_path} and its plots" + (f" (reference run {run!r}: publish it with "
                                                      f"`python scripts/publish.py {result_path}`)" if run else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    ckpt, vocab = None, None
    if args.resume:  # the run continues with the settings it started with
        args, ckpt, vocab = resume_run(args)
    out_dir = Path(args.out_dir)
    log = get_logger(STAGE, out_dir / "train.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data
    data_dir = resolve_data_dir(args.data_dir)
    log.info(f"data directory: {data_dir}")
    bags, vocab, weights = prepare_data(args, data_dir, vocab, log)
    if not ckpt:
        out_dir.mkdir(parents=True, exist_ok=True)
        vocab.save(out_dir / "vocab.json")
    train = bags["train"]

    # ---- model, optimizer, schedule
    config = MLPConfig(vocab_size=len(vocab), n_classes=len(dataset_info(args.dataset)["classes"]),
                       emb_dim=args.emb_dim, hidden_dim=args.hidden_dim, n_layers=args.n_layers,
                       dropout=args.dropout, ngram_dropout=args.ngram_dropout)
    model = BagOfNgramsMLP(config).to(device)
    # fused AdamW updates all parameters in one kernel: ~15x faster here, where the embedding table is most of the model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    steps_per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    total_steps = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total_steps))
    log.info(f"model: {model.num_params():,} parameters, {config}")

    # ---- state that a checkpoint carries
    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best_val_acc": -1.0, "best_epoch": 0, "bad_epochs": 0,
             "done": False, "train_seconds": 0.0,
             "history": {"train_loss": [], "val_loss": [], "val_acc": []}}  # lists of [step, value]
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        log.info(f"resumed at epoch {state['epoch'] + 1}, batch {state['batch_in_epoch']}, step {state['step']}")
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])  # TensorBoard and metrics.jsonl

    # ---- the training loop
    # Ctrl-C (SIGINT) and `kill` (SIGTERM) only raise a flag; the loop stops between two steps and saves,
    # so a checkpoint never holds a half-applied update.
    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop

    model.train()
    t_loop = time.time() - state["train_seconds"]
    try:
        while not state["done"] and state["epoch"] < args.epochs and not stop["by"]:
            epoch = state["epoch"]
            # the order of an epoch depends only on (seed, epoch), so a resumed run sees the same batches
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
            batches = order.split(args.batch_size)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", initial=state["batch_in_epoch"],
                       total=len(batches), leave=False, disable=None)
            for index in batches[state["batch_in_epoch"]:]:
                t_step = time.time()
                ids, offsets, labels = (t.to(device) for t in train.batch(index))
                w = weights[index].to(device)             # (B,) all ones except SST-2 sentences
                logits = model(ids, offsets)              # (B, n_classes)
                # softmax + negative log-likelihood in one stable op, per text, then a weighted mean
                loss = (F.cross_entropy(logits, labels, reduction="none") * w).sum() / w.sum()
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
                lr = scheduler.get_last_lr()[0]  # this step's: scheduler.step() sets the next one's
                optimizer.step()
                scheduler.step()
                state["step"] += 1
                state["batch_in_epoch"] += 1
                state["history"]["train_loss"].append([state["step"], round(loss.item(), 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                tracker.train(state["step"], loss=loss.item(), lr=lr, grad_norm=grad_norm,
                              examples_per_second=len(index) / (time.time() - t_step))
                if args.max_steps and state["step"] >= args.max_steps:
                    stop["by"] = "max_steps"
                if stop["by"]:
                    break
            bar.close()
            if stop["by"]:
                break
            # ---- end of epoch: validate, keep the best, maybe stop early
            val = validate(model, bags["val"], device)  # {"loss", "accuracy", "macro_f1"}
            state["history"]["val_loss"].append([state["step"], val["loss"]])
            state["history"]["val_acc"].append([state["step"], val["accuracy"]])
            recent = [v for _, v in state["history"]["train_loss"][-len(batches):]]
            log.info(f"epoch {epoch + 1}: train loss {sum(recent) / len(recent):.4f} | val loss {val['loss']:.4f} "
                     f"| val acc {val['accuracy']:.4f} | {time.time() - t_loop:.0f}s")
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            state["train_seconds"] = time.time() - t_loop
            tracker.evaluation(state["step"], "val", state["train_seconds"], **val)
            if val["accuracy"] > state["best_val_acc"]:
                state["best_val_acc"], state["bad_epochs"], state["best_epoch"] = val["accuracy"], 0, epoch + 1
                save_run(out_dir / "best.pt", args, model, vocab, state)
            else:
                state["bad_epochs"] += 1
                if state["bad_epochs"] >= args.patience:
                    log.info(f"early stop: no better val accuracy for {args.patience} epochs")
                    state["done"] = True
            save_run(out_dir / "last.pt", args, model, vocab, state, optimizer, scheduler)
    finally:
        tracker.close()
        restore_signals()  # leave the caller (a shell, a notebook kernel) as we found it
    state["train_seconds"] = time.time() - t_loop
    if stop["by"]:
        save_run(out_dir / "last.pt", args, model, vocab, state, optimizer, scheduler)
        log.info(stop_message(stop["by"], args, state["step"]))
        if stop["by"] != "max_steps":
            sys.exit(130)
    if state["history"]["val_acc"]:  # else no epoch finished, so there is no best model to report on yet
        final_report(args, model, vocab, bags, state, device, data_dir, t_start, log)


if __name__ == "__main__":
    run_cli(main)
