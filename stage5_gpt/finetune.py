"""Fine-tune a pre-trained GPT to classify SST-2 sentences: the "pre-train, then fine-tune" step.

    python stage5_gpt/finetune.py --checkpoint runs/stage5_gpt/wikitext2/best.pt                  # pre-trained
    python stage5_gpt/finetune.py --checkpoint runs/stage5_gpt/wikitext2/best.pt --from-scratch   # same model, random
    python stage5_gpt/finetune.py --checkpoint ... --freeze                                      # train the head only

The sentence is read by the GPT as it is; a linear head reads the hidden state of its last token (with causal attention,
the only position that has seen the whole sentence) and gives two logits, negative and positive (Radford et al. 2018
put a classifier on the last token in the same way). The whole network is trained with a small learning rate, so the
pre-trained weights move only a little. --from-scratch builds the same network with random weights and the same
tokenizer: the difference in dev accuracy is what pre-training bought. --freeze trains only the head (a linear probe of
what pre-training learnt).

The best epoch is chosen on a validation split held out from the training sentences (--val-size of them), never on
dev: dev is the test set here (GLUE's test labels are not public), and choosing on it would flatter the figure.
SST-2's training rows are the phrases of about 8,500 sentences, so a random held-out row is nearly always a phrase of
a training row; `sentence_split` holds out whole sentences instead and drops their phrases from train, so that
validation looks like dev.
"""
from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/finetune.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (REPO_ROOT, UserError, add_common_args, catch_stop_signals, get_device, get_logger,
                            load_checkpoint, note_command, plot_curves, positive_float, positive_int, probability,
                            resolve_data_dir, rng_state, run_cli, save_checkpoint, set_rng_state, set_seed,
                            write_result)
from stage5_gpt.data import EOT, CharTokenizer, load_sst2, load_tokenizer, tokenizer_fingerprint
from stage5_gpt.evaluate import load_model
from stage5_gpt.model import GPT, GPTConfig

STAGE = "stage5_gpt"
QUICK_TRAIN, QUICK_DEV = 2_000, 200
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")


class GPTClassifier(nn.Module):
    """A GPT body and a linear head on the hidden state of each sentence's last real token."""

    def __init__(self, gpt: GPT, n_classes: int = 2):
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.cfg.n_embd, n_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T), right-padded; lengths (B,) -> logits (B, n_classes). The pads come after the last real token,
        and attention is causal, so they change nothing in its hidden state."""
        hidden = self.gpt.hidden_states(ids)                                  # (B, T, C)
        last = hidden[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, C)
        return self.head(last)                                                # (B, n_classes)


def encode(tok, sentences: list[str], max_len: int) -> list[list[int]]:
    """Each sentence as ids, cut to its first max_len tokens; characters a char tokenizer lacks are dropped."""
    if isinstance(tok, CharTokenizer):
        return [tok.encode("".join(c for c in s if c in tok.stoi))[:max_len] or [0] for s in sentences]
    return [tok.encode(s)[:max_len] or [tok.token_to_id(EOT)] for s in sentences]


def sentence_split(texts: list[str], n_val: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train rows, val rows) for SST-2's train set, which holds every phrase of its sentences. Validation takes n_val
    whole sentences (rows no other row contains, in a random order); train keeps every other row except the phrases
    inside a validation sentence, whose labels would give its answer away."""
    words = [t.split() for t in texts]
    padded = [f" {' '.join(w)} " for w in words]  # spaces around: "art" is not inside "party"
    having: dict[str, list[int]] = {}             # word -> the rows that hold it
    for i, w in enumerate(words):
        for word in set(w):
            having.setdefault(word, []).append(i)

    def whole(i: int) -> bool:  # only the rows with its rarest word can contain row i
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
    return [i for i in range(len(texts)) if i not in held and padded[i][1:-1] not in inside], val


def make_batch(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids.to(device), lengths.to(device)  # (B, T), (B,)


def length_batches(seqs: list[list[int]], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """One epoch's batches, each of sentences of similar length. make_batch pads a batch to its longest sentence, and
    SST-2 mixes 3-token phrases with 60-token sentences, so random batches would spend much of their time on padding.
    Shuffle, sort each pool of `pool` batches by length, cut it into batches, shuffle the batches: every sentence once
    per epoch, a new order each epoch, and the same rng state gives the same batches (what an exact --resume needs)."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    size = pool * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size], key=lambda i: len(seqs[i]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


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


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """A fine-tuned classifier (this script's best.pt) as a plain function: texts -> class probabilities (N, 2).
    The course's capstone (scripts/compare_classifiers.py) times every stage's classifier through such a function."""
    device = torch.device(device)
    ckpt = load_checkpoint(checkpoint, stage=STAGE)
    if ckpt.get("task") != "sst2":
        raise UserError(f"{checkpoint} is not a fine-tuned classifier (make one with stage5_gpt/finetune.py)")
    tok_path = Path(checkpoint).parent / ckpt["data"]["tokenizer"]
    tok = load_tokenizer(tok_path)
    if tokenizer_fingerprint(tok_path) != ckpt["data"]["fingerprint"]:
        raise UserError(f"the tokenizer beside {checkpoint} is not the one it was trained with (fingerprints differ)")
    config = GPTConfig(**ckpt["config"])
    model = GPTClassifier(GPT(config))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    max_len = min(ckpt["args"].get("max_len") or config.block_size, config.block_size)
    pad_id = 0 if isinstance(tok, CharTokenizer) else tok.token_to_id(EOT)

    @torch.no_grad()  # on the function it returns: a decorator on load_predictor would end before predict runs
    def predict(texts: list[str]) -> torch.Tensor:
        ids, lengths = make_batch(encode(tok, list(texts), max_len), pad_id, device)   # (N, T), (N,)
        return model(ids, lengths).float().softmax(-1).cpu()                           # (N, 2)
    return predict


def lr_at(step: int, args, total_steps: int) -> float:
    """Linear warmup to --lr, then a straight line down to 0 at the last step (BERT's and GPT's fine-tuning schedule)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    return args.lr * max(0.0, (total_steps - step) / max(1, total_steps - args.warmup_steps))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fine-tune a pre-trained GPT on SST-2 (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/stage5_gpt/wikitext2/best.pt",
                   help="the pre-trained GPT (train.py's best.pt); its tokenizer sits beside it")
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
    p.add_argument("--result", default=None, help="result JSON (default: stage5_gpt/results/<run name>.json; "
                                                  "<out-dir>/result.json for smoke runs)")
    args = p.parse_args(argv)
    if args.from_scratch and args.freeze:
        p.error("--freeze keeps random weights fixed with --from-scratch; use one of them")
    return args


def run_name(args) -> str:
    return "sst2_" + ("scratch" if args.from_scratch else "probe" if args.freeze else "finetune")


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out_dir = args.out_dir.format(name=run_name(args))
    out_dir = Path(args.out_dir)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE)
        if ckpt.get("task") != "sst2":
            raise UserError(f"{out_dir / 'last.pt'} is not a fine-tuning checkpoint")
        args = argparse.Namespace(**{**vars(args), **ckpt["args"], **{k: getattr(args, k) for k in RESUMABLE}})
    log = get_logger(STAGE, out_dir / "finetune.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- the pre-trained body (or its random twin) and the head
    body, tok, pre = load_model(args.checkpoint, "cpu")
    tok_src, tok_dst = Path(args.checkpoint).parent / pre["data"]["tokenizer"], out_dir / pre["data"]["tokenizer"]
    if tok_src.resolve() != tok_dst.resolve():
        shutil.copyfile(tok_src, tok_dst)  # best.pt names it: the classifier travels with its tokenizer
    config = GPTConfig(**{**pre["config"], "dropout": args.dropout})
    gpt = GPT(config)
    if not args.from_scratch:
        gpt.load_state_dict(body.state_dict())
    model = GPTClassifier(gpt).to(device)
    if args.freeze:
        gpt.requires_grad_(False)
    pad_id = 0 if isinstance(tok, CharTokenizer) else tok.token_to_id(EOT)

    # ---- data
    data_dir = resolve_data_dir(args.data_dir)
    max_len = min(args.max_len or config.block_size, config.block_size)
    data, texts = {}, {}
    for split in ("train", "dev"):
        sentences, labels = load_sst2(data_dir, split)
        if args.quick:
            n = QUICK_TRAIN if split == "train" else QUICK_DEV
            sentences, labels = sentences[:n], labels[:n]
        texts[split] = sentences
        data[split] = (encode(tok, sentences, max_len), labels)
    seqs, labels = data.pop("train")  # whole training sentences become the validation split
    train_rows, val_rows = sentence_split(texts["train"], min(args.val_size, len(labels) // 5), random.Random(0))
    data["val"] = ([seqs[i] for i in val_rows], [labels[i] for i in val_rows])
    data["train"] = ([seqs[i] for i in train_rows], [labels[i] for i in train_rows])
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
    note_command(state, "stage5_gpt/finetune.py", argv)  # the checkpoints keep it: results name the first

    def checkpoint(path: Path, with_optimizer: bool = True) -> None:
        obj = {"stage": STAGE, "task": "sst2", "config": config.to_dict(), "args": vars(args),
               "model": model.state_dict(), "state": state, "rng": rng_state(), "data": pre["data"]}
        if with_optimizer:
            obj["optimizer"] = optimizer.state_dict()
        save_checkpoint(obj, path)

    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop
    seqs, labels = data["train"]
    t_loop = time.time() - state["train_seconds"]
    try:
        model.train()
        while state["epoch"] < args.epochs and not stop["by"]:
            # fixed by (seed, epoch): resumable mid-epoch
            batches = length_batches(seqs, args.batch_size, random.Random(args.seed + state["epoch"]))
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(state["step"], args, total_steps)
                ids, lengths = make_batch([seqs[i] for i in idx], pad_id, device)
                loss = F.cross_entropy(model(ids, lengths), torch.tensor([labels[i] for i in idx], device=device))
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {state['step'] + 1}; "
                                    f"try a lower --lr (now {args.lr}), a longer --warmup-steps or a smaller --clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, args.clip)
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
            state["train_seconds"] = time.time() - t_loop
            val = evaluate(model, *data["val"], pad_id, device)
            t_loop = time.time() - state["train_seconds"]
            state["epoch"] += 1
            state["batch"] = 0
            state["history"]["val_accuracy"].append([state["step"], val["accuracy"]])
            recent = [v for _, v in state["history"]["train_loss"][-len(batches):]]
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val accuracy "
                     f"{val['accuracy']:.4f} | {state['train_seconds']:.0f}s")
            if val["accuracy"] > state["best_acc"]:
                state["best_acc"], state["best_step"] = val["accuracy"], state["step"]
                checkpoint(out_dir / "best.pt", with_optimizer=False)
            checkpoint(out_dir / "last.pt")
    finally:
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        checkpoint(out_dir / "last.pt")
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python stage5_gpt/finetune.py --out-dir {out_dir} --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)
        return

    # ---- final report: the epoch that was best on val, scored once on dev
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE)["model"])
    dev = evaluate(model, *data["dev"], pad_id, device)
    metrics = {"accuracy": dev["accuracy"], "macro_f1": dev["macro_f1"]}
    log.info(f"best epoch on val (step {state['best_step']}): dev accuracy {dev['accuracy']:.4f} | "
             f"macro-F1 {dev['macro_f1']:.4f}")
    smoke = args.quick or args.max_steps is not None
    result_path = Path(args.result) if args.result else (
        out_dir / "result.json" if smoke else REPO_ROOT / STAGE / "results" / f"{run_name(args)}.json")
    write_result(result_path, stage=STAGE, dataset="sst2", split="dev", metrics=metrics, headline="accuracy",
                 train_seconds=state["train_seconds"], device=device, params=sum(p.numel() for p in model.parameters()),
                 command=state["commands"],
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "pretrained": None if args.from_scratch else str(args.checkpoint),
                        "pretrained_on": {"dataset": pre["dataset"], "step": pre["state"]["step"]},
                        "epochs_run": state["epoch"],
                        "steps": state["step"], "best_step": state["best_step"], "best_val_accuracy": state["best_acc"],
                        "sizes": {k: len(v[1]) for k, v in data.items()}, "config": config.to_dict(),
                        "hparams": {k: v for k, v in vars(args).items() if k not in RESUMABLE}})
    h = state["history"]
    plot_curves(result_path.with_suffix(".png"), {
        "loss": {"train (per step)": tuple(zip(*h["train_loss"]))},
        "accuracy": {"val (held out from train)": tuple(zip(*h["val_accuracy"]))},
    }, title=f"GPT on SST-2 ({run_name(args)}): dev accuracy {metrics['accuracy']}")
    log.info(f"wrote {result_path} and its plot")


if __name__ == "__main__":
    run_cli(main)
