"""Fine-tune a pre-trained GPT to classify SST-2 sentences: the "pre-train, then fine-tune" step.

    python stage5_gpt/finetune.py                    # fine-tunes the WikiText-2 reference run's GPT, GPT_CHECKPOINT:
                                                     # runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt
    python stage5_gpt/finetune.py --from-scratch     # the same model with random weights
    python stage5_gpt/finetune.py --freeze           # train the head only
    python stage5_gpt/finetune.py --checkpoint runs/stage5_gpt/tiny_shakespeare/best.pt   # another pre-trained GPT

The sentence is read by the GPT as it is; a linear head (model.GPTClassifier) reads the hidden state of its last token
(with causal attention, the only position that has seen the whole sentence) and gives two logits, negative and
positive (Radford et al. 2018 put a classifier on the last token in the same way). The whole network is trained with a
small learning rate, so the pre-trained weights move only a little. --from-scratch builds the same network with random
weights and the same tokenizer: the difference in dev accuracy is what pre-training bought. --freeze trains only the
head (a linear probe of what pre-training learnt).

The best epoch is chosen on a validation split held out from the training sentences (--val-size of them), never on
dev: dev is the test set here (GLUE's test labels are not public), and choosing on it would flatter the figure.
SST-2's training rows are the phrases of about 6,900 sentences, so a random held-out row is nearly always a phrase of
a training row; `data.sentence_split` holds out whole sentences instead and drops their phrases from train, so that
validation looks like dev. `predict.load_predictor` turns the best.pt this script writes into a function
texts -> probabilities. Loss, learning rate, gradient norm and examples/s go to TensorBoard
(`tensorboard --logdir runs`), and every validation to <out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import functools
import math
import random
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/finetune.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, catch_stop_signals, get_device, get_logger, load_checkpoint,
                            merge_resumed_args, note_command, plot_curves, portable, positive_float, positive_int,
                            probability, reference_command, reference_run_name, resolve_data_dir, resolved_config,
                            rng_state, run_cli, RunTracker, save_checkpoint, set_rng_state, set_seed, write_result)
from stage5_gpt.data import encode_sentences, length_batches, load_sst2, make_batch, pad_id_of, sentence_split
from stage5_gpt.evaluate import load_model
from stage5_gpt.model import GPT, GPTClassifier, GPTConfig
from stage5_gpt.reference_runs import GPT_CHECKPOINT, REFERENCE_RUNS

STAGE, SCRIPT = "stage5_gpt", "stage5_gpt/finetune.py"
QUICK_TRAIN, QUICK_DEV = 2_000, 200
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")


@torch.no_grad()
def evaluate(model: GPTClassifier, seqs, labels, pad_id: int, device, batch_size: int = 128) -> dict:
    """Accuracy and macro-F1 on a split, and the predictions."""
    model.eval()
    preds = []
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, lengths = make_batch([seqs[j] for j in idx], pad_id, device)
        preds += list(zip(idx, model(ids, lengths).argmax(-1).tolist()))
    model.train()
    pred = [p for _, p in sorted(preds)]
    acc = sum(p == y for p, y in zip(pred, labels)) / len(labels)
    f1s = []
    for c in (0, 1):
        tp = sum(p == c and y == c for p, y in zip(pred, labels))
        fp, fn = sum(p == c and y != c for p, y in zip(pred, labels)), sum(p != c and y == c for p, y in zip(pred, labels))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return {"accuracy": round(acc, 4), "macro_f1": round(sum(f1s) / 2, 4), "predictions": pred}


def lr_at(step: int, args, total_steps: int) -> float:
    """Linear warmup to --lr, then a straight line down to 0 at the last step (BERT's and GPT's fine-tuning schedule)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    return args.lr * max(0.0, (total_steps - step) / max(1, total_steps - args.warmup_steps))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fine-tune a pre-trained GPT on SST-2 (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=GPT_CHECKPOINT,
                   help="the pre-trained GPT (train.py's best.pt; by default the WikiText-2 reference run's); its "
                        "tokenizer sits beside it")
    add_common_args(p, epochs=3, batch_size=32, lr=1e-4, out_dir="runs/stage5_gpt/{name}")
    p.add_argument("--from-scratch", action="store_true", help="random weights instead of the pre-trained ones")
    p.add_argument("--freeze", action="store_true", help="train the head only (a linear probe)")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="tokens per sentence (default: the model's context)")
    p.add_argument("--val-size", type=positive_int, default=500,
                   help="whole training sentences held out (their phrases leave train) to choose the best epoch")
    p.add_argument("--dropout", type=probability, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warmup, then linear decay to 0")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json; publish it with "
                                                  "`python scripts/publish.py <out-dir>/result.json`)")
    args = p.parse_args(argv)
    if args.from_scratch and args.freeze:
        p.error("--freeze keeps random weights fixed with --from-scratch; use one of them")
    args.out_dir = args.out_dir.format(name=run_name(args))
    return args


def run_name(args) -> str:
    return "sst2_" + ("scratch" if args.from_scratch else "probe" if args.freeze else "finetune")


def resume_from(args: argparse.Namespace) -> tuple[argparse.Namespace, dict | None]:
    """--resume: (the run's settings merged with this command's RESUMABLE flags, its last.pt); else (args, None)."""
    if not args.resume:
        return args, None
    ckpt = load_checkpoint(Path(args.out_dir) / "last.pt", stage=STAGE, kind="classifier")
    if ckpt.get("task") != "sst2":  # checkpoints older than kinds: a pre-trained GPT has no task
        raise UserError(f"{Path(args.out_dir) / 'last.pt'} is not a fine-tuning checkpoint")
    return merge_resumed_args(args, ckpt["args"], RESUMABLE), ckpt


def build_model(args, out_dir: Path, device) -> tuple[GPTClassifier, object, dict]:
    """The pre-trained body (or its random twin, --from-scratch; frozen with --freeze) and a new head. The tokenizer
    is copied beside this run's checkpoints: a classifier travels with its tokenizer. -> (model, tokenizer, the
    pre-trained checkpoint)."""
    if not Path(args.checkpoint).is_file():  # the first link of the chain is missing: name the run that makes it
        raise UserError(f"checkpoint not found: {args.checkpoint}; the WikiText-2 reference run writes it: "
                        f"`{reference_command(REFERENCE_RUNS['wikitext2'])}` (or pass --checkpoint)")
    body, tok, pre = load_model(args.checkpoint, "cpu")
    tok_src, tok_dst = Path(args.checkpoint).parent / pre["data"]["tokenizer"], out_dir / pre["data"]["tokenizer"]
    if tok_src.resolve() != tok_dst.resolve():
        shutil.copyfile(tok_src, tok_dst)
    gpt = GPT(GPTConfig(**{**pre["config"], "dropout": args.dropout}))
    if not args.from_scratch:
        gpt.load_state_dict(body.state_dict())
    if args.freeze:
        gpt.requires_grad_(False)
    return GPTClassifier(gpt).to(device), tok, pre


def prepare_data(args, data_dir: Path, tok, max_len: int) -> dict:
    """SST-2 as token ids: {"train", "val", "dev"} -> (sequences, labels). Validation is whole training sentences
    (data.sentence_split, their phrases leave train); dev is only scored once, at the end."""
    data, texts = {}, {}
    for split in ("train", "dev"):
        sentences, labels = load_sst2(data_dir, split)
        if args.quick:
            n = QUICK_TRAIN if split == "train" else QUICK_DEV
            sentences, labels = sentences[:n], labels[:n]
        texts[split] = sentences
        data[split] = (encode_sentences(tok, sentences, max_len), labels)
    seqs, labels = data.pop("train")
    train_rows, val_rows = sentence_split(texts["train"], min(args.val_size, len(labels) // 5), random.Random(0))
    data["val"] = ([seqs[i] for i in val_rows], [labels[i] for i in val_rows])
    data["train"] = ([seqs[i] for i in train_rows], [labels[i] for i in train_rows])
    return data


def save_run(path: Path, optimizer=None, *, args, model: GPTClassifier, state: dict, pre: dict) -> None:
    """Write a checkpoint: best.pt holds the weights, last.pt also the optimizer (what --resume needs)."""
    obj = {"stage": STAGE, "kind": "classifier", "task": "sst2", "config": model.gpt.cfg.to_dict(), "args": vars(args),
           "model": model.state_dict(), "state": state, "rng": rng_state(), "data": pre["data"]}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    save_checkpoint(obj, path)


def final_report(args, out_dir: Path, model: GPTClassifier, data: dict, pad_id: int, pre: dict, state: dict, device,
                 t_start: float, log) -> None:
    """The epoch that was best on val, scored once on dev; the result file and its plot."""
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind="classifier")["model"])
    dev = evaluate(model, *data["dev"], pad_id, device)
    metrics = {"accuracy": dev["accuracy"], "macro_f1": dev["macro_f1"]}
    log.info(f"best epoch on val (step {state['best_step']}): dev accuracy {dev['accuracy']:.4f} | "
             f"macro-F1 {dev['macro_f1']:.4f}")
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset="sst2", split="dev", metrics=metrics, headline="accuracy",
                 train_seconds=state["train_seconds"], device=device, params=sum(p.numel() for p in model.parameters()),
                 command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "pretrained": None if args.from_scratch else portable(str(args.checkpoint)),
                        "pretrained_on": {"dataset": pre["dataset"], "step": pre["state"]["step"]},
                        "epochs_run": state["epoch"],
                        "steps": state["step"], "best_step": state["best_step"], "best_val_accuracy": state["best_acc"],
                        "sizes": {k: len(v[1]) for k, v in data.items()}, "config": model.gpt.cfg.to_dict(),
                        "hparams": resolved_config(args) | {"checkpoint": portable(str(args.checkpoint))}})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss": {"train (per step)": tuple(zip(*h["train_loss"]))},
        "accuracy": {"val (held out from train)": tuple(zip(*h["val_accuracy"]))},
    }, title=f"GPT on SST-2 ({run_name(args)}): dev accuracy {metrics['accuracy']}")
    log.info(f"wrote {result_path} and its plot" + (f" (the reference run {run!r}: publish it with "
                                                    f"`python scripts/publish.py {result_path}`)" if run else ""))


def main(argv=None) -> None:
    args, ckpt = resume_from(parse_args(argv))
    out_dir = Path(args.out_dir)
    log = get_logger(STAGE, out_dir / "finetune.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- the pre-trained body (or its random twin) and the head; the data, in the body's tokens
    model, tok, pre = build_model(args, out_dir, device)
    pad_id = pad_id_of(tok)
    data = prepare_data(args, resolve_data_dir(args.data_dir), tok,
                        max_len=min(args.max_len or model.gpt.cfg.block_size, model.gpt.cfg.block_size))
    n_train = len(data["train"][1])
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=args.lr)
    log.info(f"SST-2: {n_train:,} train / {len(data['val'][1]):,} val (from train) / {len(data['dev'][1]):,} dev | "
             f"{'random init' if args.from_scratch else 'pre-trained ' + str(args.checkpoint)} | "
             f"{sum(p.numel() for p in params):,} trainable parameters | {total_steps} steps")

    state = {"epoch": 0, "batch": 0, "step": 0, "best_acc": -1.0, "best_step": 0, "train_seconds": 0.0,
             "history": {"train_loss": [], "val_accuracy": []}}
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])  # TensorBoard and metrics.jsonl
    save = functools.partial(save_run, args=args, model=model, state=state, pre=pre)  # save(path[, optimizer])

    # ---- the training loop (Ctrl-C and SIGTERM raise a flag; the loop stops between steps and saves)
    stop, restore_signals = catch_stop_signals()
    seqs, labels = data["train"]
    t_loop = time.time() - state["train_seconds"]  # training time excludes validation: t_loop moves on after each
    try:
        model.train()
        while state["epoch"] < args.epochs and not stop["by"]:
            # fixed by (seed, epoch): resumable mid-epoch
            batches = length_batches(seqs, args.batch_size, random.Random(args.seed + state["epoch"]))
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
                t_step = time.time()
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(state["step"], args, total_steps)
                ids, lengths = make_batch([seqs[i] for i in idx], pad_id, device)
                loss = F.cross_entropy(model(ids, lengths), torch.tensor([labels[i] for i in idx], device=device))
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}), a longer --warmup-steps or a smaller --clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, args.clip)
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
            state["train_seconds"] = time.time() - t_loop
            val = evaluate(model, *data["val"], pad_id, device)
            t_loop = time.time() - state["train_seconds"]
            state["epoch"] += 1
            state["batch"] = 0
            state["history"]["val_accuracy"].append([state["step"], val["accuracy"]])
            recent = [v for _, v in state["history"]["train_loss"][-len(batches):]]
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val accuracy "
                     f"{val['accuracy']:.4f} | {state['train_seconds']:.0f}s")
            tracker.evaluation(state["step"], "val", state["train_seconds"], accuracy=val["accuracy"],
                               macro_f1=val["macro_f1"])
            if val["accuracy"] > state["best_acc"]:
                state["best_acc"], state["best_step"] = val["accuracy"], state["step"]
                save(out_dir / "best.pt")
            save(out_dir / "last.pt", optimizer)
    finally:
        tracker.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        save(out_dir / "last.pt", optimizer)
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python {SCRIPT} --out-dir {out_dir} --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)
        return
    final_report(args, out_dir, model, data, pad_id, pre, state, device, t_start, log)


if __name__ == "__main__":
    run_cli(main)
