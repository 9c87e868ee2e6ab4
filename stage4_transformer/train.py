"""Train the Transformer translator on Multi30k (the task, test sets and BLEU of Stage 3).

    python stage4_transformer/train.py                         # en -> fr, pre-norm, 3+3 layers, d_model 256
    python stage4_transformer/train.py --src de --tgt en       # any pair of en / de / fr
    python stage4_transformer/train.py --norm post             # the paper's post-norm layers
    python stage4_transformer/train.py --quick                 # a smoke run on small slices
    python stage4_transformer/train.py --resume                # continue an interrupted run exactly
    python stage4_transformer/train.py --time-budget 55 --average-last 5   # the reference recipe: see the README

A step sees about --batch-tokens source+target tokens (--accum-steps batches per optimizer step); the learning rate
warms up linearly for --warmup-steps, then falls as 1/sqrt(step) (the paper's schedule) or along a cosine. Each epoch
ends with the validation loss and BLEU (greedy); best.pt is the best validation BLEU, and the final report scores it
on test2016 and test2017 with beam search. On CUDA, --amp runs the forward pass in bf16 (or fp16 with loss scaling).
--time-budget stops training after that many minutes (the cosine schedule then counts progress in time, so it
reaches its end as the budget runs out). --average-last K keeps the weights of the last K epochs and, if their
average scores better on validation than best.pt, reports the average (checkpoint averaging, Vaswani et al. 2017).

Outputs in --out-dir (default runs/stage4_transformer/multi30k_<src>_<tgt>): best.pt, last.pt (to --resume; also
written on Ctrl-C and SIGTERM), vocab.json, train.log, the translations of the test sets (*.hyp.txt), result.json and
its plot.
The runs behind the published figures are declared in reference_runs.py; `python scripts/publish.py
<out-dir>/result.json` copies such a run's result into stage4_transformer/results/. Loss, learning rate, gradient
norm and tokens/s (source and target) go to TensorBoard (`tensorboard --logdir runs`), and every validation to
<out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage4_transformer/train.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, atomic_write_text, autocast_for, catch_stop_signals,
                            get_device, get_logger, load_checkpoint, merge_resumed_args, note_command,
                            parse_with_quick_defaults, plot_curves, portable, positive_float, positive_int,
                            probability, reference_run_name, resolve_data_dir, resolved_config, rng_state, run_cli,
                            RunTracker, save_checkpoint, set_rng_state, set_seed, write_result)
from stage4_transformer.data import Vocab, check_pair, load_pairs, make_batch, token_batches, vocab_beside
from stage4_transformer.decoding import bleu, translate
from stage4_transformer.model import Transformer, TransformerConfig
from stage4_transformer.reference_runs import REFERENCE_RUNS

STAGE = "stage4_transformer"
SCRIPT = "stage4_transformer/train.py"
TEST_SPLITS = ["test2016", "test2017"]
QUICK_TRAIN, QUICK_EVAL = 2_000, 100
QUICK_LR, QUICK_WARMUP = 1e-3, 20
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result", "time_budget")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a Transformer translator (Stage 4).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--src", default="en", help="source language: en, de or fr")
    p.add_argument("--tgt", default="fr", help="target language")
    add_common_args(p, epochs=10, batch_size=0, lr=1.5e-3, out_dir="runs/stage4_transformer/{name}")  # {name}: run_name
    p.add_argument("--batch-tokens", type=positive_int, default=4096,
                   help="tokens (source + target, padding included) per batch; --batch-size N batches N sentences instead")
    p.add_argument("--accum-steps", type=positive_int, default=1, help="batches whose gradients make one optimizer step")
    p.add_argument("--d-model", type=positive_int, default=256)
    p.add_argument("--n-heads", type=positive_int, default=8)
    p.add_argument("--layers", type=positive_int, default=3, help="encoder layers = decoder layers")
    p.add_argument("--d-ff", type=positive_int, default=512, help="feed-forward hidden size")
    p.add_argument("--dropout", type=probability, default=0.1)
    p.add_argument("--norm", choices=["pre", "post"], default="pre", help="LayerNorm before (pre) or after (post) each sub-layer")
    p.add_argument("--pos", choices=["sinusoidal", "learned"], default="sinusoidal", help="positional encoding")
    p.add_argument("--share-embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="one embedding table for both languages (and the output layer)")
    p.add_argument("--min-freq", type=positive_int, default=2, help="rarer training words become <unk>")
    p.add_argument("--label-smoothing", type=probability, default=0.1)
    p.add_argument("--schedule", choices=["invsqrt", "cosine"], default="invsqrt",
                   help="after warmup: lr * sqrt(warmup / step), or a cosine decay to lr/10")
    p.add_argument("--warmup-steps", type=positive_int, default=300)
    p.add_argument("--time-budget", type=positive_float, default=None,
                   help="minutes of training (validation not counted); stops after the step that uses them up")
    p.add_argument("--average-last", type=int, default=0,
                   help="keep the last K epochs' weights; report their average if it beats best.pt on val (0: off)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); no effect on CPU")
    p.add_argument("--beam-size", type=positive_int, default=5, help="beam width for the final test scores")
    p.add_argument("--length-penalty", type=float, default=0.6, help="alpha in ((5 + length) / 6) ** alpha")
    p.add_argument("--max-len", type=positive_int, default=100, help="training pairs longer than this are skipped")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json; publish it with "
                                                  "`python scripts/publish.py <out-dir>/result.json`)")
    args = parse_with_quick_defaults(p, argv, {"lr": QUICK_LR, "warmup_steps": QUICK_WARMUP})
    if args.average_last < 0 or args.average_last == 1:
        p.error(f"--average-last must be 0 (off) or at least 2, got {args.average_last}")
    if args.d_model % args.n_heads:
        p.error(f"--d-model {args.d_model} must be divisible by --n-heads {args.n_heads}")
    if args.max_len + 1 > 256:
        p.error("--max-len must stay below 256 (the positional table's length)")
    args.out_dir = args.out_dir.format(name=run_name(args))
    return args


def run_name(args) -> str:
    """multi30k_en_fr for the defaults; _postnorm / _learnedpos mark the variants, so they never overwrite it."""
    return (f"multi30k_{args.src}_{args.tgt}" + ("_postnorm" if args.norm == "post" else "")
            + ("_learnedpos" if args.pos == "learned" else ""))


def prepare_data(args, data_dir: Path, vocab: Vocab | None, log):
    """Raw pairs of every split, one joint vocabulary (train only), the encoded training pairs."""
    check_pair(args.src, args.tgt)
    splits = ["train", "val"] + TEST_SPLITS
    pairs = {s: load_pairs(data_dir, s, args.src, args.tgt) for s in splits}
    if args.quick:
        pairs = {s: v[: QUICK_TRAIN if s == "train" else QUICK_EVAL] for s, v in pairs.items()}
    vocab = vocab or Vocab.build([x for pair in pairs["train"] for x in pair], args.min_freq,
                                 targets=[t for _, t in pairs["train"]])
    train = [(vocab.encode(s), vocab.encode(t, target=True)) for s, t in pairs["train"]]
    train = [(s, t) for s, t in train if len(s) <= args.max_len and len(t) <= args.max_len]
    log.info(f"multi30k {args.src}->{args.tgt}: " + " / ".join(f"{len(v):,} {s}" for s, v in pairs.items())
             + f" pairs | joint vocabulary {len(vocab):,} (min freq {args.min_freq}), the first {vocab.n_target:,} on the "
             f"{args.tgt} side | {len(train):,} training pairs")
    return pairs, vocab, train


def epoch_batches(train, args, epoch: int) -> list[list[int]]:
    """The epoch's batches, fixed by (seed, epoch): by token budget, or --batch-size sentences of similar length."""
    lengths = [(len(s), len(t)) for s, t in train]
    if args.batch_size:
        return token_batches(lengths, 10 ** 9, args.seed + epoch, max_sentences=args.batch_size)
    return token_batches(lengths, args.batch_tokens, args.seed + epoch)


@torch.no_grad()
def evaluate_loss(model, vocab: Vocab, pairs, device) -> float:
    model.eval()
    data = [(vocab.encode(s), vocab.encode(t, target=True)) for s, t in pairs]
    total, count = 0.0, 0
    for idx in token_batches([(len(s), len(t)) for s, t in data], 4096, seed=0, shuffle=False):
        b = {k: v.to(device) for k, v in make_batch([data[i][0] for i in idx], [data[i][1] for i in idx]).items()}
        _, loss = model(b["src"], b["tgt_in"], b["tgt_out"])
        n = int((b["tgt_out"] != 0).sum())
        total, count = total + loss.item() * n, count + n
    return total / count


def score(model, vocab, pairs, device, beam_size: int = 1, alpha: float = 0.6) -> dict:
    hyps = [h["text"] for h in translate(model, vocab, [s for s, _ in pairs], device, beam_size, alpha)]
    refs = [t for _, t in pairs]
    cased, signature = bleu(hyps, refs)
    lower, signature_lc = bleu(hyps, refs, lowercase=True)
    return {"bleu": cased, "bleu_lc": lower, "signature": signature, "signature_lc": signature_lc, "hypotheses": hyps}


def lr_at(step: int, args, total_steps: int, elapsed: float = 0.0) -> float:
    """Linear warmup to --lr over --warmup-steps, then lr * sqrt(warmup / step) (Vaswani et al.) or a cosine to lr/10.
    With --time-budget the cosine's progress is the larger of steps done and minutes used (elapsed, in seconds)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    if args.schedule == "invsqrt":
        return args.lr * math.sqrt(args.warmup_steps / (step + 1))
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    if args.time_budget:
        progress = max(progress, elapsed / (60 * args.time_budget))
    progress = min(1.0, progress)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def keep_epoch_weights(model, folder: Path, epoch: int, keep: int) -> None:
    """Save this epoch's weights as folder/epochNNN.pt and delete all but the newest `keep` of them."""
    save_checkpoint({"stage": STAGE, "kind": "translator", "epoch": epoch, "config": model.cfg.to_dict(),
                     "model": model.state_dict()}, folder / f"epoch{epoch:03d}.pt")
    for old in sorted(folder.glob("epoch*.pt"))[:-keep]:
        old.unlink()


def average_weights(files: list[Path]) -> dict:
    """The element-wise mean of several checkpoints' weights. Late in training the weights wander around a minimum
    (the learning rate is never 0); their mean sits nearer its centre than any one of them, and is often better."""
    total = None
    for f in files:
        weights = load_checkpoint(f, stage=STAGE, kind="translator")["model"]
        total = weights if total is None else {k: total[k] + v for k, v in weights.items()}
    return {k: v / len(files) for k, v in total.items()}


def resume_checkpoint(args) -> dict:
    """<out-dir>/last.pt, checked to be a run of the same language pair and variant (run_name)."""
    path = Path(args.out_dir) / "last.pt"
    ckpt = load_checkpoint(path, stage=STAGE, kind="translator")
    saved = run_name(argparse.Namespace(**ckpt["args"]))
    if saved != run_name(args):
        raise UserError(f"{path} is a {saved} run, not {run_name(args)}")
    return ckpt


def build_model(args, vocab: Vocab, device) -> tuple[Transformer, torch.optim.Optimizer]:
    """The Transformer at the command line's sizes over the joint vocabulary, and AdamW with the paper's betas."""
    config = TransformerConfig(src_vocab_size=len(vocab), tgt_vocab_size=vocab.n_target, d_model=args.d_model,
                               n_heads=args.n_heads, n_enc_layers=args.layers, n_dec_layers=args.layers, d_ff=args.d_ff,
                               dropout=args.dropout, norm=args.norm, pos=args.pos,
                               share_embeddings=args.share_embeddings)
    model = Transformer(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    return model, optimizer


def optimizer_step(model, optimizer, scaler, clip: float) -> torch.Tensor:
    """Clip the gradient norm and step; with fp16 loss scaling, unscale the gradients first (and let the scaler skip
    a step whose gradients overflowed). Returns the gradient norm before clipping."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return grad_norm


def new_state() -> dict:
    """A fresh run's progress: where the loop is, the best validation BLEU so far, the curves."""
    return {"epoch": 0, "batch": 0, "step": 0, "tokens": 0, "best_val_bleu": -1.0, "best_step": 0,
            "train_seconds": 0.0, "history": {"train_loss": [], "val_loss": [], "val_bleu": []}}


def restore_run(ckpt: dict, model, optimizer, scaler, log) -> dict:
    """Put last.pt's weights, optimizer (and loss scaler) and random state back; return its progress."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state = ckpt["state"]
    log.info(f"resumed at epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}")
    return state


def save_run(path: Path, model, args, state: dict, vocab: Vocab, optimizer=None, scaler=None) -> None:
    """A checkpoint of the run: weights, settings, progress and random state; with `optimizer`, enough to --resume."""
    obj = {"stage": STAGE, "kind": "translator", "dataset": "multi30k", "config": model.cfg.to_dict(),
           "args": vars(args), "model": model.state_dict(), "state": state, "rng": rng_state(),
           "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
        obj["scaler"] = scaler.state_dict() if scaler is not None else None
    save_checkpoint(obj, path)


def final_weights(model, args, state: dict, vocab: Vocab, pairs: dict, out_dir: Path, device, log) -> dict:
    """Load best.pt (the best validation BLEU), or the average of the last --average-last epochs if that scores
    better on validation (then saved as averaged.pt). Returns which weights the final report scores."""
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind="translator")["model"])
    final = {"weights": "best.pt", "val_bleu_greedy": state["best_val_bleu"]}
    epoch_files = sorted((out_dir / "epochs").glob("epoch*.pt")) if args.average_last else []
    if len(epoch_files) >= 2:
        best_weights = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(average_weights(epoch_files))
        avg_bleu = score(model, vocab, pairs["val"], device)["bleu"]
        log.info(f"average of the last {len(epoch_files)} epochs: val BLEU {avg_bleu:.2f} "
                 f"(best single epoch {state['best_val_bleu']:.2f})")
        if avg_bleu > state["best_val_bleu"]:
            save_run(out_dir / "averaged.pt", model, args, state, vocab)
            final = {"weights": "averaged.pt", "epochs": [f.stem for f in epoch_files], "val_bleu_greedy": avg_bleu}
        else:
            model.load_state_dict(best_weights)
    return final


def final_report(args, model, vocab: Vocab, pairs: dict, state: dict, out_dir: Path, data_dir: Path, device,
                 t_start: float, log) -> None:
    """The final weights scored with beam search on the test sets and val -> <out-dir>/result.json (or --result), its
    plot, and each split's translations (<split>.hyp.txt)."""
    final = final_weights(model, args, state, vocab, pairs, out_dir, device, log)
    metrics, signature = {}, None
    for split in TEST_SPLITS + ["val"]:
        s = score(model, vocab, pairs[split], device, args.beam_size, args.length_penalty)
        prefix = "" if split == TEST_SPLITS[0] else f"{split}_"
        metrics.update({f"{prefix}bleu": s["bleu"], f"{prefix}bleu_lc": s["bleu_lc"]})
        signature = {"cased": s["signature"], "lowercased": s["signature_lc"]}
        atomic_write_text(out_dir / f"{split}.hyp.txt", "\n".join(s["hypotheses"]) + "\n")
    log.info(f"{final['weights']} (beam {args.beam_size}): " + " | ".join(f"{k} {v}" for k, v in metrics.items()))
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    headline = "bleu" if args.src != "de" else "bleu_lc"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset=f"multi30k {args.src}-{args.tgt}", split=TEST_SPLITS[0],
                 metrics=metrics, headline=headline, train_seconds=state["train_seconds"], device=device,
                 params=model.num_params(), command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "sacrebleu_signature": signature,
                        "decoding": {"beam_size": args.beam_size, "length_penalty": args.length_penalty},
                        "epochs_run": state["epoch"], "steps": state["step"], "best_step": state["best_step"],
                        "best_val_bleu_greedy": state["best_val_bleu"], "final_weights": final,
                        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9)),
                        "vocab_size": len(vocab), "config": model.cfg.to_dict(), "hparams": resolved_config(args),
                        "sizes": {k: len(v) for k, v in pairs.items()}, "data_dir": portable(str(data_dir))})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss (nats/token)": {"train (per step, smoothed labels)": tuple(zip(*h["train_loss"])),
                              "val": tuple(zip(*h["val_loss"]))},
        "val BLEU (greedy)": {"val": tuple(zip(*h["val_bleu"]))},
    }, title=f"Transformer ({args.norm}-norm), multi30k {args.src}->{args.tgt}\n{headline} {metrics[headline]}")
    log.info(f"wrote {result_path} and its plot" + (f" (the reference run {run})" if run else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    ckpt = resume_checkpoint(args) if args.resume else None
    if ckpt:
        args = merge_resumed_args(args, ckpt["args"], RESUMABLE)
    log = get_logger(STAGE, out_dir / "train.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data: every split's raw pairs, one joint vocabulary (train only), the encoded training pairs
    data_dir = resolve_data_dir(args.data_dir)
    pairs, vocab, train = prepare_data(args, data_dir, vocab_beside(out_dir / "last.pt", ckpt) if ckpt else None, log)
    if not ckpt:
        vocab.save(out_dir / "vocab.json")
    steps_per_epoch = math.ceil(len(epoch_batches(train, args, 0)) / args.accum_steps)
    total_steps = args.epochs * steps_per_epoch

    # ---- model and optimizer
    model, optimizer = build_model(args, vocab, device)
    autocast, scaler = autocast_for(device, args.amp)
    log.info(f"model: {model.num_params():,} parameters, {model.cfg}")
    log.info(f"about {steps_per_epoch} optimizer steps per epoch (~{args.batch_tokens} tokens x {args.accum_steps}), "
             f"{total_steps} in all")
    state = restore_run(ckpt, model, optimizer, scaler, log) if ckpt else new_state()
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])  # TensorBoard and metrics.jsonl

    # ---- the loop: an optimizer step = --accum-steps batches; each epoch ends with validation loss and BLEU
    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop
    t_loop = time.time() - state["train_seconds"]
    out_of_time = False
    try:
        while state["epoch"] < args.epochs and not stop["by"]:
            model.train()
            batches = epoch_batches(train, args, state["epoch"])
            # an optimizer step = --accum-steps batches; a resumed run restarts at a step boundary
            groups = [batches[i:i + args.accum_steps] for i in range(0, len(batches), args.accum_steps)]
            bar = tqdm(total=len(groups), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for group in groups[state["batch"]:]:
                t_step, tokens_before = time.time(), state["tokens"]
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(state["step"], args, total_steps, time.time() - t_loop)
                optimizer.zero_grad(set_to_none=True)
                n_tgt = sum(sum(len(train[i][1]) for i in idx) for idx in group)
                step_loss = 0.0
                for idx in group:  # gradient accumulation: each batch weighted by its share of the target tokens
                    b = make_batch([train[i][0] for i in idx], [train[i][1] for i in idx])
                    b = {k: v.to(device) for k, v in b.items()}
                    with autocast:
                        _, loss = model(b["src"], b["tgt_in"], b["tgt_out"], label_smoothing=args.label_smoothing)
                    if not torch.isfinite(loss):
                        raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                        f"try a lower --lr (now {args.lr}) or a longer --warmup-steps"
                                        + (", or --no-amp" if args.amp and device.type == "cuda" else ""))
                    share = sum(len(train[i][1]) for i in idx) / n_tgt
                    (scaler.scale(loss * share) if scaler else loss * share).backward()
                    step_loss += loss.item() * share
                    state["tokens"] += int(b["src"].ne(0).sum() + b["tgt_out"].ne(0).sum())
                grad_norm = optimizer_step(model, optimizer, scaler, args.clip)
                state["step"] += 1
                state["batch"] += 1
                state["history"]["train_loss"].append([state["step"], round(step_loss, 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                tracker.train(state["step"], loss=step_loss, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                              tokens_per_second=(state["tokens"] - tokens_before) / (time.time() - t_step))
                if args.max_steps and state["step"] >= args.max_steps:
                    stop["by"] = "max_steps"
                if args.time_budget and time.time() - t_loop >= 60 * args.time_budget:
                    out_of_time = True  # this (partial) epoch still ends with validation, then training stops
                if stop["by"] or out_of_time:
                    break
            bar.close()
            if stop["by"]:
                break
            # ---- end of an epoch: validation loss and BLEU (greedy); best.pt is the best BLEU so far
            state["train_seconds"] = time.time() - t_loop
            val_loss = evaluate_loss(model, vocab, pairs["val"], device)
            val = score(model, vocab, pairs["val"], device)  # greedy decoding
            val_bleu = val["bleu"]
            t_loop = time.time() - state["train_seconds"]  # validation time is not training time
            tracker.evaluation(state["step"], "val", state["train_seconds"], loss=val_loss, bleu=val_bleu,
                               bleu_lc=val["bleu_lc"])
            h = state["history"]
            h["val_loss"].append([state["step"], round(val_loss, 5)])
            h["val_bleu"].append([state["step"], val_bleu])
            recent = [v for _, v in h["train_loss"][-len(groups):]]
            state["epoch"] += 1
            state["batch"] = 0
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val loss {val_loss:.4f} "
                     f"| val BLEU {val_bleu:.2f} | {state['train_seconds']:.0f}s")
            if val_bleu >= state["best_val_bleu"]:
                state["best_val_bleu"], state["best_step"] = val_bleu, state["step"]
                save_run(out_dir / "best.pt", model, args, state, vocab)
            if args.average_last:  # the last K epochs' weights, for averaging at the end
                keep_epoch_weights(model, out_dir / "epochs", state["epoch"], args.average_last)
            save_run(out_dir / "last.pt", model, args, state, vocab, optimizer, scaler)
            if out_of_time:
                log.info(f"time budget of {args.time_budget} minutes used up at step {state['step']}")
                break
    finally:
        tracker.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        save_run(out_dir / "last.pt", model, args, state, vocab, optimizer, scaler)
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python {SCRIPT} --src {args.src} --tgt {args.tgt} --out-dir {out_dir} --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)
    if state["history"]["val_bleu"]:  # a run stopped before its first validation has nothing to report
        final_report(args, model, vocab, pairs, state, out_dir, data_dir, device, t_start, log)


if __name__ == "__main__":
    run_cli(main)
