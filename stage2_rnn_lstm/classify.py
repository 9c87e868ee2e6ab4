"""Classify SST-2 sentences as positive or negative with a recurrent network, trained from scratch on the labels.

    python stage2_rnn_lstm/classify.py                         # the LSTM reference run (minutes on 2 CPU cores)
    python stage2_rnn_lstm/classify.py --model-type gru        # the same with a GRU (or rnn)
    python stage2_rnn_lstm/classify.py --impl scratch          # the hand-written cells: the same function, slower
    python stage2_rnn_lstm/classify.py --quick                 # a smoke run on small slices
    python stage2_rnn_lstm/classify.py --resume                # continue an interrupted run exactly

The language model of train.py predicts a token at every position. Here the network reads a whole sentence and only
one output counts: the one at its last word, which has read all of it. A linear layer turns that vector into two class
scores (`RNNClassifier` in model.py), and cross-entropy against the sentence's label trains everything, the word
vectors included: no pre-training and no pre-trained word vectors, so this is the baseline that the later stages'
pre-trained models are measured against.

Honest numbers. GLUE's test labels are private, so dev is the test set here: it is scored once, at the end, with the
epoch that was best on a validation split held out from train. SST-2's train set holds every phrase of each sentence's
parse tree as a row of its own, so a random held-out row is nearly always inside a training row and its score
measures memory. Validation is --val-size whole sentences instead, and every phrase of them is dropped from train
(`sentence_split` in data.py).

--impl defaults to torch (nn.LSTM, nn.GRU, nn.RNN) here, as in train.py: its loop over time steps runs in C++ and is
several times faster on a CPU than the Python loop of the hand-written cells. The parity tests
(tests/test_stage2_model.py) show that both compute the same function from the same weights, so the choice changes the
speed, not what is learnt; a checkpoint from one loads into the other.

Outputs in --out-dir (default runs/stage2_rnn_lstm/sst2_classifier/, with _rnn or _gru appended for those cells):
best.pt (the epoch best on validation, what predict.py's load_predictor reads), last.pt (after every epoch, on Ctrl-C,
SIGTERM and --max-steps, to --resume exactly), vocab.json, classify.log, and result.json with its plot;
`python scripts/publish.py <out-dir>/result.json` publishes a reference run's (reference_runs.py) into results/.
The model is `RNNClassifier` (model.py), the data split `sst2_splits` (data.py). Loss, learning rate, gradient norm
and examples/s go to TensorBoard (`tensorboard --logdir runs`), and every validation to <out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage2_rnn_lstm/classify.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, catch_stop_signals, get_device, get_logger, load_checkpoint,
                            merge_resumed_args, note_command, plot_curves, portable, positive_float, positive_int,
                            probability, reference_run_name, resolve_data_dir, resolved_config, rng_state, run_cli,
                            RunTracker, save_checkpoint, set_rng_state, set_seed, write_result)
from stage2_rnn_lstm.data import SentenceVocab, length_batches, make_batch, sst2_splits, vocab_beside
from stage2_rnn_lstm.model import ClassifierConfig, RNNClassifier
from stage2_rnn_lstm.predict import predict_proba
from stage2_rnn_lstm.reference_runs import CLASSIFIER_CHECKPOINT, REFERENCE_RUNS

STAGE = "stage2_rnn_lstm"
SCRIPT = "stage2_rnn_lstm/classify.py"
KIND = "classifier"                        # what its checkpoints hold (scripts.common.KINDS)
QUICK_TRAIN, QUICK_DEV = 2_000, 200        # --quick: rows of train and dev
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # flags a resumed run may change


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a recurrent SST-2 sentence classifier (Stage 2).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, epochs=4, batch_size=64, lr=2e-3, out_dir=None)
    p.add_argument("--model-type", "--model_type", choices=["rnn", "lstm", "gru"], default="lstm",
                   help="the recurrent cell (without --out-dir, a run writes to runs/stage2_rnn_lstm/sst2_classifier, "
                        "rnn and gru runs to sst2_classifier_rnn / _gru)")
    p.add_argument("--impl", choices=["scratch", "torch"], default="torch",
                   help="hand-written cells (model.py) or nn.RNN/nn.LSTM/nn.GRU: the same function, torch's is faster")
    p.add_argument("--emb-dim", type=positive_int, default=128, help="word vector size")
    p.add_argument("--hidden-dim", type=positive_int, default=256, help="hidden state size of each layer")
    p.add_argument("--n-layers", type=positive_int, default=1, help="stacked recurrent layers")
    p.add_argument("--dropout", type=probability, default=0.5,
                   help="on word vectors, between layers, on the sentence vector")
    p.add_argument("--min-freq", type=positive_int, default=2,
                   help="a word must be in this many training rows to get its own vector (else <unk>)")
    p.add_argument("--val-size", type=positive_int, default=None,
                   help="whole training sentences held out to choose the best epoch "
                        "(default: 500, at most 10%% of train)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay")
    p.add_argument("--result", default=None,
                   help="result JSON path (default: <out-dir>/result.json; publish a reference run's with "
                        "`python scripts/publish.py <out-dir>/result.json`)")
    args = p.parse_args(argv)
    if args.weight_decay < 0:
        p.error("--weight-decay must be >= 0")
    if args.out_dir is None:  # an rnn or gru run keeps the LSTM's checkpoints
        args.out_dir = str(Path(CLASSIFIER_CHECKPOINT).parent) + ("" if args.model_type == "lstm" else
                                                                  f"_{args.model_type}")
    return args


def lr_at(step: int, peak: float, total_steps: int) -> float:
    """Cosine decay from --lr to --lr / 10 at the last step (no warmup: Adam on a one-layer network starts fine)."""
    progress = min(1.0, step / max(1, total_steps))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def scores(pred: list[int], labels: list[int]) -> dict:
    """Accuracy, and macro-F1: the F1 of each class, averaged, so a model that favours one class is not flattered."""
    acc = sum(p == y for p, y in zip(pred, labels)) / len(labels)
    f1s = []
    for c in (0, 1):
        tp = sum(p == c and y == c for p, y in zip(pred, labels))
        fp = sum(p == c and y != c for p, y in zip(pred, labels))
        fn = sum(p != c and y == c for p, y in zip(pred, labels))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return {"accuracy": round(acc, 4), "macro_f1": round(sum(f1s) / 2, 4)}


def evaluate(model: RNNClassifier, seqs: list[list[int]], labels: list[int], device) -> dict:
    return scores(predict_proba(model, seqs, device).argmax(-1).tolist(), labels)


def load_resume_point(args, out_dir: Path) -> dict:
    """<out-dir>/last.pt, checked to be a classify.py run of this cell that --resume can continue."""
    ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE, kind=KIND)
    if "optimizer" not in ckpt:
        raise UserError(f"{out_dir / 'last.pt'} is not the last.pt of a classify.py run")
    if ckpt["args"]["model_type"] != args.model_type:
        raise UserError(f"{out_dir / 'last.pt'} is a {ckpt['args']['model_type']} run, not {args.model_type}")
    return ckpt


def prepare_data(args, data_dir: Path, out_dir: Path, ckpt: dict | None, log):
    """SST-2's train, val and dev as id lists and labels (`sst2_splits`), and the vocabulary: saved as
    <out-dir>/vocab.json, or, for a resumed run (`ckpt`), read back from there and checked against the checkpoint."""
    vocab = vocab_beside(out_dir / "last.pt", ckpt, SentenceVocab) if ckpt else None
    data, vocab, summary = sst2_splits(data_dir, args.val_size, args.min_freq, vocab,
                                       (QUICK_TRAIN, QUICK_DEV) if args.quick else None)
    log.info(summary)
    if not ckpt:
        out_dir.mkdir(parents=True, exist_ok=True)
        vocab.save(out_dir / "vocab.json")
    return data, vocab


def build_model(args, vocab_size: int, device: torch.device):
    """The model config from the flags, the classifier on `device`, and its optimizer."""
    config = ClassifierConfig(vocab_size=vocab_size, model_type=args.model_type, emb_dim=args.emb_dim,
                              hidden_dim=args.hidden_dim, n_layers=args.n_layers, dropout=args.dropout, impl=args.impl)
    model = RNNClassifier(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    return config, model, optimizer


def save_run(path: Path, args, model: RNNClassifier, vocab: SentenceVocab, state: dict, optimizer=None) -> None:
    """A checkpoint: weights, flags, progress and random-number states; with the optimizer's state (last.pt) one
    that --resume continues exactly, without it (best.pt) one for predict.py."""
    obj = {"stage": STAGE, "kind": KIND, "dataset": "sst2", "config": model.config.to_dict(), "args": vars(args),
           "model": model.state_dict(), "state": state, "rng": rng_state(),
           "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    save_checkpoint(obj, path)


def final_report(args, model: RNNClassifier, vocab: SentenceVocab, data: dict, state: dict, device,
                 data_dir: Path, t_start: float, log) -> None:
    """Score the epoch that was best on val once on dev; write the result file and its curves."""
    out_dir = Path(args.out_dir)
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind=KIND)["model"])
    metrics = evaluate(model, *data["dev"], device)
    chosen = (f"best epoch on val: {state['best_epoch']} (step {state['best_step']})" if state["best_acc"] is not None
              else f"no epoch finished: the weights at step {state['best_step']}")
    log.info(f"{chosen} | dev accuracy {metrics['accuracy']:.4f} | dev macro-F1 {metrics['macro_f1']:.4f}")
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset="sst2", split="dev", metrics=metrics, headline="accuracy",
                 train_seconds=state["train_seconds"], device=device, params=model.num_params(),
                 command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"task": "sst2", "wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "epochs_run": state["epoch"], "steps": state["step"], "best_epoch": state["best_epoch"],
                        "best_step": state["best_step"], "best_val_accuracy": state["best_acc"],
                        "sizes": {k: len(v[1]) for k, v in data.items()}, "vocab_size": len(vocab),
                        "config": model.config.to_dict(), "hparams": resolved_config(args),
                        "data_dir": portable(str(data_dir))})
    h = state["history"]
    panels = {"loss": {"train (per step)": tuple(zip(*h["train_loss"]))}}
    if h["val_accuracy"]:
        panels["accuracy"] = {"val (held out from train)": tuple(zip(*h["val_accuracy"]))}
    plot_curves(result_path.with_suffix(".png"), panels,
                title=f"{args.model_type.upper()} on SST-2, from scratch: dev accuracy {metrics['accuracy']}")
    log.info(f"wrote {result_path} and its plot" + (f" (reference run {run}: publish it with "
                                                   f"`python scripts/publish.py {result_path}`)" if run else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    ckpt = load_resume_point(args, out_dir) if args.resume else None
    if ckpt:
        args = merge_resumed_args(args, ckpt["args"], RESUMABLE)
    log = get_logger(STAGE, out_dir / "classify.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data
    data_dir = resolve_data_dir(args.data_dir)
    data, vocab = prepare_data(args, data_dir, out_dir, ckpt, log)
    seqs, labels = data["train"]
    steps_per_epoch = math.ceil(len(seqs) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch

    # ---- model and optimizer
    config, model, optimizer = build_model(args, len(vocab), device)
    log.info(f"model: {model.num_params():,} parameters, {config}")
    log.info(f"{steps_per_epoch} steps per epoch (batches of {args.batch_size} sentences of similar length), "
             f"{total_steps} in all")

    state = {"epoch": 0, "batch": 0, "step": 0, "best_acc": None, "best_step": 0, "best_epoch": 0,
             "train_seconds": 0.0, "history": {"train_loss": [], "val_accuracy": []}}  # lists of [step, value]
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        log.info(f"resumed at epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}")
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])  # TensorBoard and metrics.jsonl

    # ---- the training loop (Ctrl-C and SIGTERM raise a flag; the loop stops between steps and saves)
    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop

    model.train()
    t_loop = time.time() - state["train_seconds"]
    try:
        while state["epoch"] < args.epochs and not stop["by"]:
            # the batches are fixed by (seed, epoch), so a run resumed mid-epoch sees the same ones
            batches = length_batches([len(s) for s in seqs], args.batch_size, random.Random(args.seed + state["epoch"]))
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
                t_step = time.time()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(state["step"], args.lr, total_steps)
                ids, lengths = make_batch([seqs[i] for i in idx], config.pad_id)          # (B, T), (B,)
                y = torch.tensor([labels[i] for i in idx], device=device)                # (B,)
                loss = F.cross_entropy(model(ids.to(device), lengths.to(device)), y)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}) or --clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                state["history"]["train_loss"].append([state["step"], round(loss.item(), 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                tracker.train(state["step"], loss=loss.item(), lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                              examples_per_second=len(idx) / (time.time() - t_step))
                if args.max_steps and state["step"] >= args.max_steps:
                    stop["by"] = "max_steps"
                if stop["by"]:
                    break
            bar.close()
            if stop["by"]:
                break
            # ---- end of an epoch: score the held-out validation sentences, keep the best epoch
            state["train_seconds"] = time.time() - t_loop
            val = evaluate(model, *data["val"], device)
            t_loop = time.time() - state["train_seconds"]  # validation time is not training time
            state["epoch"] += 1
            state["batch"] = 0
            state["history"]["val_accuracy"].append([state["step"], val["accuracy"]])
            recent = [v for _, v in state["history"]["train_loss"][-len(batches):]]
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val accuracy "
                     f"{val['accuracy']:.4f} | val macro-F1 {val['macro_f1']:.4f} | {state['train_seconds']:.0f}s")
            tracker.evaluation(state["step"], "val", state["train_seconds"], **val)  # accuracy, macro_f1
            if state["best_acc"] is None or val["accuracy"] > state["best_acc"]:
                state.update(best_acc=val["accuracy"], best_step=state["step"], best_epoch=state["epoch"])
                save_run(out_dir / "best.pt", args, model, vocab, state)
            save_run(out_dir / "last.pt", args, model, vocab, state, optimizer)
    finally:
        tracker.close()
        restore_signals()
    state["train_seconds"] = time.time() - t_loop
    if stop["by"]:
        if state["best_acc"] is None:
            # no epoch finished yet: best.pt holds these weights (a --max-steps run reports them), and the first
            # finished epoch replaces them
            state["best_step"] = state["step"]
            save_run(out_dir / "best.pt", args, model, vocab, state)
        save_run(out_dir / "last.pt", args, model, vocab, state, optimizer)
        resume = f"python {SCRIPT} --model-type {args.model_type} --out-dir {out_dir}" \
                 + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " --resume"
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. "
                 f"Continue with: {resume}")
        if stop["by"] != "max_steps":
            sys.exit(130)
    final_report(args, model, vocab, data, state, device, data_dir, t_start, log)


if __name__ == "__main__":
    run_cli(main)
