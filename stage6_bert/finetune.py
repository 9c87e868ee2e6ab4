"""Fine-tune the pre-trained BERT on a GLUE task: the second half of "pre-train, then fine-tune".

    python stage6_bert/finetune.py --task sst2                        # runs/stage6_bert/pretrain/best.pt, fine-tuned
    python stage6_bert/finetune.py --task sst2 --from-scratch         # the same network and tokenizer, random weights
    python stage6_bert/finetune.py --task stsb --epochs 5             # STS-B: a regression head, Pearson correlation
    python stage6_bert/finetune.py --task rte --quick                 # a smoke run on small slices
    python stage6_bert/finetune.py --task sst2 --pretrained all-MiniLM-L6-v2 --lr 5e-5   # real pre-trained weights
    python stage6_bert/finetune.py --task stsb --pretrained all-MiniLM-L6-v2 --pair-encoding bi --lr 2e-5

BERT reads "[CLS] sentence [SEP]" (or "[CLS] a [SEP] b [SEP]" for a pair, with segment ids 0 and 1), and a single
linear layer on the pooled [CLS] state gives the class scores (`BertClassifier`): cross-entropy for a classification
task, mean squared error for STS-B's similarity score (one output). Every weight is trained, with a small learning
rate, a linear warmup over the first --warmup-ratio of the steps and a linear decay to 0 (Devlin et al. 2019).
--from-scratch builds the same classifier with random weights and the same tokenizer: the gap between the two dev
figures is what pre-training bought.

Two ways to read a pair. By default BERT reads both sentences in one input (a cross-encoder: every word of one attends
to every word of the other). For STS-B, --pair-encoding bi encodes each sentence alone and scores the pair by the cosine
of the two mean-pooled vectors (a bi-encoder, model.BertBiEncoder, Sentence-BERT's recipe): no head at all, the
zero-shot scoring of similarity.py, trained. Sentence-embedding weights such as all-MiniLM-L6-v2 were trained for it.

Real weights. --pretrained names a Hugging Face BERT folder instead of --checkpoint: a folder, a name under
<data-dir>/pretrained/ (all-MiniLM-L6-v2 is in the course's data directory), or a hub id downloaded there when
missing (pretrained.py). The course's own Bert reads its config.json and model.safetensors, and its tokenizer.json
(the bert-base-uncased vocabulary, [CLS] 101, [SEP] 102) goes into --out-dir as the course's JSON, so that evaluate.py
and predict.py read the fine-tuned model like any other. --max-len may then be up to the checkpoint's
max_position_embeddings (512); the default 128 holds nearly every GLUE example. A checkpoint without a pooler gets a
new one, like the head.

Honest numbers. GLUE's test labels are private, so dev is our test set: it is scored once, at the end, with the epoch
that was best on a validation split held out from train (--val-size; by the task's headline metric). By default that
is 10% of train, at most 2,000 examples: WNLI 64, RTE 249, MRPC 367, STS-B 575, CoLA 855. The small tasks get a
proportion rather than a fixed count, so that enough is left to train on. SST-2 is different: its train set is every
phrase of the parse trees of about 6,900 movie-review sentences, so a random held-out example is nearly always a
phrase inside a training example (89% of them), and its score measures memory (val 0.91 while dev was 0.80). SST-2
holds out 500 whole sentences instead, like dev's, and drops every phrase inside them from train (`sentence_split`).
WNLI's dev set is adversarial to its train set, and BERT does not beat always answering the majority class (56.3%)
there either.

Outputs in --out-dir (default runs/stage6_bert/glue_<task>[_<weights>][_scratch][_seed<N>]/, see run_name): best.pt (the
chosen classifier, a "classifier" checkpoint that evaluate.py and predict.py read), last.pt (to --resume exactly),
tokenizer.json (copied from the pre-training run, or the real weights' vocabulary), finetune.log, <TASK>.tsv (the test
predictions in the format GLUE's server takes), and result.json with its plot; its "pretrained" says where the weights
came from (null for random ones) and its "max_len" the length used. The reference runs behind the published figures are
declared in reference_runs.py; `python scripts/publish.py <out-dir>/result.json` publishes one. The held-out split and
the batches are in glue.py, the classifier (BertClassifier) in model.py. Loss, learning rate, gradient norm and
examples/s go to TensorBoard (`tensorboard --logdir runs`), and every validation (all of the task's metrics) to
<out-dir>/metrics.jsonl.
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

from scripts.common import (UserError, add_common_args, autocast_for, catch_stop_signals, get_device, get_logger,
                            load_checkpoint, merge_resumed_args, note_command, plot_curves, portable, positive_float,
                            positive_int, probability, reference_command, reference_run_name, resolve_data_dir,
                            resolved_config, rng_state, run_cli, RunTracker, save_checkpoint, set_rng_state, set_seed,
                            write_result)
from stage6_bert.glue import (QUICK_ROWS, SPLITS, TASKS, compute_metrics, encode, get_task, length_batches, load_split,
                              make_batch, take, train_val_rows, write_predictions)
from stage6_bert.model import BertBiEncoder, BertClassifier, configure_optimizer
from stage6_bert.predict import load_pretrained, predict_rows
from stage6_bert.pretrained import load_pretrained_bert, short_name
from stage6_bert.reference_runs import BERT_CHECKPOINT, REFERENCE_RUNS
from stage6_bert.tokenizer import WordPieceTokenizer

STAGE = "stage6_bert"
SCRIPT = "stage6_bert/finetune.py"
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # from the command line on --resume
SEED = 1337  # add_common_args' default --seed: a run with another seed gets its own folder (run_name)
PAIR_ENCODINGS = ("cross", "bi")


def val_size(text: str) -> float:
    value = positive_float(text)
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"a fraction below 1 or a whole number of examples, got {text}")
    return value


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to the peak over `warmup` steps, then a straight line down to 0 at `total` (BERT's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fine-tune the pre-trained BERT on a GLUE task (Stage 6).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=list(TASKS), help="the GLUE task")
    p.add_argument("--checkpoint", default=None,
                   help=f"the course's pre-training checkpoint (its tokenizer.json sits beside it; default: "
                        f"{BERT_CHECKPOINT}); with --from-scratch only its config and tokenizer are used")
    p.add_argument("--pretrained", default=None, metavar="NAME",
                   help="real pre-trained weights instead of --checkpoint: a Hugging Face BERT folder, a name under "
                        "<data-dir>/pretrained/ (all-MiniLM-L6-v2), or a hub id downloaded there when missing")
    add_common_args(p, epochs=3, batch_size=32, lr=1e-4, out_dir="runs/stage6_bert/{name}")
    p.add_argument("--from-scratch", action="store_true",
                   help="random weights instead of the pre-trained ones (the same config and tokenizer)")
    p.add_argument("--max-len", type=positive_int, default=128,
                   help="tokens per example, [CLS] and [SEP]s included, at most: a model with fewer positions cuts it "
                        "to its max_position (the result file's max_len is the length used)")
    p.add_argument("--warmup-ratio", type=probability, default=0.1, help="share of the steps with linear warmup")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay on the weight matrices")
    p.add_argument("--val-size", type=val_size, default=None,
                   help="held out from train to choose the best epoch: a fraction (< 1) or a number of examples "
                        "(default: 10%% of train, at most 2000; SST-2: at most 500 whole sentences)")
    p.add_argument("--dropout", type=probability, default=0.1,
                   help="dropout while fine-tuning (embeddings, residual branches, attention weights, classifier "
                        "input), whatever pre-training used: a short pre-training run underfits and is best without "
                        "dropout, while a small labelled set overfits and needs it")
    p.add_argument("--pooling", choices=BertClassifier.POOLINGS, default=None,
                   help="the sentence vector the head reads: BERT's pooled [CLS] state, or the mean of the last layer "
                        "over the real tokens (what an MLM-only pre-training trained; see BertClassifier) "
                        "(default: cls; a bi-encoder always uses mean)")
    p.add_argument("--pair-encoding", choices=PAIR_ENCODINGS, default="cross",
                   help="a pair task's two sentences in one input (cross), or each encoded alone and scored by the "
                        "cosine of their vectors (bi, STS-B only; see BertBiEncoder)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); no effect on CPU")
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json; publish it with "
                                                  "`python scripts/publish.py <out-dir>/result.json`)")
    args = p.parse_args(argv)
    if args.checkpoint and args.pretrained:
        p.error("--checkpoint and --pretrained both name the weights to start from; give one")
    if not args.pretrained:
        args.checkpoint = args.checkpoint or BERT_CHECKPOINT
    if args.pair_encoding == "bi":
        if args.task != "stsb":
            p.error(f"--pair-encoding bi scores a pair by the cosine of its two sentence vectors: STS-B's similarity; "
                    f"{args.task} is not a similarity score")
        if args.pooling == "cls":
            p.error("--pair-encoding bi mean-pools each sentence; --pooling cls does not apply")
    args.pooling = args.pooling or ("mean" if args.pair_encoding == "bi" else "cls")
    args.out_dir = args.out_dir.format(name=run_name(args))
    return args


def run_name(args) -> str:
    """glue_<task>, + _<weights> for real ones (glue_sst2_minilm), + _bi for a bi-encoder, + _scratch, + _seed<N> for
    another --seed."""
    return (f"glue_{args.task}" + (f"_{short_name(args.pretrained)}" if getattr(args, "pretrained", None) else "")
            + ("_bi" if getattr(args, "pair_encoding", "cross") == "bi" else "")
            + ("_scratch" if args.from_scratch else "") + (f"_seed{args.seed}" if args.seed != SEED else ""))


def resume_checkpoint(args) -> dict:
    """<out-dir>/last.pt for --resume: the last.pt of a fine-tuning run on the same task."""
    path = Path(args.out_dir) / "last.pt"
    ckpt = load_checkpoint(path, stage=STAGE, kind="classifier")
    if "optimizer" not in ckpt:
        raise UserError(f"{path} is not the last.pt of a fine-tuning run")
    if ckpt.get("task") != args.task:
        raise UserError(f"{path} fine-tunes {ckpt.get('task')}, not {args.task}")
    return ckpt


def target_standardisation(labels: list[float]) -> tuple[float, float]:
    """(mean, standard deviation) of a regression task's training targets: the regression head learns (y - mean) /
    std (BertClassifier's label_shift and label_scale), so it starts at the mean score. A constant target: std 1."""
    mean = sum(labels) / len(labels)
    std = math.sqrt(sum((y - mean) ** 2 for y in labels) / len(labels))
    return mean, std if std > 0 else 1.0


def new_model(args, task, cfg) -> BertClassifier | BertBiEncoder:
    """A random-init model of the kind --pair-encoding asks for."""
    if args.pair_encoding == "bi":
        return BertBiEncoder(cfg)
    return BertClassifier(cfg, task.num_labels, pooling=args.pooling)


def build_classifier(args, task, device, data_dir: Path) -> tuple[BertClassifier | BertBiEncoder, WordPieceTokenizer,
                                                                  dict | None]:
    """The pre-trained encoder (or its random twin, --from-scratch) and a new head for the task, with its tokenizer
    written into --out-dir (best.pt names it: the model travels with its tokenizer). The encoder comes from the
    course's pre-training checkpoint (--checkpoint) or from real weights (--pretrained).
    -> (model, tokenizer, where the weights came from: None for random ones; what result files record)."""
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    tok_dst = Path(args.out_dir) / "tokenizer.json"
    if args.pretrained:
        kind = BertBiEncoder if args.pair_encoding == "bi" else BertClassifier
        model, tok, source = load_pretrained_bert(args.pretrained, data_dir, kind, num_labels=task.num_labels,
                                                  pooling=args.pooling, dropout=args.dropout, attn_dropout=args.dropout)
        if args.from_scratch:   # the same architecture and vocabulary, random weights
            model = new_model(args, task, model.cfg)
        tok.save(tok_dst)   # the course's JSON: evaluate.py and predict.py read it beside best.pt
        return model.to(device), tok, None if args.from_scratch else source
    if not Path(args.checkpoint).is_file():  # the first link of the chain is missing: name the run that makes it
        raise UserError(f"checkpoint not found: {args.checkpoint}; the pre-training reference run writes it: "
                        f"`{reference_command(REFERENCE_RUNS['pretrain'])}` (or pass --checkpoint)")
    pre_state, cfg, tok, pre = load_pretrained(args.checkpoint)
    cfg = dataclasses.replace(cfg, dropout=args.dropout, attn_dropout=args.dropout)
    model = new_model(args, task, cfg)
    if not args.from_scratch:
        try:
            model.load_backbone(pre_state)
        except RuntimeError as e:
            raise UserError(f"{args.checkpoint}: the weights do not fit its config ({str(e).splitlines()[0]})") from None
    tok_src = Path(args.checkpoint).parent / pre["tokenizer"]
    if tok_src.resolve() != tok_dst.resolve():
        shutil.copyfile(tok_src, tok_dst)
    source = {"checkpoint": portable(str(args.checkpoint)), "step": pre.get("state", {}).get("step")}
    return model.to(device), tok, None if args.from_scratch else source


def prepare_data(args, task, tok, max_len: int, data_dir: Path, log) -> tuple[dict, list[str]]:
    """Train minus a held-out validation split (glue.train_val_rows), dev (scored once at the end), test (predictions
    only), each encoded -> ({"train", "val", "dev", "test"}: Encoded, the test file's index column)."""
    splits = {s: load_split(args.task, data_dir, s) for s in SPLITS}
    if args.quick:
        splits = {s: v.head(QUICK_ROWS[s]) for s, v in splits.items()}
    train_rows, val_rows = train_val_rows(args.task, splits["train"], args.val_size)
    separately = args.pair_encoding == "bi"   # each sentence of a pair alone
    train_all = encode(tok, splits["train"], max_len, separately)
    data = {"train": take(train_all, train_rows), "val": take(train_all, val_rows),
            "dev": encode(tok, splits["dev"], max_len, separately), "test": encode(tok, splits["test"], max_len,
                                                                                  separately)}
    cut = sum(n >= max_len for enc in data.values() for n in enc.lengths())
    dropped = len(splits["train"]) - len(train_rows) - len(val_rows)  # SST-2: the phrases inside the val sentences
    capped = f" (--max-len {args.max_len} is more than the model's positions)" if max_len < args.max_len else ""
    log.info(f"GLUE {task.name}: {len(train_rows):,} train / {len(val_rows):,} val (from train"
             f"{f'; {dropped:,} phrases of val sentences left out' if dropped else ''}) / {len(data['dev']):,} dev / "
             f"{len(data['test']):,} test | {cut:,} examples reach the length used, {max_len} tokens{capped}")
    return data, splits["test"].index


def starting_point(args, source: dict | None) -> str:
    """Where the encoder's weights came from, for the log."""
    if source is None:
        return f"random init (the architecture and tokenizer of {args.pretrained or args.checkpoint})"
    if "checkpoint" in source:
        return f"pre-trained {source['checkpoint']} (step {source['step']})"
    return f"pre-trained weights {source['weights']} ({source['folder']})"


def save_run(path: Path, model, args, task, state: dict, source: dict | None, optimizer=None, scaler=None) -> None:
    """best.pt (no optimizer), or last.pt: also the optimizer, the loss scaler and the random-number states that
    --resume needs. Kind "classifier", with its task (STS-B's regressor too: a task head with one output), and where
    its starting weights came from ("pretrained", as build_classifier describes it); a bi-encoder says so
    ("pair_encoding")."""
    obj = {"stage": STAGE, "kind": "classifier", "task": args.task, "config": model.cfg.to_dict(),
           "num_labels": task.num_labels, "pooling": args.pooling, "pair_encoding": args.pair_encoding,
           "label_shift": getattr(model, "label_shift", 0.0), "label_scale": getattr(model, "label_scale", 1.0),
           "model": model.state_dict(),
           "tokenizer": "tokenizer.json", "args": vars(args), "state": state, "rng": rng_state(), "pretrained": source}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
        obj["scaler"] = scaler.state_dict() if scaler is not None else None
    save_checkpoint(obj, path)


def record_epoch(state: dict, val: dict, task, n_batches: int, log) -> bool:
    """Close an epoch: its validation in the history and the log. True when it is the best epoch so far."""
    state["epoch"] += 1
    state["batch"] = 0
    state["history"]["val"].append([state["step"], val[task.headline]])
    recent = [v for _, v in state["history"]["train_loss"][-n_batches:]]
    log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val "
             + " | ".join(f"{k} {v:.4f}" for k, v in val.items()) + f" | {state['train_seconds']:.0f}s")
    if not (state["best"] is None or val[task.headline] > state["best"]):
        return False
    state["best"], state["best_step"], state["best_epoch"] = val[task.headline], state["step"], state["epoch"]
    return True


def main(argv=None) -> None:
    args = parse_args(argv)
    ckpt = resume_checkpoint(args) if args.resume else None
    if ckpt:
        args = merge_resumed_args(args, ckpt["args"], RESUMABLE)
    out_dir, task = Path(args.out_dir), get_task(args.task)
    log = get_logger(STAGE, out_dir / "finetune.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- the pre-trained encoder (or its random twin) and a new head; then the data, encoded with its tokenizer
    data_dir = resolve_data_dir(args.data_dir)
    model, tok, source = build_classifier(args, task, device, data_dir)
    max_len = min(args.max_len, model.cfg.max_position)   # the length used: the result file's "max_len"
    if max_len < (3 if len(task.text) == 2 else 2):
        raise UserError(f"--max-len {args.max_len} leaves no room for the text after [CLS] and [SEP]")
    data, test_index = prepare_data(args, task, tok, max_len, data_dir, log)
    if isinstance(model, BertClassifier) and task.num_labels == 1:   # STS-B's regressor: standardised targets
        model.label_shift, model.label_scale = target_standardisation(data["train"].labels)
        log.info(f"regression targets standardised: mean {model.label_shift:.3f}, std {model.label_scale:.3f} "
                 f"(the head starts at the mean score)")
    steps_per_epoch = math.ceil(len(data["train"]) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup = round(args.warmup_ratio * total_steps)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    autocast, scaler = autocast_for(device, args.amp)
    log.info(f"{starting_point(args, source)} | "
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
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    tracker = RunTracker(out_dir, args.tensorboard, step=state["step"])  # TensorBoard and metrics.jsonl

    # ---- the training loop: whole epochs, the best one chosen on val (Ctrl-C / SIGTERM: finish the step, save, stop)
    stop, restore_signals = catch_stop_signals()
    train = data["train"]
    t_loop = time.time() - state["train_seconds"]
    try:
        model.train()
        while state["epoch"] < args.epochs and not stop["by"]:
            # fixed by (seed, epoch): resumable mid-epoch
            batches = length_batches(train.lengths(), args.batch_size,
                                     random.Random(args.seed + state["epoch"]))
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
                if args.max_steps and state["step"] >= args.max_steps:
                    stop["by"] = "max_steps"
                if stop["by"]:
                    break
                t_step = time.time()
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
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
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
                tracker.train(state["step"], loss=loss.item(), lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                              examples_per_second=len(idx) / (time.time() - t_step))
            bar.close()
            if stop["by"]:
                break
            # ---- end of an epoch: score the held-out validation split; keep the best epoch
            state["train_seconds"] = time.time() - t_loop
            val = compute_metrics(args.task, predict_rows(model, data["val"], device), data["val"].labels)
            t_loop = time.time() - state["train_seconds"]  # validation time is not training time
            tracker.evaluation(state["step"], "val", state["train_seconds"], **val)  # the task's metrics
            if record_epoch(state, val, task, len(batches), log):
                save_run(out_dir / "best.pt", model, args, task, state, source)
            save_run(out_dir / "last.pt", model, args, task, state, source, optimizer, scaler)
    finally:
        tracker.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        if stop["by"] == "max_steps" and state["best"] is None:
            # no epoch finished yet: best.pt holds these weights, and the first finished epoch replaces them
            state["best_step"] = state["step"]
            save_run(out_dir / "best.pt", model, args, task, state, source)
        save_run(out_dir / "last.pt", model, args, task, state, source, optimizer, scaler)
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python {SCRIPT} --task {args.task} --out-dir {out_dir}"
                 + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)
    final_report(args, task, model, data, test_index, state, source, max_len, device, t_start, log)


def final_report(args, task, model, data: dict, test_index: list[str], state: dict, source: dict | None,
                 max_len: int, device, t_start: float, log) -> None:
    """The epoch that was best on val, scored once on dev; predictions for test; the result file and its plot."""
    out_dir = Path(args.out_dir)
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind="classifier")["model"])
    metrics = compute_metrics(args.task, predict_rows(model, data["dev"], device), data["dev"].labels)
    pred_path = write_predictions(args.task, out_dir / f"{task.name}.tsv", test_index,
                                  predict_rows(model, data["test"], device))
    chosen = (f"best epoch on val: {state['best_epoch']} (step {state['best_step']})" if state["best"] is not None
              else f"no epoch finished: the weights at step {state['best_step']}")
    log.info(f"{chosen} | dev "
             + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f" | test predictions: {pred_path}")
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    start = "random init" if args.from_scratch else args.pretrained   # None: the course's own pre-trained BERT
    write_result(result_path, stage=STAGE, dataset=f"GLUE {task.name}" + (f" ({start})" if start else ""),
                 split="dev", metrics=metrics, headline=task.headline, train_seconds=state["train_seconds"],
                 device=device, params=sum(p.numel() for p in model.parameters()),
                 command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"task": args.task, "wall_seconds": round(time.time() - t_start, 1), "quick": args.quick,
                        "from_scratch": args.from_scratch, "pretrained": source,
                        "epochs_run": state["epoch"], "steps": state["step"], "best_epoch": state["best_epoch"],
                        "best_step": state["best_step"], f"best_val_{task.headline}": state["best"],
                        "sizes": {k: len(v) for k, v in data.items()}, "max_len": max_len,
                        "test_predictions": portable(str(pred_path)), "config": model.cfg.to_dict(),
                        "hparams": resolved_config(args)})
    h = state["history"]
    panels = {"loss": {"train (per step)": tuple(zip(*h["train_loss"]))}}
    if h["val"]:
        panels[task.headline] = {"val (held out from train)": tuple(zip(*h["val"]))}
    plot_curves(result_path.with_suffix(".png"), panels,
                title=f"BERT on {task.name} ({'from scratch' if args.from_scratch else start or 'pre-trained'}): "
                      f"dev {task.headline} {metrics[task.headline]}")
    log.info(f"wrote {result_path} and its plot" + (f" (reference run {run}: publish it with python "
                                                   f"scripts/publish.py {result_path})" if run else ""))


if __name__ == "__main__":
    run_cli(main)
