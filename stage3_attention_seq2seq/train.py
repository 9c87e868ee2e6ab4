"""Train a GRU encoder-decoder translator with Bahdanau, Luong or no attention, on Multi30k (or Tatoeba).

    python stage3_attention_seq2seq/train.py                          # en -> fr, Bahdanau attention
    python stage3_attention_seq2seq/train.py --attention none         # the same model without attention
    python stage3_attention_seq2seq/train.py --src de --tgt en        # any pair of en / de / fr
    python stage3_attention_seq2seq/train.py --quick                  # a smoke run on small slices
    python stage3_attention_seq2seq/train.py --resume                 # continue an interrupted run exactly

Each epoch ends with the validation loss and the validation BLEU (greedy decoding); the checkpoint with the
best validation BLEU is kept as best.pt, and the final report scores it on the test sets with beam search.
Checkpoints (<out-dir>/last.pt after every epoch, on Ctrl-C, SIGTERM and --max-steps) hold the model,
optimizer, random-number states and the position inside the epoch, so a resumed run repeats the losses an
uninterrupted run would have had. Loss, learning rate, gradient norm and tokens/s (source and target) go to
TensorBoard (`tensorboard --logdir runs`), and every validation to <out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage3_attention_seq2seq/train.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, catch_stop_signals, get_device, get_logger, load_checkpoint,
                            merge_resumed_args, note_command, parse_with_quick_defaults, plot_curves, portable,
                            positive_float, positive_int, probability, reference_run_name, resolve_data_dir,
                            resolved_config, rng_state, run_cli, RunTracker, save_checkpoint, set_rng_state,
                            set_seed, write_result)
from stage3_attention_seq2seq.data import DATASETS, Vocab, batch_order, check_pair, dataset_info, load_pairs, make_batch
from stage3_attention_seq2seq.decoding import bleu, translate
from stage3_attention_seq2seq.model import ATTENTIONS, Seq2Seq, Seq2SeqConfig, init_weights
from stage3_attention_seq2seq.reference_runs import REFERENCE_RUNS

STAGE, SCRIPT, KIND = "stage3_attention_seq2seq", "stage3_attention_seq2seq/train.py", "translator"
QUICK_TRAIN, QUICK_EVAL = 2_000, 100   # --quick: sentence pairs of train and of each evaluation split
QUICK_LR, QUICK_WARMUP = 3e-3, 10      # --quick without --lr / --warmup-steps: a few dozen steps must learn
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # flags a resumed run may change


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train an attention encoder-decoder translator (Stage 3).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="multi30k", choices=list(DATASETS))
    p.add_argument("--src", default="en", help="source language (en, de or fr; Tatoeba: en or fr)")
    p.add_argument("--tgt", default="fr", help="target language")
    add_common_args(p, epochs=10, batch_size=64, lr=1e-3, out_dir="runs/stage3_attention_seq2seq/{name}")
    p.add_argument("--attention", choices=ATTENTIONS, default="bahdanau",
                   help="bahdanau (additive), luong (multiplicative) or none (one context vector)")
    p.add_argument("--emb-dim", type=positive_int, default=256, help="word embedding size")
    p.add_argument("--hidden-dim", type=positive_int, default=512,
                   help="decoder state size (encoder: half per direction)")
    p.add_argument("--dropout", type=probability, default=0.3)
    p.add_argument("--min-freq", type=positive_int, default=2, help="rarer training words become <unk>")
    p.add_argument("--label-smoothing", type=probability, default=0.1)
    p.add_argument("--teacher-forcing", type=positive_float, default=1.0,
                   help="probability of feeding the reference previous word (1 = always)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--warmup-steps", type=int, default=200, help="linear warmup, then cosine decay to lr/10")
    p.add_argument("--beam-size", type=positive_int, default=5, help="beam width for the final test scores")
    p.add_argument("--length-penalty", type=float, default=0.6, help="alpha in ((5 + length) / 6) ** alpha")
    p.add_argument("--max-len", type=positive_int, default=80, help="training pairs longer than this are skipped")
    p.add_argument("--result", default=None,
                   help="result JSON path (default: <out-dir>/result.json); a reference run's result is published "
                        "with `python scripts/publish.py <out-dir>/result.json`")
    args = parse_with_quick_defaults(p, argv, {"lr": QUICK_LR, "warmup_steps": QUICK_WARMUP})
    args.out_dir = args.out_dir.format(name=run_name(args))
    if args.hidden_dim % 2:
        p.error(f"--hidden-dim must be even (the encoder's two directions share it), got {args.hidden_dim}")
    if args.teacher_forcing > 1:
        p.error(f"--teacher-forcing is a probability in (0, 1], got {args.teacher_forcing}")
    if args.warmup_steps < 0:
        p.error("--warmup-steps must be >= 0")
    return args


def run_name(args) -> str:
    """multi30k_en_fr for the default Bahdanau model; _luong / _noattn mark the other attentions."""
    suffix = {"bahdanau": "", "luong": "_luong", "none": "_noattn"}[args.attention]
    return f"{args.dataset}_{args.src}_{args.tgt}{suffix}"


def resume_run(args: argparse.Namespace) -> tuple[argparse.Namespace, dict, tuple[Vocab, Vocab]]:
    """--resume: the interrupted run's last.pt and vocabularies from --out-dir, and the settings it started with
    (only the flags in RESUMABLE come from this command line)."""
    out_dir = Path(args.out_dir)
    ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE, kind=KIND)
    saved = argparse.Namespace(**ckpt["args"])
    if run_name(saved) != run_name(args):
        raise UserError(f"{out_dir / 'last.pt'} is a {run_name(saved)} run, not {run_name(args)}")
    vocabs = (Vocab.load(out_dir / "vocab_src.json"), Vocab.load(out_dir / "vocab_tgt.json"))
    if [v.fingerprint() for v in vocabs] != ckpt["vocab"]["fingerprints"]:
        raise UserError(f"the vocabularies in {out_dir} do not belong to {out_dir / 'last.pt'} (fingerprints differ)")
    return merge_resumed_args(args, ckpt["args"], RESUMABLE), ckpt, vocabs


def prepare_data(args, data_dir: Path, vocabs: tuple[Vocab, Vocab] | None, log):
    """Raw pairs of every split, the two vocabularies (train only) and the encoded training pairs."""
    info = dataset_info(args.dataset)
    check_pair(args.dataset, args.src, args.tgt)
    pairs = {s: load_pairs(args.dataset, data_dir, s, args.src, args.tgt) for s in info["splits"]}
    if args.quick:
        pairs = {s: v[: QUICK_TRAIN if s == "train" else QUICK_EVAL] for s, v in pairs.items()}
    if vocabs is None:
        vocabs = (Vocab.build([s for s, _ in pairs["train"]], args.src, args.min_freq),
                  Vocab.build([t for _, t in pairs["train"]], args.tgt, args.min_freq))
    src_vocab, tgt_vocab = vocabs
    train = [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs["train"]]
    train = [(s, t) for s, t in train if len(s) <= args.max_len and len(t) <= args.max_len]
    log.info(f"{args.dataset} {args.src}->{args.tgt}: " + " / ".join(f"{len(v):,} {s}" for s, v in pairs.items())
             + f" pairs | vocabularies {len(src_vocab):,} {args.src}, {len(tgt_vocab):,} {args.tgt} "
             f"(min freq {args.min_freq}) | {len(train):,} training pairs after --max-len")
    return pairs, vocabs, train


@torch.no_grad()
def evaluate_loss(model, src_vocab: Vocab, tgt_vocab: Vocab, pairs, device, batch_size: int = 128) -> float:
    """Mean cross-entropy per target token (no label smoothing) with teacher forcing."""
    model.eval()
    data = [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs]
    total, count = 0.0, 0
    for idx in batch_order([len(s) for s, _ in data], batch_size, seed=0, shuffle=False):
        batch = {k: v.to(device) for k, v in make_batch([data[i][0] for i in idx], [data[i][1] for i in idx]).items()}
        _, loss, _ = model(batch["src"], batch["src_len"], batch["tgt_in"], batch["tgt_out"])
        n = (batch["tgt_out"] != 0).sum().item()
        total, count = total + loss.item() * n, count + n
    return total / count


def score(model, src_vocab, tgt_vocab, pairs, device, beam_size: int = 1, alpha: float = 0.6) -> dict:
    """Translate the sources and score them against the raw references: cased and lowercased sacreBLEU."""
    hyps = [h["text"] for h in translate(model, src_vocab, tgt_vocab, [s for s, _ in pairs], device, beam_size, alpha)]
    refs = [t for _, t in pairs]
    cased, signature = bleu(hyps, refs)
    lower, signature_lc = bleu(hyps, refs, lowercase=True)
    return {"bleu": cased, "bleu_lc": lower, "signature": signature, "signature_lc": signature_lc, "hypotheses": hyps}


def lr_at(step: int, args, total_steps: int) -> float:
    """Linear warmup to --lr, then cosine decay to --lr / 10 at the last step."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_run(path: Path, args, model: Seq2Seq, vocabs: tuple[Vocab, Vocab], state: dict, optimizer=None) -> None:
    """Write a checkpoint: the model, its config and settings, the loop's state and every random-number state.
    last.pt also holds the optimizer (`--resume` needs it); best.pt, the model to use, does not."""
    obj = {"stage": STAGE, "kind": KIND, "dataset": args.dataset, "config": model.cfg.to_dict(), "args": vars(args),
           "model": model.state_dict(), "state": state, "rng": rng_state(),
           "vocab": {"files": ["vocab_src.json", "vocab_tgt.json"], "fingerprints": [v.fingerprint() for v in vocabs]}}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    save_checkpoint(obj, path)


def stop_message(by: str, args, step: int) -> str:
    """What the log says when the loop stopped before the end (a signal or --max-steps), and how to continue."""
    flags = " ".join(f"--{k} {getattr(args, k)}" for k in ("dataset", "src", "tgt", "attention"))
    return (f"stopped by {by} at step {step}; saved {Path(args.out_dir) / 'last.pt'}. "
            f"Continue with: python {SCRIPT} {flags} --out-dir {args.out_dir} --resume")


def final_report(args, model: Seq2Seq, vocabs: tuple[Vocab, Vocab], pairs: dict, state: dict, device: torch.device,
                 data_dir: Path, t_start: float, log) -> None:
    """The best checkpoint (by validation BLEU), beam search on every test set and on val: hypotheses, the result
    file and its curves."""
    out_dir = Path(args.out_dir)
    src_vocab, tgt_vocab = vocabs
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind=KIND)["model"])
    test_splits = dataset_info(args.dataset)["test_splits"]
    metrics, signature = {}, None
    for split in test_splits + ["val"]:
        s = score(model, src_vocab, tgt_vocab, pairs[split], device, args.beam_size, args.length_penalty)
        prefix = "" if split == test_splits[0] else f"{split}_"
        metrics.update({f"{prefix}bleu": s["bleu"], f"{prefix}bleu_lc": s["bleu_lc"]})
        signature = {"cased": s["signature"], "lowercased": s["signature_lc"]}
        (out_dir / f"{split}.hyp.txt").write_text("\n".join(s["hypotheses"]) + "\n", encoding="utf-8")
    log.info(f"best checkpoint (step {state['best_step']}, beam {args.beam_size}): "
             + " | ".join(f"{k} {v}" for k, v in metrics.items()))
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    headline = "bleu" if args.src != "de" else "bleu_lc"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset=f"{args.dataset} {args.src}-{args.tgt}", split=test_splits[0],
                 metrics=metrics, headline=headline, train_seconds=state["train_seconds"], device=device,
                 params=model.num_params(), command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "sacrebleu_signature": signature, "decoding": {"beam_size": args.beam_size,
                                                                       "length_penalty": args.length_penalty},
                        "epochs_run": state["epoch"], "steps": state["step"], "best_step": state["best_step"],
                        "best_val_bleu_greedy": state["best_val_bleu"],
                        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9)),
                        "vocab_sizes": {args.src: len(src_vocab), args.tgt: len(tgt_vocab)},
                        "config": model.cfg.to_dict(), "hparams": resolved_config(args),
                        "sizes": {k: len(v) for k, v in pairs.items()}, "data_dir": portable(str(data_dir.resolve()))})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss (nats/token)": {"train (per step, smoothed labels)": tuple(zip(*h["train_loss"])),
                              "val": tuple(zip(*h["val_loss"]))},
        "val BLEU (greedy)": {"val": tuple(zip(*h["val_bleu"]))},
    }, title=f"{args.attention} attention, {args.dataset} {args.src}->{args.tgt}\n{headline} {metrics[headline]}")
    log.info(f"wrote {result_path} and its plot" + (f" (reference run {run!r}: publish it with "
                                                     f"`python scripts/publish.py {result_path}`)" if run else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    ckpt, vocabs = None, None
    if args.resume:  # the run continues with the settings it started with
        args, ckpt, vocabs = resume_run(args)
    out_dir = Path(args.out_dir)
    log = get_logger(STAGE, out_dir / "train.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data
    data_dir = resolve_data_dir(args.data_dir)
    pairs, vocabs, train = prepare_data(args, data_dir, vocabs, log)
    src_vocab, tgt_vocab = vocabs
    if not ckpt:
        out_dir.mkdir(parents=True, exist_ok=True)
        src_vocab.save(out_dir / "vocab_src.json")
        tgt_vocab.save(out_dir / "vocab_tgt.json")
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch

    # ---- model and optimizer
    config = Seq2SeqConfig(src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab), emb_dim=args.emb_dim,
                           hidden_dim=args.hidden_dim, attention=args.attention, dropout=args.dropout)
    model = Seq2Seq(config).to(device)
    init_weights(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0,
                                  fused=device.type in ("cpu", "cuda"))
    log.info(f"model: {model.num_params():,} parameters, {config}")
    log.info(f"{steps_per_epoch} steps per epoch ({args.batch_size} sentence pairs each), {total_steps} in all")

    state = {"epoch": 0, "batch": 0, "step": 0, "tokens": 0, "best_val_bleu": -1.0, "best_step": 0,
             "train_seconds": 0.0,
             "history": {"train_loss": [], "val_loss": [], "val_bleu": []}}  # lists of [step, value]
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

    t_loop = time.time() - state["train_seconds"]
    try:
        while state["epoch"] < args.epochs and not stop["by"]:
            model.train()
            # the epoch's batches depend only on (seed, epoch): a resumed run rebuilds the same list
            batches = batch_order([len(s) for s, _ in train], args.batch_size, seed=args.seed + state["epoch"])
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
                t_step = time.time()
                batch = make_batch([train[i][0] for i in idx], [train[i][1] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items()}
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(state["step"], args, total_steps)
                _, loss, _ = model(batch["src"], batch["src_len"], batch["tgt_in"], batch["tgt_out"],
                                   label_smoothing=args.label_smoothing, teacher_forcing=args.teacher_forcing)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}) or --clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                n_tokens = int((batch["tgt_out"] != 0).sum()) + int(batch["src_len"].sum())
                state["tokens"] += n_tokens
                state["history"]["train_loss"].append([state["step"], round(loss.item(), 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                tracker.train(state["step"], loss=loss.item(), lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                              tokens_per_second=n_tokens / (time.time() - t_step))
                if args.max_steps and state["step"] >= args.max_steps:
                    stop["by"] = "max_steps"
                if stop["by"]:
                    break
            bar.close()
            if stop["by"]:
                break
            # ---- end of epoch: validation loss and BLEU (greedy), keep the best by BLEU
            state["train_seconds"] = time.time() - t_loop
            val_loss = evaluate_loss(model, src_vocab, tgt_vocab, pairs["val"], device)
            val = score(model, src_vocab, tgt_vocab, pairs["val"], device)  # greedy decoding
            val_bleu = val["bleu"]
            t_loop = time.time() - state["train_seconds"]  # validation time is not training time
            tracker.evaluation(state["step"], "val", state["train_seconds"], loss=val_loss, bleu=val_bleu,
                               bleu_lc=val["bleu_lc"])
            h = state["history"]
            h["val_loss"].append([state["step"], round(val_loss, 5)])
            h["val_bleu"].append([state["step"], val_bleu])
            recent = [v for _, v in h["train_loss"][-len(batches):]]
            state["epoch"] += 1
            state["batch"] = 0
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val loss {val_loss:.4f} "
                     f"| val BLEU {val_bleu:.2f} | {state['train_seconds']:.0f}s")
            if val_bleu >= state["best_val_bleu"]:  # on a tie the later epoch wins (more training, same BLEU)
                state["best_val_bleu"], state["best_step"] = val_bleu, state["step"]
                save_run(out_dir / "best.pt", args, model, vocabs, state)
            save_run(out_dir / "last.pt", args, model, vocabs, state, optimizer)
    finally:
        tracker.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        save_run(out_dir / "last.pt", args, model, vocabs, state, optimizer)
        log.info(stop_message(stop["by"], args, state["step"]))
        if stop["by"] != "max_steps":
            sys.exit(130)
    if state["history"]["val_bleu"]:  # else no epoch finished: nothing to report yet
        final_report(args, model, vocabs, pairs, state, device, data_dir, t_start, log)


if __name__ == "__main__":
    run_cli(main)
