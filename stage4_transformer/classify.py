"""Classify SST-2 sentences (negative / positive) with this stage's Transformer encoder, trained from scratch.

    python stage4_transformer/classify.py                 # train on SST-2 train, choose the epoch on val, score dev
    python stage4_transformer/classify.py --pool first    # read the <bos> token's vector ([CLS]-style), not the mean
    python stage4_transformer/classify.py --quick         # a smoke run on small slices
    python stage4_transformer/classify.py --resume        # continue an interrupted run exactly

The encoder is the translator's, block for block (model.py's `Embedding`, `EncoderLayer` and `padding_mask`): token
ids -> embeddings * sqrt(d) + positions -> [self-attention, feed-forward] x N. Only the top is new: one vector per
sentence, dropout, and a linear layer to the two classes, trained with cross-entropy (model.py's
`TransformerClassifier`). Tokens and vocabulary are data.py's (`tokenize`, `Vocab`, built on the training rows only);
batches hold sentences of similar length (`sentence_batches`), because SST-2 mixes 3-token phrases with 50-token
sentences and a batch is padded to its longest one. The learning rate warms up linearly, then falls along a cosine to
lr/10 (train.py's cosine).

Honest numbers. GLUE's test labels are private, so dev (872 sentences) is the test set here: it is scored once, at
the end, with the epoch that was best on a validation split held out from train. SST-2's train set is every phrase of
the parse trees of about 6,900 sentences, so a random held-out row would nearly always be a phrase of another training
row, and its score would measure memory. data.py's `sentence_split` holds out --val-size whole sentences (rows that no
other row contains) and drops every training row that is a phrase inside one of them: validation then looks like dev.

Outputs in --out-dir (default runs/stage4_transformer/sst2_classifier/): best.pt (the chosen epoch; what
predict.py's `load_predictor` reads), last.pt (to --resume exactly; also written on Ctrl-C and SIGTERM), vocab.json,
train.log, and the result file result.json with its plot. `python scripts/publish.py <out-dir>/result.json` copies a
reference run's result into stage4_transformer/results/ (reference_runs.py declares them). Loss, learning rate,
gradient norm and examples/s go to TensorBoard (`tensorboard --logdir runs`), and every validation to
<out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage4_transformer/classify.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, catch_stop_signals, get_device, get_logger, load_checkpoint,
                            merge_resumed_args, note_command, plot_curves, portable, positive_float, positive_int,
                            probability, reference_run_name, resolve_data_dir, resolved_config, rng_state, run_cli,
                            RunTracker, save_checkpoint, set_rng_state, set_seed, write_result)
from stage4_transformer.data import Vocab, encode_sentences, pad, sentence_batches, sst2_splits, vocab_beside
from stage4_transformer.evaluate import score_classifier
from stage4_transformer.model import ClassifierConfig, TransformerClassifier
from stage4_transformer.reference_runs import REFERENCE_RUNS

STAGE = "stage4_transformer"
SCRIPT = "stage4_transformer/classify.py"
QUICK_TRAIN, QUICK_DEV = 2_000, 200
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # from the command line on --resume


def lr_at(step: int, args, total_steps: int) -> float:
    """Linear warmup to --lr over --warmup-steps, then a cosine down to lr/10 at the last step (train.py's cosine):
    large steps while the randomly initialised network is far from any solution, small ones to settle at the end."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a Transformer-encoder sentence classifier on SST-2 (Stage 4).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, epochs=6, batch_size=64, lr=1e-3, out_dir="runs/stage4_transformer/sst2_classifier")
    p.add_argument("--d-model", type=positive_int, default=128)
    p.add_argument("--n-heads", type=positive_int, default=4)
    p.add_argument("--layers", type=positive_int, default=2, help="encoder layers")
    p.add_argument("--d-ff", type=positive_int, default=512, help="feed-forward hidden size")
    p.add_argument("--dropout", type=probability, default=0.1)
    p.add_argument("--norm", choices=["pre", "post"], default="pre",
                   help="LayerNorm before (pre) or after (post) each sub-layer")
    p.add_argument("--pos", choices=["sinusoidal", "learned"], default="sinusoidal", help="positional encoding")
    p.add_argument("--pool", choices=["mean", "first"], default="mean",
                   help="the sentence vector: mean over real tokens, or the first (<bos>) token's, [CLS]-style")
    p.add_argument("--min-freq", type=positive_int, default=2, help="rarer training words become <unk>")
    p.add_argument("--max-len", type=positive_int, default=128, help="tokens per sentence; longer ones are cut")
    p.add_argument("--val-size", type=positive_int, default=500,
                   help="whole training sentences held out to choose the best epoch (at most a tenth of train)")
    p.add_argument("--warmup-steps", type=positive_int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json; publish it with "
                                                  "`python scripts/publish.py <out-dir>/result.json`)")
    args = p.parse_args(argv)
    if args.d_model % args.n_heads:
        p.error(f"--d-model {args.d_model} must be divisible by --n-heads {args.n_heads}")
    if args.max_len < 3:
        p.error(f"--max-len must leave room for <bos>, a word and <eos> (at least 3), got {args.max_len}")
    if not 0 <= args.weight_decay < 1:
        p.error(f"--weight-decay must be in [0, 1), got {args.weight_decay}")
    return args


def resume_checkpoint(out_dir: Path) -> dict:
    """<out-dir>/last.pt of an earlier classify.py run (best.pt has no optimizer state, so it cannot continue)."""
    ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE, kind="classifier")
    if ckpt.get("kind") != "classifier" or "optimizer" not in ckpt:
        raise UserError(f"{out_dir / 'last.pt'} is not the last.pt of a classify.py run")
    return ckpt


def prepare_data(args, data_dir: Path, out_dir: Path, ckpt: dict | None) -> tuple[dict, Vocab, dict]:
    """SST-2 as {"train", "val", "dev"} -> (encoded sentences, labels), the vocabulary (built on train, or the resumed
    run's), and the split sizes for the result file."""
    splits, dropped = sst2_splits(data_dir, args.val_size, *((QUICK_TRAIN, QUICK_DEV) if args.quick else ()))
    if ckpt:
        vocab = vocab_beside(out_dir / "last.pt", ckpt)
    else:
        vocab = Vocab.build([t.lower() for t in splits["train"][0]], args.min_freq)
        vocab.save(out_dir / "vocab.json")
    data = {k: (encode_sentences(vocab, texts, args.max_len), labels) for k, (texts, labels) in splits.items()}
    sizes = {k: len(labels) for k, (_, labels) in splits.items()} | {"train_phrases_of_val_dropped": dropped}
    return data, vocab, sizes


def build_model(args, vocab: Vocab, device) -> tuple[TransformerClassifier, torch.optim.Optimizer]:
    config = ClassifierConfig(vocab_size=len(vocab), d_model=args.d_model, n_heads=args.n_heads, n_layers=args.layers,
                              d_ff=args.d_ff, dropout=args.dropout, norm=args.norm, pos=args.pos, pool=args.pool,
                              max_len=args.max_len)
    model = TransformerClassifier(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    return model, optimizer


def new_state() -> dict:
    """A fresh run's progress: where the loop is, the best validation accuracy so far (and its epoch), the curves."""
    return {"epoch": 0, "batch": 0, "step": 0, "best_acc": None, "best_step": 0, "best_epoch": 0,
            "train_seconds": 0.0, "history": {"train_loss": [], "val_accuracy": []}}


def restore_run(ckpt: dict, model, optimizer, log) -> dict:
    """Put last.pt's weights, optimizer and random state back; return its progress."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    state = ckpt["state"]
    log.info(f"resumed at epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}")
    return state


def save_run(path: Path, model, optimizer, args, state: dict, vocab: Vocab) -> None:
    """A checkpoint of the run: weights, settings, progress and random state; with `optimizer`, enough to --resume."""
    obj = {"stage": STAGE, "kind": "classifier", "dataset": "sst2", "config": model.cfg.to_dict(), "args": vars(args),
           "model": model.state_dict(), "state": state, "rng": rng_state(),
           "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    save_checkpoint(obj, path)


def final_report(args, model, data: dict, vocab: Vocab, sizes: dict, state: dict, out_dir: Path, data_dir: Path,
                 device, t_start: float, log) -> None:
    """best.pt (the epoch that was best on val) scored once on dev -> <out-dir>/result.json (or --result), plot."""
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind="classifier")["model"])
    best_val = state["best_acc"]
    if best_val is None:  # a --max-steps run that finished no epoch: the val accuracy of the weights it stopped with
        best_val = score_classifier(model, *data["val"], device)["accuracy"]
    dev = score_classifier(model, *data["dev"], device)
    metrics = {**dev, "best_val_accuracy": best_val}
    chosen = (f"best epoch on val: {state['best_epoch']} (step {state['best_step']})" if state["best_acc"] is not None
              else f"no epoch finished: the weights at step {state['best_step']}")
    log.info(f"{chosen} | dev accuracy {dev['accuracy']:.4f} | macro-F1 {dev['macro_f1']:.4f}")
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset="sst2", split="dev", metrics=metrics, headline="accuracy",
                 train_seconds=state["train_seconds"], device=device, params=model.num_params(),
                 command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick, "model": "Transformer "
                        f"encoder ({args.layers} layers, d_model {args.d_model}), {args.pool} pooling, from scratch",
                        "epochs_run": state["epoch"], "steps": state["step"], "best_epoch": state["best_epoch"],
                        "best_step": state["best_step"], "vocab_size": len(vocab), "sizes": sizes,
                        "config": model.cfg.to_dict(), "data_dir": portable(str(data_dir)),
                        "hparams": resolved_config(args)})
    h = state["history"]
    panels = {"loss": {"train (per step)": tuple(zip(*h["train_loss"]))}}
    if h["val_accuracy"]:
        panels["accuracy"] = {"val (whole sentences held out from train)": tuple(zip(*h["val_accuracy"]))}
    plot_curves(result_path.with_suffix(".png"), panels,
                title=f"Transformer encoder on SST-2 ({args.pool} pooling): dev accuracy {dev['accuracy']}")
    log.info(f"wrote {result_path} and its plot" + (f" (the reference run {run})" if run else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    ckpt = resume_checkpoint(out_dir) if args.resume else None
    if ckpt:
        args = merge_resumed_args(args, ckpt["args"], RESUMABLE)
    log = get_logger(STAGE, out_dir / "train.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data: train minus whole validation sentences (and their phrases); dev, scored once at the end
    data_dir = resolve_data_dir(args.data_dir)
    data, vocab, sizes = prepare_data(args, data_dir, out_dir, ckpt)
    train_seqs, train_labels = data["train"]
    steps_per_epoch = len(sentence_batches(train_seqs, args.batch_size, args.seed))
    total_steps = args.epochs * steps_per_epoch

    # ---- model and optimizer
    model, optimizer = build_model(args, vocab, device)
    log.info(f"SST-2: {sizes['train']:,} train / {sizes['val']:,} val sentences (from train; "
             f"{sizes['train_phrases_of_val_dropped']:,} phrases of them left out of train) / {sizes['dev']:,} dev | "
             f"vocabulary {len(vocab):,} (min freq {args.min_freq}) | {model.num_params():,} parameters | "
             f"{steps_per_epoch} steps per epoch, {total_steps} in all")
    state = restore_run(ckpt, model, optimizer, log) if ckpt else new_state()
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])  # TensorBoard and metrics.jsonl

    # ---- the loop: one optimizer step per batch; at each epoch's end, accuracy on val picks best.pt
    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop
    t_loop = time.time() - state["train_seconds"]
    try:
        model.train()
        while state["epoch"] < args.epochs and not stop["by"]:
            batches = sentence_batches(train_seqs, args.batch_size, args.seed + state["epoch"])  # by (seed, epoch)
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
                t_step = time.time()
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(state["step"], args, total_steps)
                ids = pad([train_seqs[i] for i in idx]).to(device)                       # (B, T)
                y = torch.tensor([train_labels[i] for i in idx], device=device)          # (B,)
                loss = F.cross_entropy(model(ids), y)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}) or a longer --warmup-steps")
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
            # ---- end of an epoch: accuracy on the held-out sentences; keep the best epoch
            state["train_seconds"] = time.time() - t_loop
            val = score_classifier(model, *data["val"], device)
            t_loop = time.time() - state["train_seconds"]  # validation time is not training time
            state["epoch"] += 1
            state["batch"] = 0
            state["history"]["val_accuracy"].append([state["step"], val["accuracy"]])
            recent = [v for _, v in state["history"]["train_loss"][-len(batches):]]
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val accuracy "
                     f"{val['accuracy']:.4f} | macro-F1 {val['macro_f1']:.4f} | {state['train_seconds']:.0f}s")
            tracker.evaluation(state["step"], "val", state["train_seconds"], **val)  # accuracy, macro_f1
            if state["best_acc"] is None or val["accuracy"] > state["best_acc"]:
                state.update(best_acc=val["accuracy"], best_step=state["step"], best_epoch=state["epoch"])
                save_run(out_dir / "best.pt", model, None, args, state, vocab)
            save_run(out_dir / "last.pt", model, optimizer, args, state, vocab)
    finally:
        tracker.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        if state["best_acc"] is None:
            # no epoch finished yet: best.pt holds these weights, and the first finished epoch replaces them
            state["best_step"] = state["step"]
            save_run(out_dir / "best.pt", model, None, args, state, vocab)
        save_run(out_dir / "last.pt", model, optimizer, args, state, vocab)
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python {SCRIPT} --out-dir {out_dir}" + (f" --data-dir {args.data_dir}" if args.data_dir else "")
                 + " --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)
    final_report(args, model, data, vocab, sizes, state, out_dir, data_dir, device, t_start, log)


if __name__ == "__main__":
    run_cli(main)
