"""Train a recurrent language model (RNN, LSTM or GRU) on Tiny Shakespeare (characters) or WikiText-2 (words).

    python stage2_rnn_lstm/train.py                                  # char LSTM on Tiny Shakespeare
    python stage2_rnn_lstm/train.py --model-type rnn                 # the same with a vanilla RNN
    python stage2_rnn_lstm/train.py --dataset wikitext2 --adaptive-cutoffs 2000,10000 ...   # word level
    python stage2_rnn_lstm/train.py --quick                          # a smoke run on small slices
    python stage2_rnn_lstm/train.py --resume                         # continue an interrupted run exactly

Truncated backpropagation through time: the training text is cut into --batch-size parallel streams, and
each step trains on the next --bptt tokens of every stream. The hidden state left by one window is the
starting state of the next (so the model can carry information further than --bptt), but the graph is cut
there (`detach_state`), so gradients flow back at most --bptt steps.

Checkpoints (<out-dir>/last.pt after every epoch, on Ctrl-C, SIGTERM and --max-steps; best.pt for the best
validation loss) hold the model, optimizer, schedule, random-number states *and the carried hidden state*,
so a resumed run repeats the losses an uninterrupted run would have had. The result file goes to
<out-dir>/result.json; `python scripts/publish.py <out-dir>/result.json` publishes a reference run's
(reference_runs.py) into stage2_rnn_lstm/results/. Loss, learning rate, gradient norm and tokens/s go to
TensorBoard (`tensorboard --logdir runs`), and every validation to <out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage2_rnn_lstm/train.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, catch_stop_signals, get_device, get_logger, load_checkpoint,
                            merge_resumed_args, note_command, parse_with_quick_defaults, plot_curves, portable,
                            positive_float, positive_int, probability, reference_run_name, resolve_data_dir,
                            resolved_config, rng_state, run_cli, RunTracker, save_checkpoint, set_rng_state, set_seed,
                            write_result)
from stage2_rnn_lstm.data import DATASETS, Vocab, batchify, dataset_info, get_window, load_text, vocab_beside
from stage2_rnn_lstm.model import LMConfig, RNNLanguageModel, detach_state
from stage2_rnn_lstm.reference_runs import REFERENCE_RUNS

STAGE = "stage2_rnn_lstm"
SCRIPT = "stage2_rnn_lstm/train.py"
KIND = "language_model"                  # what its checkpoints hold (scripts.common.KINDS)
QUICK_TRAIN, QUICK_EVAL = 20_000, 5_000  # --quick: tokens of train and of each evaluation split
QUICK_LR, QUICK_WARMUP = 1e-2, 5         # --quick without --lr / --warmup-steps: a few dozen steps must learn
EVAL_BATCH = 16                           # parallel streams when scoring val/test
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # flags a resumed run may change


def cutoffs(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected increasing whole numbers like 2000,10000, got {text!r}") from None
    if any(v <= 0 for v in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing whole numbers like 2000,10000, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a recurrent language model (Stage 2).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="tiny_shakespeare", choices=list(DATASETS))
    add_common_args(p, epochs=7, batch_size=16, lr=2e-3, out_dir="runs/stage2_rnn_lstm/{dataset}_{model_type}")
    p.add_argument("--vocab-type", "--vocab_type", choices=["char", "word"], default=None,
                   help="tokens: characters or words (default: char for tiny_shakespeare, word for wikitext2)")
    p.add_argument("--model-type", "--model_type", choices=["rnn", "lstm", "gru"], default="lstm")
    p.add_argument("--impl", choices=["scratch", "torch"], default="torch",
                   help="hand-written cells (model.py) or nn.RNN/nn.LSTM/nn.GRU: the same function, torch's is faster")
    p.add_argument("--emb-dim", type=positive_int, default=64, help="token embedding size")
    p.add_argument("--hidden-dim", type=positive_int, default=512, help="hidden state size of each layer")
    p.add_argument("--n-layers", type=positive_int, default=2, help="stacked recurrent layers")
    p.add_argument("--dropout", type=probability, default=0.2, help="dropout on embeddings, between layers, at the output")
    p.add_argument("--tie-weights", action="store_true", help="share the embedding with the output layer")
    p.add_argument("--adaptive-cutoffs", type=cutoffs, default=[],
                   help="adaptive softmax cluster boundaries, e.g. 2000,10000 (default: a full softmax)")
    p.add_argument("--bptt", type=positive_int, default=128, help="tokens per window (truncated BPTT length)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="sgd is the classic recipe for word-level LSTMs (lr around 20, --clip 0.25)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warmup, then cosine decay to lr/10")
    p.add_argument("--result", default=None,
                   help="result JSON path (default: <out-dir>/result.json; publish a reference run's with "
                        "`python scripts/publish.py <out-dir>/result.json`)")
    args = parse_with_quick_defaults(p, argv, {"lr": QUICK_LR, "warmup_steps": QUICK_WARMUP})
    args.vocab_type = args.vocab_type or dataset_info(args.dataset)["vocab_type"]
    args.out_dir = args.out_dir.format(dataset=args.dataset, model_type=args.model_type)
    if args.tie_weights and args.emb_dim != args.hidden_dim:
        p.error(f"--tie-weights needs --emb-dim == --hidden-dim (got {args.emb_dim} and {args.hidden_dim})")
    if args.warmup_steps < 0 or args.weight_decay < 0:
        p.error("--warmup-steps and --weight-decay must be >= 0")
    return args


def load_resume_point(args, out_dir: Path) -> dict:
    """<out-dir>/last.pt, checked to be a train.py run of this data set and cell that --resume can continue."""
    ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE, kind=KIND)
    saved = ckpt["args"]
    if "optimizer" not in ckpt:
        raise UserError(f"{out_dir / 'last.pt'} is not the last.pt of a train.py run (it holds no optimizer state)")
    if (saved["dataset"], saved["model_type"]) != (args.dataset, args.model_type):
        raise UserError(f"{out_dir / 'last.pt'} is a {saved['dataset']} {saved['model_type']} run, "
                        f"not {args.dataset} {args.model_type}")
    return ckpt


def prepare_data(args, data_dir: Path, out_dir: Path, ckpt: dict | None, log):
    """Token id streams of every split, and the vocabulary: built on the whole training split and saved as
    <out-dir>/vocab.json, or, for a resumed run (`ckpt`), read back from there and checked against the checkpoint."""
    vocab = vocab_beside(out_dir / "last.pt", ckpt) if ckpt else None
    splits = dataset_info(args.dataset)["splits"]
    texts = {s: load_text(args.dataset, data_dir, s) for s in splits}
    vocab = vocab or Vocab.build(texts["train"], args.vocab_type)
    ids = {s: torch.tensor(vocab.encode(t), dtype=torch.long) for s, t in texts.items()}  # (N,) per split
    if args.quick:
        ids = {s: v[: QUICK_TRAIN if s == "train" else QUICK_EVAL] for s, v in ids.items()}
    log.info(f"{args.dataset} ({args.vocab_type}s): vocabulary {len(vocab):,} | "
             + " / ".join(f"{len(v):,} {s}" for s, v in ids.items()) + " tokens")
    if not ckpt:
        out_dir.mkdir(parents=True, exist_ok=True)
        vocab.save(out_dir / "vocab.json")
    return ids, vocab


def build_model(args, vocab_size: int, device: torch.device):
    """The model config from the flags, the model on `device`, and its optimizer."""
    config = LMConfig(vocab_size=vocab_size, model_type=args.model_type, emb_dim=args.emb_dim,
                      hidden_dim=args.hidden_dim, n_layers=args.n_layers, dropout=args.dropout,
                      tie_weights=args.tie_weights, impl=args.impl, adaptive_cutoffs=args.adaptive_cutoffs)
    if config.adaptive_cutoffs and config.adaptive_cutoffs[-1] >= vocab_size:
        raise UserError(f"--adaptive-cutoffs must stay below the vocabulary size {vocab_size:,}")
    model = RNNLanguageModel(config).to(device)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                      fused=device.type in ("cpu", "cuda"))
    return config, model, optimizer


@torch.no_grad()
def evaluate_loss(model, ids: torch.Tensor, bptt: int, device, batch_size: int = EVAL_BATCH) -> float:
    """Mean cross-entropy (nats per token) over a whole split, carrying the hidden state from window to window."""
    model.eval()
    streams = batchify(ids, batch_size).to(device)
    state, total, count = None, 0.0, 0
    for start in range(0, streams.shape[1] - 1, bptt):
        x, y = get_window(streams, start, bptt)
        _, loss, state = model(x, state, targets=y)
        total += loss.item() * y.numel()
        count += y.numel()
    return total / count


def lr_at(step: int, args, total_steps: int) -> float:
    """Linear warmup to --lr, then cosine decay to --lr / 10 at the last step."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_run(path: Path, args, model, vocab: Vocab, state: dict, hidden, optimizer=None) -> None:
    """A checkpoint: weights, flags, progress, random-number states and the carried hidden state; with the
    optimizer's state (last.pt) it is one that --resume continues exactly, without it (best.pt) one to use."""
    obj = {"stage": STAGE, "kind": KIND, "dataset": args.dataset, "config": model.config.to_dict(), "args": vars(args),
           "model": model.state_dict(), "state": state, "rng": rng_state(), "hidden": hidden,
           "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    save_checkpoint(obj, path)


def final_report(args, model, vocab: Vocab, ids: dict, state: dict, device, data_dir: Path, t_start: float,
                 log) -> None:
    """Score best.pt on val (and test, where the data set has one), write the result file and its loss curves."""
    out_dir = Path(args.out_dir)
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind=KIND)["model"])
    metrics = {}
    for split in [s for s in ("val", "test") if s in ids]:
        loss = evaluate_loss(model, ids[split], args.bptt, device)
        metrics.update({f"{split}_loss": round(loss, 4), f"{split}_ppl": round(math.exp(loss), 2)})
        if args.vocab_type == "char":
            metrics[f"{split}_bpc"] = round(loss / math.log(2), 4)  # bits per character
    log.info(f"best checkpoint (step {state['best_step']}): " + " | ".join(f"{k} {v}" for k, v in metrics.items()))
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    headline = "test_ppl" if "test_ppl" in metrics else "val_loss"
    write_result(result_path, stage=STAGE, dataset=args.dataset, split="test" if "test" in ids else "val",
                 metrics=metrics, headline=headline, train_seconds=state["train_seconds"], device=device,
                 params=model.num_params(), command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "epochs_run": state["epoch"], "steps": state["step"], "best_step": state["best_step"],
                        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9)),
                        "vocab_size": len(vocab), "config": model.config.to_dict(), "hparams": resolved_config(args),
                        "sizes": {k: len(v) for k, v in ids.items()}, "data_dir": portable(str(data_dir))})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss (nats/token)": {"train (per step)": tuple(zip(*h["train_loss"])), "val": tuple(zip(*h["val_loss"]))},
    }, title=f"{args.model_type.upper()}, {args.dataset}\n{headline} {metrics[headline]}")
    log.info(f"wrote {result_path} and its plot" + (f" (reference run {run}: publish it with "
                                                   f"`python scripts/publish.py {result_path}`)" if run else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    ckpt = load_resume_point(args, out_dir) if args.resume else None
    if ckpt:
        args = merge_resumed_args(args, ckpt["args"], RESUMABLE)
    log = get_logger(STAGE, out_dir / "train.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data
    data_dir = resolve_data_dir(args.data_dir)
    ids, vocab = prepare_data(args, data_dir, out_dir, ckpt, log)
    train = batchify(ids["train"], args.batch_size).to(device)  # (B, N)
    windows = list(range(0, train.shape[1] - 1, args.bptt))    # start of every BPTT window in an epoch
    total_steps = args.epochs * len(windows)

    # ---- model and optimizer
    config, model, optimizer = build_model(args, len(vocab), device)
    log.info(f"model: {model.num_params():,} parameters, {config}")
    log.info(f"{len(windows)} steps per epoch ({args.batch_size} streams x {args.bptt} tokens), {total_steps} in all")

    state = {"epoch": 0, "window": 0, "step": 0, "tokens": 0, "best_val_loss": math.inf, "best_step": 0,
             "train_seconds": 0.0,
             "history": {"train_loss": [], "val_loss": []}}  # lists of [step, value]
    hidden = None  # the carried recurrent state
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state, hidden = ckpt["state"], ckpt["hidden"]
        set_rng_state(ckpt["rng"])
        log.info(f"resumed at epoch {state['epoch'] + 1}, window {state['window']}, step {state['step']}")
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])  # TensorBoard and metrics.jsonl

    # ---- the training loop (Ctrl-C and SIGTERM raise a flag; the loop stops between steps and saves)
    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop

    model.train()
    t_loop = time.time() - state["train_seconds"]
    try:
        while state["epoch"] < args.epochs and not stop["by"]:
            bar = tqdm(total=len(windows), initial=state["window"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for start in windows[state["window"]:]:
                t_step = time.time()
                x, y = get_window(train, start, args.bptt)  # (B, T), (B, T)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(state["step"], args, total_steps)
                _, loss, hidden = model(x, hidden, targets=y)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}) or --clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)  # tames exploding gradients
                optimizer.step()
                hidden = detach_state(hidden)  # truncated BPTT: keep the state's values, cut its graph
                state["step"] += 1
                state["window"] += 1
                state["tokens"] += y.numel()
                state["history"]["train_loss"].append([state["step"], round(loss.item(), 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                tracker.train(state["step"], loss=loss.item(), lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                              tokens_per_second=y.numel() / (time.time() - t_step))
                if args.max_steps and state["step"] >= args.max_steps:
                    stop["by"] = "max_steps"
                if stop["by"]:
                    break
            bar.close()
            if stop["by"]:
                break
            # ---- end of epoch: validate, keep the best
            val_loss = evaluate_loss(model, ids["val"], args.bptt, device)
            model.train()
            state["history"]["val_loss"].append([state["step"], val_loss])
            recent = [v for _, v in state["history"]["train_loss"][-len(windows):]]
            state["epoch"] += 1
            state["window"] = 0
            hidden = None  # each epoch starts from the beginning of the streams, with a fresh state
            state["train_seconds"] = time.time() - t_loop
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val loss {val_loss:.4f} "
                     f"| val ppl {math.exp(val_loss):.2f} | {state['train_seconds']:.0f}s")
            tracker.evaluation(state["step"], "val", state["train_seconds"], loss=val_loss, ppl=math.exp(val_loss))
            if val_loss < state["best_val_loss"]:
                state["best_val_loss"], state["best_step"] = val_loss, state["step"]
                save_run(out_dir / "best.pt", args, model, vocab, state, hidden)
            save_run(out_dir / "last.pt", args, model, vocab, state, hidden, optimizer)
    finally:
        tracker.close()
        restore_signals()
    state["train_seconds"] = time.time() - t_loop
    if stop["by"]:
        save_run(out_dir / "last.pt", args, model, vocab, state, hidden, optimizer)
        resume = f"python {SCRIPT} --dataset {args.dataset} --model-type {args.model_type} --out-dir {out_dir} --resume"
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. "
                 f"Continue with: {resume}")
        if stop["by"] != "max_steps":
            sys.exit(130)
    if state["history"]["val_loss"]:  # at least one epoch finished: report the best checkpoint
        final_report(args, model, vocab, ids, state, device, data_dir, t_start, log)


if __name__ == "__main__":
    run_cli(main)
