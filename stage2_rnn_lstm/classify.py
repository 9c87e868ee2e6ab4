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
best.pt (the epoch best on validation, what load_predictor reads), last.pt (after every epoch, on Ctrl-C, SIGTERM and
--max-steps, to --resume exactly), vocab.json and classify.log. The result file is
stage2_rnn_lstm/results/sst2_<model-type>.json with its plot (--quick or --max-steps runs: <out-dir>/result.json).
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

from scripts.common import (REPO_ROOT, UserError, add_common_args, catch_stop_signals, get_device, get_logger,
                            load_checkpoint, note_command, plot_curves, positive_float, positive_int, probability,
                            resolve_data_dir, rng_state, run_cli, save_checkpoint, set_rng_state, set_seed,
                            write_result)
from stage2_rnn_lstm.data import SentenceVocab, length_batches, load_sst2, make_batch, sentence_split
from stage2_rnn_lstm.model import ClassifierConfig, RNNClassifier

STAGE = "stage2_rnn_lstm"
KIND = "sst2_classifier"                   # checkpoints say what they hold: the language model's have no "kind"
QUICK_TRAIN, QUICK_DEV = 2_000, 200        # --quick: rows of train and dev
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # flags a resumed run may change


# ----------------------------------------------------------------------------- scoring and prediction

@torch.no_grad()
def predict_proba(model: RNNClassifier, seqs: list[list[int]], device, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N, n_classes) in the order of `seqs`, computed in batches of similar length."""
    was_training = model.training
    model.eval()
    probs = torch.empty(len(seqs), model.config.n_classes)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, lengths = make_batch([seqs[i] for i in idx], model.config.pad_id)  # (B, T), (B,)
        probs[idx] = model(ids.to(device), lengths.to(device)).softmax(-1).float().cpu()
    model.train(was_training)
    return probs


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


def load_classifier(checkpoint: str | Path, device: torch.device) -> tuple[RNNClassifier, SentenceVocab, dict]:
    """Model (in eval mode), vocabulary and checkpoint; the vocabulary is the vocab.json beside the checkpoint."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE)
    if ckpt.get("kind") != KIND:
        raise UserError(f"{checkpoint} is a Stage 2 language-model checkpoint (train.py), not an SST-2 classifier "
                        f"(classify.py writes those)")
    vocab_path = Path(checkpoint).parent / ckpt["vocab"]["file"]
    vocab = SentenceVocab.load(vocab_path)
    if vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"{vocab_path} is not the vocabulary {checkpoint} was trained with (fingerprints differ)")
    try:
        model = RNNClassifier(ClassifierConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, ckpt


def load_predictor(checkpoint: str | Path = "runs/stage2_rnn_lstm/sst2_classifier/best.pt",
                   device: str | torch.device = "cpu"):
    """A function: list of sentences -> class probabilities (N, 2), column 0 negative, column 1 positive.

    For a script outside this stage (the capstone times inference per sentence with it): the sentences are tokenised
    and encoded with the run's own vocabulary, and read by the same model code that training used.
    """
    device = get_device(device) if isinstance(device, str) else torch.device(device)
    model, vocab, _ = load_classifier(checkpoint, device)

    def predict(sentences: list[str]) -> torch.Tensor:
        return predict_proba(model, [vocab.encode(s) for s in sentences], device)  # (N, 2)
    return predict


# ----------------------------------------------------------------------------- training

def lr_at(step: int, peak: float, total_steps: int) -> float:
    """Cosine decay from --lr to --lr / 10 at the last step (no warmup: Adam on a one-layer network starts fine)."""
    progress = min(1.0, step / max(1, total_steps))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a recurrent SST-2 sentence classifier (Stage 2).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, epochs=4, batch_size=64, lr=2e-3, out_dir="runs/stage2_rnn_lstm/sst2_classifier")
    p.add_argument("--model-type", "--model_type", choices=["rnn", "lstm", "gru"], default="lstm",
                   help="the recurrent cell (without --out-dir, rnn and gru runs write to sst2_classifier_rnn / _gru)")
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
                   help="result JSON path (default: stage2_rnn_lstm/results/sst2_<model-type>.json; "
                        "<out-dir>/result.json for --quick or --max-steps runs)")
    args = p.parse_args(argv)
    if args.weight_decay < 0:
        p.error("--weight-decay must be >= 0")
    given = [str(a).split("=")[0] for a in (sys.argv[1:] if argv is None else argv)]
    if args.model_type != "lstm" and "--out-dir" not in given:  # an rnn or gru run keeps the LSTM's checkpoints
        args.out_dir += f"_{args.model_type}"
    return args


def prepare_data(args, data_dir: Path, vocab: SentenceVocab | None, log):
    """Id lists and labels of train, val (whole sentences held out from train) and dev; the vocabulary of train."""
    texts = {s: load_sst2(data_dir, s) for s in ("train", "dev")}
    if args.quick:
        texts = {s: (x[:n], y[:n]) for (s, (x, y)), n in zip(texts.items(), (QUICK_TRAIN, QUICK_DEV))}
    sentences, labels = texts["train"]
    n_val = args.val_size or min(500, len(sentences) // 10)
    if not 1 <= n_val < len(sentences):
        raise UserError(f"--val-size {n_val} must leave training rows: train has {len(sentences)}")
    train_rows, val_rows = sentence_split(sentences, n_val, random.Random(0))  # fixed, whatever --seed is
    vocab = vocab or SentenceVocab.build([sentences[i] for i in train_rows], args.min_freq)
    data = {"train": ([vocab.encode(sentences[i]) for i in train_rows], [labels[i] for i in train_rows]),
            "val": ([vocab.encode(sentences[i]) for i in val_rows], [labels[i] for i in val_rows]),
            "dev": ([vocab.encode(s) for s in texts["dev"][0]], texts["dev"][1])}
    dropped = len(sentences) - len(train_rows) - len(val_rows)
    unk = sum(i == 1 for ids in data["dev"][0] for i in ids) / max(1, sum(len(ids) for ids in data["dev"][0]))
    log.info(f"SST-2: {len(train_rows):,} train / {len(val_rows):,} val (whole sentences from train; {dropped:,} of "
             f"their phrases left out of train) / {len(data['dev'][1]):,} dev | vocabulary {len(vocab):,} words "
             f"(min freq {args.min_freq}), {unk:.1%} of dev's words are <unk>")
    return data, vocab


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE)
        if ckpt.get("kind") != KIND or "optimizer" not in ckpt:
            raise UserError(f"{out_dir / 'last.pt'} is not the last.pt of a classify.py run")
        if ckpt["args"]["model_type"] != args.model_type:
            raise UserError(f"{out_dir / 'last.pt'} is a {ckpt['args']['model_type']} run, not {args.model_type}")
        args = argparse.Namespace(**{**vars(args), **ckpt["args"], **{k: getattr(args, k) for k in RESUMABLE}})
    log = get_logger(STAGE, out_dir / "classify.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data
    data_dir = resolve_data_dir(args.data_dir)
    vocab = SentenceVocab.load(out_dir / "vocab.json") if ckpt else None
    if ckpt and vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"{out_dir / 'vocab.json'} does not belong to {out_dir / 'last.pt'} (fingerprints differ)")
    data, vocab = prepare_data(args, data_dir, vocab, log)
    if not ckpt:
        out_dir.mkdir(parents=True, exist_ok=True)
        vocab.save(out_dir / "vocab.json")
    seqs, labels = data["train"]
    steps_per_epoch = math.ceil(len(seqs) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch

    # ---- model and optimizer
    config = ClassifierConfig(vocab_size=len(vocab), model_type=args.model_type, emb_dim=args.emb_dim,
                              hidden_dim=args.hidden_dim, n_layers=args.n_layers, dropout=args.dropout, impl=args.impl)
    model = RNNClassifier(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
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
    note_command(state, "stage2_rnn_lstm/classify.py", argv)  # the checkpoints keep it: results name the first

    def checkpoint(path: Path, with_optimizer: bool = True) -> None:
        obj = {"stage": STAGE, "kind": KIND, "dataset": "sst2", "config": config.to_dict(), "args": vars(args),
               "model": model.state_dict(), "state": state, "rng": rng_state(),
               "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}}
        if with_optimizer:
            obj["optimizer"] = optimizer.state_dict()
        save_checkpoint(obj, path)

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
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                state["step"] += 1
                state["batch"] += 1
                state["history"]["train_loss"].append([state["step"], round(loss.item(), 5)])
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
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
            if state["best_acc"] is None or val["accuracy"] > state["best_acc"]:
                state.update(best_acc=val["accuracy"], best_step=state["step"], best_epoch=state["epoch"])
                checkpoint(out_dir / "best.pt", with_optimizer=False)
            checkpoint(out_dir / "last.pt")
    finally:
        restore_signals()
    state["train_seconds"] = time.time() - t_loop
    if stop["by"]:
        if state["best_acc"] is None:
            # no epoch finished yet: best.pt holds these weights (a --max-steps run reports them), and the first
            # finished epoch replaces them
            state["best_step"] = state["step"]
            checkpoint(out_dir / "best.pt", with_optimizer=False)
        checkpoint(out_dir / "last.pt")
        resume = f"python stage2_rnn_lstm/classify.py --model-type {args.model_type} --out-dir {out_dir}" \
                 + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " --resume"
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. "
                 f"Continue with: {resume}")
        if stop["by"] != "max_steps":
            sys.exit(130)

    # ---- final report: the epoch that was best on val, scored once on dev
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE)["model"])
    metrics = evaluate(model, *data["dev"], device)
    chosen = (f"best epoch on val: {state['best_epoch']} (step {state['best_step']})" if state["best_acc"] is not None
              else f"no epoch finished: the weights at step {state['best_step']}")
    log.info(f"{chosen} | dev accuracy {metrics['accuracy']:.4f} | dev macro-F1 {metrics['macro_f1']:.4f}")
    smoke = args.quick or args.max_steps is not None
    result_path = Path(args.result) if args.result else (
        out_dir / "result.json" if smoke else REPO_ROOT / STAGE / "results" / f"sst2_{args.model_type}.json")
    write_result(result_path, stage=STAGE, dataset="sst2", split="dev", metrics=metrics, headline="accuracy",
                 train_seconds=state["train_seconds"], device=device, params=model.num_params(),
                 command=state["commands"],
                 extra={"task": "sst2", "wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "epochs_run": state["epoch"], "steps": state["step"], "best_epoch": state["best_epoch"],
                        "best_step": state["best_step"], "best_val_accuracy": state["best_acc"],
                        "sizes": {k: len(v[1]) for k, v in data.items()}, "vocab_size": len(vocab),
                        "config": config.to_dict(),
                        "hparams": {k: v for k, v in vars(args).items() if k not in RESUMABLE},
                        "data_dir": str(data_dir)})
    h = state["history"]
    panels = {"loss": {"train (per step)": tuple(zip(*h["train_loss"]))}}
    if h["val_accuracy"]:
        panels["accuracy"] = {"val (held out from train)": tuple(zip(*h["val_accuracy"]))}
    plot_curves(result_path.with_suffix(".png"), panels,
                title=f"{args.model_type.upper()} on SST-2, from scratch: dev accuracy {metrics['accuracy']}")
    log.info(f"wrote {result_path} and its plot")


if __name__ == "__main__":
    run_cli(main)
