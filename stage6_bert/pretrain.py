"""Pre-train the BERT of Stage 6: masked language modelling, and optionally a sentence-pair task (NSP or SOP).

    python stage6_bert/pretrain.py                         # WikiText-2 train + 50,000 IMDb reviews, packed, MLM only
    python stage6_bert/pretrain.py --nsp                   # BERT's original recipe: sentence pairs, MLM + NSP
    python stage6_bert/pretrain.py --sop --pair-share 0.5  # half packed text, half pairs: MLM + sentence order
    python stage6_bert/pretrain.py --time-budget 60        # train for 60 minutes of wall-clock time
    python stage6_bert/pretrain.py --corpus notes.txt      # any text files instead (blank lines between documents)
    python stage6_bert/pretrain.py --quick                 # a smoke run on small slices
    python stage6_bert/pretrain.py --resume                # continue an interrupted run exactly
    torchrun --standalone --nproc_per_node=2 stage6_bert/pretrain.py   # distributed data parallel (gloo on CPU)

An epoch is one pass over the training examples in a new shuffled order; each time an example is drawn it is masked
afresh (and, with --nsp or --sop, paired afresh). A step takes --batch-size examples, split into --accum-steps
micro-batches and over the processes of a torchrun launch. Its loss is the mean over all of the step's masked tokens
(plus, with a pair task, the mean over the step's pairs), whichever micro-batch and process they sit in, so
accumulation and DDP give exactly the gradient of one big batch. The learning rate warms up linearly over
--warmup-steps, then decays linearly to 0 at the end of the run (BERT's schedule): the end of its steps, or of its
minutes with --time-budget, whichever comes first. Every --eval-interval steps the held-out documents are scored (MLM
loss and accuracy at the masked tokens; NSP or SOP accuracy over the pairs) with the same masks each time, and a few
fill-in-the-blank sentences show what the model guesses; best.pt is the lowest validation MLM loss.

The checkpoints (what finetune.py reads): <out-dir>/last.pt and best.pt hold {"stage": "stage6_bert", "kind":
"masked_lm", "config": BertConfig.to_dict(), "model": BertPretrain's state dict, "tokenizer": "tokenizer.json" (the
file beside the checkpoint), "args": the flags, "state": step, history, ...}; last.pt also holds the optimizer and the
random-number states that --resume needs. The default --out-dir is runs/stage6_bert/pretrain (pretrain_nsp with
--nsp, pretrain_sop with --sop, then _mix<percent> with --pair-share below 1); the result file <out-dir>/result.json
and its plot go there too. The reference runs behind the published figures are declared in reference_runs.py;
`python scripts/publish.py <out-dir>/result.json` publishes one. Loss, learning rate, gradient norm and tokens/s go to
TensorBoard (`tensorboard --logdir runs`), and every validation to
<out-dir>/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/pretrain.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (UserError, add_common_args, add_dist_timeout_arg, autocast_for, catch_stop_signals,
                            end_distributed, get_logger, load_checkpoint, merge_resumed_args, note_command,
                            parse_with_quick_defaults, plot_curves, portable, positive_float, positive_int, probability,
                            reference_run_name, resolve_data_dir, resolved_config, restore_training, rng_state, run_cli,
                            RunTracker, save_checkpoint, set_seed, setup_distributed, wait_for_rank0, write_result)
from stage6_bert.data import (NO_LABEL, MixedExamples, PackedWindows, SentencePairs, collate, fixed_batches,
                              mask_batch, prepare, split_documents)
from stage6_bert.model import BertConfig, BertPretrain, configure_optimizer
from stage6_bert.reference_runs import REFERENCE_RUNS

STAGE = "stage6_bert"
SCRIPT = "stage6_bert/pretrain.py"
QUICK_CHARS = 300_000  # --quick: the first characters of WikiText-2 train (or of each --corpus file)
QUICK = {"epochs": 1, "imdb_unsup": 500, "vocab_size": 2000, "max_len": 64, "hidden": 64, "layers": 2, "heads": 2,
         "warmup_steps": 20, "lr": 1e-3}
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result", "time_budget", "compile", "dist_timeout")
FILL_IN = ["the movie was [MASK] .", "this is one of the [MASK] films i have ever seen .",
           "the game was released in [MASK] ."]


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Pre-train BERT with masked language modelling (Stage 6).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, epochs=1, batch_size=32, lr=5e-4, out_dir="runs/stage6_bert/{name}")
    p.add_argument("--corpus", nargs="+", metavar="FILE", default=None,
                   help="pre-train on these text files (UTF-8, or .gz; blank lines between documents) instead of "
                        "WikiText-2 train + IMDb unsup")
    p.add_argument("--imdb-unsup", type=non_negative_int, default=50_000, metavar="N",
                   help="how many unlabelled IMDb reviews join WikiText-2 (0: none; ignored with --corpus)")
    p.add_argument("--time-budget", type=positive_float, default=None,
                   help="minutes of training; the learning-rate schedule then ends at the budget")
    p.add_argument("--vocab-size", type=positive_int, default=8000,
                   help="WordPiece vocabulary, trained on the corpus when <out-dir>/tokenizer.json does not exist")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="use this WordPiece vocabulary instead: a JSON from stage6_bert/tokenizer.py train, a Hugging "
                        "Face tokenizer.json or BERT's vocab.txt (e.g. bert-base-uncased's)")
    p.add_argument("--max-len", type=positive_int, default=128, help="tokens per example, [CLS] and [SEP] included")
    p.add_argument("--hidden", type=positive_int, default=256, help="model width (BERT-base: 768)")
    p.add_argument("--layers", type=positive_int, default=4, help="encoder layers (BERT-base: 12)")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads per layer")
    p.add_argument("--intermediate", type=positive_int, default=None, help="feed-forward width (default: 4 x hidden)")
    p.add_argument("--norm", choices=["post", "pre"], default="post",
                   help="LayerNorm after each residual sum (post, the BERT paper) or before each branch (pre: "
                        "steadier and faster to start learning)")
    p.add_argument("--pos-init", choices=["normal", "sinusoidal"], default="normal",
                   help="start the learned position table random (BERT) or as sine waves (finds neighbours sooner)")
    p.add_argument("--dropout", type=probability, default=0.1,
                   help="on the embeddings, the residual branches and the attention weights")
    p.add_argument("--mask-prob", type=probability, default=0.15, help="share of the tokens that become MLM targets")
    pair_task = p.add_mutually_exclusive_group()
    pair_task.add_argument("--nsp", action="store_true",
                           help="BERT's sentence pairs and next-sentence prediction (default: RoBERTa's packed text, "
                                "MLM only)")
    pair_task.add_argument("--sop", action="store_true",
                           help="ALBERT's sentence-order prediction on the same pairs: in their order or swapped")
    p.add_argument("--pair-share", type=probability, default=None, metavar="P",
                   help="with --nsp or --sop: the share of examples that are pairs, the rest packed text "
                        "(default: 1, pairs only)")
    p.add_argument("--warmup-steps", type=non_negative_int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay on the weight matrices")
    p.add_argument("--accum-steps", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip the gradient norm to this value")
    p.add_argument("--eval-interval", type=positive_int, default=None,
                   help="steps between validations (default: 500, or one epoch if that is shorter)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); no effect on CPU")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 or AMX): about 1.6x the "
                        "training tokens/s of fp32 measured on this course's CPU; an error on a CPU without it")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start, faster steps)")
    add_dist_timeout_arg(p)
    p.add_argument("--result", default=None, help="result JSON (default: <out-dir>/result.json; publish it with "
                                                  "`python scripts/publish.py <out-dir>/result.json`)")
    args = parse_with_quick_defaults(p, argv, QUICK)
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    if args.mask_prob <= 0:
        p.error("--mask-prob must be > 0: with nothing masked there is nothing to learn")
    if args.max_len < 8:
        p.error(f"--max-len {args.max_len} is too short; use at least 8")
    if args.pair_share is not None and not (args.nsp or args.sop):
        p.error("--pair-share needs a sentence-pair task: add --nsp or --sop")
    if args.pair_share == 0:
        p.error("--pair-share 0 leaves no pairs: drop --nsp / --sop for packed text only")
    args.out_dir = args.out_dir.format(name=run_name(args))
    return args


def sentence_task(args) -> str | None:
    """"nsp", "sop", or None (MLM only). Read with getattr: the flags of a checkpoint written before --sop existed
    lack it."""
    return "nsp" if getattr(args, "nsp", False) else "sop" if getattr(args, "sop", False) else None


def pair_share(args) -> float:
    """The share of examples that are sentence pairs: 0 for MLM only, --pair-share (default 1) with a pair task."""
    if sentence_task(args) is None:
        return 0.0
    share = getattr(args, "pair_share", None)
    return 1.0 if share is None else share


def run_name(args) -> str:
    """pretrain, pretrain_nsp, pretrain_sop, and _mix<percent> for a mix: recipes never overwrite each other's runs."""
    task, share = sentence_task(args), pair_share(args)
    return "pretrain" + (f"_{task}" if task else "") + (f"_mix{100 * share:g}" if 0 < share < 1 else "")


def lr_at(step: int, elapsed: float, args, total_steps: int) -> float:
    """Linear warmup to --lr, then linear decay to 0; progress is the larger of steps done and budget used."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    if args.time_budget:
        progress = max(progress, elapsed / (60 * args.time_budget))
    return args.lr * max(0.0, 1.0 - progress)


@torch.no_grad()
def evaluate(model, dataset, args, tok, device) -> dict[str, float]:
    """MLM loss and accuracy over the masked tokens of the whole validation set (and the sentence task's loss and
    accuracy over its pairs: nsp_loss, nsp_acc or sop_loss, sop_acc). The masks and pairs are the same at every call
    (fixed_batches), so scores from different steps compare."""
    model.eval()
    task = sentence_task(args)
    mlm_sum, mlm_right, n_masked, nsp_sum, nsp_right, n_pairs = 0.0, 0, 0, 0.0, 0, 0
    for batch in fixed_batches(dataset, args.batch_size, len(tok), args.mask_prob, args.seed, tok):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                    attention_mask=batch["attention_mask"], mlm_labels=batch["mlm_labels"])
        targets = batch["mlm_labels"][batch["mlm_labels"] != -100]   # (N,): the rows of out.mlm_logits (N, V)
        mlm_sum += F.cross_entropy(out.mlm_logits.float(), targets, reduction="sum").item()
        mlm_right += (out.mlm_logits.argmax(-1) == targets).sum().item()
        n_masked += len(targets)
        if "nsp_labels" in batch:
            labels = batch["nsp_labels"]                                      # (B,): NO_LABEL at packed windows
            paired = labels != NO_LABEL
            nsp_sum += F.cross_entropy(out.nsp_logits.float(), labels, ignore_index=NO_LABEL, reduction="sum").item()
            nsp_right += (out.nsp_logits.argmax(-1)[paired] == labels[paired]).sum().item()
            n_pairs += int(paired.sum())
    model.train()
    metrics = {"mlm_loss": mlm_sum / max(n_masked, 1), "mlm_acc": mlm_right / max(n_masked, 1)}
    if task and n_pairs:
        metrics[f"{task}_loss"], metrics[f"{task}_acc"] = nsp_sum / n_pairs, nsp_right / n_pairs
    return metrics


def encode_with_masks(tok, text: str) -> list[int]:
    """[CLS] text [SEP], each "[MASK]" in the text the [MASK] id (tok.encode alone reads it as plain text)."""
    ids = [tok.cls_id]
    for k, part in enumerate(text.split("[MASK]")):
        if k:
            ids.append(tok.mask_id)
        ids += tok.encode(part)
    return ids + [tok.sep_id]


@torch.no_grad()
def fill_in(model, tok, texts: list[str], device, k: int = 5) -> list[str]:
    """The model's top k guesses for each [MASK]: "the movie was [MASK] . -> good / great / bad / ..."."""
    model.eval()
    lines = []
    for text in texts:
        ids = torch.tensor([encode_with_masks(tok, text)], device=device)        # (1, T)
        logits = model(ids, masked_only=False).mlm_logits[ids == tok.mask_id]     # (M, V): a row per [MASK]
        guesses = [" / ".join(tok.vocab[i] for i in row.tolist()) for row in logits.topk(k, dim=-1).indices]
        lines.append(f"{text} -> " + " ; ".join(guesses))
    model.train()
    return lines


def resume_checkpoint(args) -> dict:
    """<out-dir>/last.pt for --resume: a pre-training checkpoint of the same recipe (MLM only, with NSP or SOP, the
    same share of pairs)."""
    path = Path(args.out_dir) / "last.pt"
    ckpt = load_checkpoint(path, stage=STAGE, kind="masked_lm")
    saved = run_name(argparse.Namespace(**ckpt["args"]))
    if saved != run_name(args):
        raise UserError(f"{path} is a {saved} run, not {run_name(args)}")
    return ckpt


def prepare_data(args, data_dir: Path, rank: int, world: int, ckpt: dict | None, log) -> tuple:
    """The tokenizer and the encoded corpus in the run folder: rank 0 writes them, then the other processes read them.
    A resumed run must find the very data it started with. -> (tokenizer, corpus, summary), as data.prepare."""
    options = dict(corpus=args.corpus, imdb_unsup=args.imdb_unsup, vocab_size=args.vocab_size,
                   tokenizer_file=args.tokenizer, max_chars=QUICK_CHARS if args.quick else None, log=log.info)
    if rank == 0:
        prepared = prepare(data_dir, args.out_dir, **options)
    if world > 1:
        wait_for_rank0()
    if rank > 0:  # finds rank 0's files
        prepared = prepare(data_dir, args.out_dir, **options)
    if ckpt and ckpt["data"]["fingerprint"] != prepared[2]["fingerprint"]:
        out_dir = Path(args.out_dir)
        raise UserError(f"the corpus or {out_dir / 'tokenizer.json'} changed since {out_dir / 'last.pt'} was written "
                        f"(fingerprints differ); resume with the same data, or start a new --out-dir")
    return prepared


def make_examples(args, corpus, tok) -> tuple:
    """(training examples, validation examples): packed windows, sentence pairs with --nsp or --sop, or a mix of both
    with --pair-share below 1, framed by tok's [CLS] and [SEP]."""
    train_docs, val_docs = split_documents(len(corpus))
    task, share = sentence_task(args), pair_share(args)

    def examples(docs: list[int]):
        if task is None:
            return PackedWindows(corpus, docs, args.max_len, tok)
        pairs = SentencePairs(corpus, docs, args.max_len, tok, objective=task)
        return pairs if share >= 1 else MixedExamples(PackedWindows(corpus, docs, args.max_len, tok), pairs, share)

    train_set, val_set = examples(train_docs), examples(val_docs)
    if len(train_set) < args.batch_size:
        raise UserError(f"only {len(train_set)} training examples, fewer than --batch-size {args.batch_size}; "
                        f"lower it or give more text")
    return train_set, val_set


def build_model(args, tok, device) -> tuple[BertPretrain, BertConfig]:
    config = BertConfig(vocab_size=len(tok), max_position=args.max_len, hidden=args.hidden, n_layer=args.layers,
                        n_head=args.heads, intermediate=args.intermediate, dropout=args.dropout,
                        attn_dropout=args.dropout, norm=args.norm, pos_init=args.pos_init, pad_id=tok.pad_id)
    model = BertPretrain(config).to(device)
    if sentence_task(args) is None:  # nothing trains the pooler and the pair head without NSP or SOP (and DDP wants
        for module in (model.bert.pooler, model.nsp):  # a gradient for every trainable parameter): they keep their
            module.requires_grad_(False)               # init; fine-tuning trains the pooler, as for RoBERTa
    return model, config


def plan(args, n_train: int, n_val: int, steps_per_epoch: int, total_steps: int, world: int) -> str:
    """The run in one line of the log: its examples and its steps."""
    task, share = sentence_task(args), pair_share(args)
    kind = "packed text, MLM only" if task is None else f"sentence pairs, MLM + {task.upper()}" if share >= 1 else \
        f"packed text with {100 * share:g} % sentence pairs, MLM + {task.upper()}"
    return (f"{n_train:,} training and {n_val:,} validation examples "
            f"({kind}); {steps_per_epoch} steps per "
            f"epoch of {args.batch_size}{f' over {world} processes' if world > 1 else ''}, {total_steps} in all"
            + (f", or {args.time_budget} minutes" if args.time_budget else ""))


def new_state() -> dict:
    """What the loop keeps and the checkpoints carry: the step, the tokens seen, the best validation, the history."""
    return {"step": 0, "tokens": 0, "best_val_loss": math.inf, "best_step": 0, "train_seconds": 0.0,
            "history": {"train_loss": [], "val_mlm_loss": [], "val_mlm_acc": [], "val_nsp_acc": []}}


def wrap_for_training(model, compile_it: bool, world: int, device):
    """The module the loop calls: torch.compile'd with --compile, in DistributedDataParallel under torchrun. The
    weights stay those of `model`, which is what is evaluated and saved."""
    train_model = torch.compile(model) if compile_it else model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    return train_model


def save_run(path: Path, model, config: BertConfig, args, state: dict, batch_gen, fingerprint: str,
             optimizer=None, scaler=None) -> None:
    """best.pt (no optimizer), or last.pt: also the optimizer, the loss scaler and the random-number states, all that
    --resume needs to continue exactly."""
    obj = {"stage": STAGE, "kind": "masked_lm", "config": config.to_dict(), "model": model.state_dict(),
           "tokenizer": "tokenizer.json", "args": vars(args), "state": state, "rng": rng_state(),
           "batch_generator": batch_gen.get_state(), "data": {"fingerprint": fingerprint}}
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
        obj["scaler"] = scaler.state_dict() if scaler is not None else None
    save_checkpoint(obj, path)


@functools.lru_cache(maxsize=1)
def epoch_order(n: int, seed: int) -> torch.Tensor:
    """The order of the n training examples in one epoch: the same in every process and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def draw_step(train_set, step: int, args, steps_per_epoch: int, tok, batch_gen, rank: int,
              world: int) -> tuple[list[dict], int, int, int]:
    """This process's micro-batches for one step, and the numbers of masked tokens, of real (not [PAD]) tokens and
    of sentence pairs in the whole step, all processes together.

    Every process draws, pads and masks the whole step (the same generator, the same stream), then keeps its own
    rows of each micro-batch: two processes see exactly the examples and masks that one process would."""
    epoch, k = divmod(step, steps_per_epoch)
    idx = epoch_order(len(train_set), args.seed + epoch)[k * args.batch_size:(k + 1) * args.batch_size].tolist()
    micro, per = args.batch_size // args.accum_steps, args.batch_size // args.accum_steps // world
    batches = []
    for j in range(args.accum_steps):
        examples = [train_set.example(i, batch_gen) for i in idx[j * micro:(j + 1) * micro]]
        batches.append(mask_batch(collate(examples, tok), len(tok), batch_gen, args.mask_prob, tok))   # (micro, T)
    n_masked = sum(int((b["mlm_labels"] != -100).sum()) for b in batches)
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    n_pairs = sum(int((b["nsp_labels"] != NO_LABEL).sum()) for b in batches if "nsp_labels" in b)
    return ([{name: t[rank * per:(rank + 1) * per] for name, t in b.items()} for b in batches], n_masked, n_tokens,
            n_pairs)


def record_validation(state: dict, val: dict, examples: list[str], args, eval_interval: int, log,
                      tracker: RunTracker) -> bool:
    """Add a validation to the history, the log, TensorBoard and metrics.jsonl; True when it is the best so far (then
    best.pt is saved)."""
    h, step = state["history"], state["step"]
    tracker.evaluation(step, "val", state["train_seconds"], **val)  # mlm_loss, mlm_acc (and nsp_/sop_ loss, acc)
    h["val_mlm_loss"].append([step, round(val["mlm_loss"], 5)])
    h["val_mlm_acc"].append([step, round(val["mlm_acc"], 5)])
    task = sentence_task(args)
    if task:
        h.setdefault(f"val_{task}_acc", []).append([step, round(val[f"{task}_acc"], 5)])
    recent = [v for _, v in h["train_loss"][-eval_interval:]]
    log.info(f"step {step}: train loss {sum(recent) / len(recent):.4f} | val MLM loss {val['mlm_loss']:.4f} "
             f"acc {val['mlm_acc']:.3f}" + (f" | val {task.upper()} acc {val[f'{task}_acc']:.3f}" if task else "")
             + f" | {state['tokens'] / max(state['train_seconds'], 1e-9):,.0f} tokens/s | "
               f"{state['train_seconds']:.0f}s\n    " + "\n    ".join(examples))
    if val["mlm_loss"] >= state["best_val_loss"]:
        return False
    state["best_val_loss"], state["best_step"] = val["mlm_loss"], step
    return True


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.batch_size % args.accum_steps:
        raise UserError(f"--batch-size {args.batch_size} must be a multiple of --accum-steps {args.accum_steps}")
    ckpt = resume_checkpoint(args) if args.resume else None
    if ckpt:
        args = merge_resumed_args(args, ckpt["args"], RESUMABLE)
    out_dir = Path(args.out_dir)
    rank, world, device = setup_distributed(args.device, args.batch_size, args.accum_steps,
                                            args.dist_timeout)
    master = rank == 0
    log = get_logger(STAGE, out_dir / "train.log" if master else None)
    log.disabled = not master
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    set_seed(args.seed)
    t_start = time.time()

    # ---- data: the tokenizer and the encoded corpus in the run folder, then the examples
    data_dir = resolve_data_dir(args.data_dir)
    tok, corpus, summary = prepare_data(args, data_dir, rank, world, ckpt, log)
    train_set, val_set = make_examples(args, corpus, tok)
    steps_per_epoch = len(train_set) // args.batch_size
    total_steps = args.epochs * steps_per_epoch
    eval_interval = args.eval_interval or min(500, steps_per_epoch)

    # ---- model and optimizer
    model, config = build_model(args, tok, device)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    autocast, scaler = autocast_for(device, args.amp, args.cpu_bf16)
    log.info(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, {config}")
    log.info(plan(args, len(train_set), len(val_set), steps_per_epoch, total_steps, world))
    batch_gen = torch.Generator().manual_seed(args.seed)  # masks and pairs: the same stream in every process
    state = restore_training(ckpt, model, optimizer, scaler, batch_gen, log) if ckpt else new_state()
    note_command(state, SCRIPT, argv)  # the checkpoints keep it: results name the first
    if rank > 0 or not ckpt:  # dropout: a different stream in each process
        torch.manual_seed(args.seed + rank + state["step"])
    train_model = wrap_for_training(model, args.compile, world, device)
    tracker = RunTracker(out_dir, args.tensorboard, master, state["step"])  # TensorBoard and metrics.jsonl

    # ---- the training loop (Ctrl-C and SIGTERM raise a flag; the loop stops between steps and saves)
    stop, restore_signals = catch_stop_signals()
    t_loop = time.time() - state["train_seconds"]
    bar = tqdm(total=total_steps, initial=state["step"], desc="pretrain", disable=None if master else True)
    try:
        model.train()
        while state["step"] < total_steps:
            t_step = time.time()
            for g in optimizer.param_groups:
                g["lr"] = lr_at(state["step"], time.time() - t_loop, args, total_steps)
            optimizer.zero_grad(set_to_none=True)
            batches, n_masked, n_tokens, n_pairs = draw_step(train_set, state["step"], args, steps_per_epoch, tok,
                                                             batch_gen, rank, world)
            step_loss = torch.zeros((), device=device)
            for j, b in enumerate(batches):
                b = {name: t.to(device) for name, t in b.items()}
                sync = j == len(batches) - 1 or world == 1  # DDP: average gradients on the last micro-step only
                with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast:
                    out = train_model(b["input_ids"], token_type_ids=b["token_type_ids"],
                                      attention_mask=b["attention_mask"], mlm_labels=b["mlm_labels"])
                targets = b["mlm_labels"][b["mlm_labels"] != -100]   # (N,): the rows of out.mlm_logits (N, V)
                # sums over this process's rows / counts of the whole step; x world because DDP averages the
                # processes' gradients: together, the mean over every masked token (and every pair) of the step
                loss = F.cross_entropy(out.mlm_logits.float(), targets, reduction="sum") * world / max(n_masked, 1)
                if "nsp_labels" in b:  # NSP or SOP: the mean over the step's pairs (packed windows carry NO_LABEL)
                    loss = loss + F.cross_entropy(out.nsp_logits.float(), b["nsp_labels"], ignore_index=NO_LABEL,
                                                  reduction="sum") * world / max(n_pairs, 1)
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach()
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            # one small all-reduce a step: the loss summed over processes, and whether any process must stop
            over_budget = bool(args.time_budget and time.time() - t_loop >= 60 * args.time_budget)
            flags = torch.tensor([step_loss.item(), float(stop["by"] is not None), float(over_budget)],
                                 device=device)  # nccl reduces CUDA tensors only
            if world > 1:
                dist.all_reduce(flags)
            loss_value = flags[0].item() / world
            if not math.isfinite(loss_value):
                raise UserError(f"the loss became {loss_value} at step {state['step'] + 1}; "
                                f"try a lower --lr (now {args.lr}) or a longer --warmup-steps"
                                + (", or --no-amp" if args.amp and device.type == "cuda" else ""))
            state["step"] += 1
            state["tokens"] += n_tokens
            state["history"]["train_loss"].append([state["step"], round(loss_value, 5)])
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            tracker.train(state["step"], loss=loss_value, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm,
                          tokens_per_second=n_tokens / (time.time() - t_step))
            if state["step"] % eval_interval == 0 or state["step"] == total_steps or flags[2] > 0:
                state["train_seconds"] = time.time() - t_loop
                val = evaluate(model, val_set, args, tok, device)
                examples = fill_in(model, tok, FILL_IN, device)
                t_loop = time.time() - state["train_seconds"]  # validation time is not training time
                if record_validation(state, val, examples, args, eval_interval, log, tracker) and master:
                    save_run(out_dir / "best.pt", model, config, args, state, batch_gen, summary["fingerprint"])
                if master:
                    save_run(out_dir / "last.pt", model, config, args, state, batch_gen, summary["fingerprint"],
                             optimizer, scaler)
            if flags[2] > 0:
                log.info(f"time budget of {args.time_budget} minutes used up at step {state['step']}")
                break
            if flags[1] > 0:
                stop["by"] = stop["by"] or "a signal in another process"
            if args.max_steps and state["step"] >= args.max_steps and not stop["by"]:
                stop["by"] = "max_steps"
            if stop["by"]:
                break
    finally:
        bar.close()
        tracker.close()
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        if master:
            save_run(out_dir / "last.pt", model, config, args, state, batch_gen, summary["fingerprint"],
                     optimizer, scaler)
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python {SCRIPT} --out-dir {out_dir} --resume")
    end_distributed(world)
    if stop["by"] and stop["by"] != "max_steps":
        sys.exit(130)
    if master and not stop["by"]:
        final_report(args, model, tok, train_set, val_set, state, summary, data_dir, device, world, t_start, log)


def final_report(args, model, tok, train_set, val_set, state: dict, summary: dict, data_dir: Path, device,
                 world: int, t_start: float, log) -> None:
    """The best checkpoint on the validation documents, its guesses, the result file and its plot."""
    out_dir = Path(args.out_dir)
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE, kind="masked_lm")["model"])
    val = evaluate(model, val_set, args, tok, device)
    metrics = {"val_mlm_loss": round(val["mlm_loss"], 4), "val_mlm_ppl": round(math.exp(val["mlm_loss"]), 2),
               "val_mlm_acc": round(val["mlm_acc"], 4)}
    task = sentence_task(args)
    if task:
        metrics[f"val_{task}_loss"] = round(val[f"{task}_loss"], 4)
        metrics[f"val_{task}_acc"] = round(val[f"{task}_acc"], 4)
    examples = fill_in(model, tok, FILL_IN, device)
    tokens_per_second = round(state["tokens"] / max(state["train_seconds"], 1e-9))
    log.info("best checkpoint (step %d): %s | %s tokens/s\n    %s", state["best_step"],
             " | ".join(f"{k} {v}" for k, v in metrics.items()), f"{tokens_per_second:,}", "\n    ".join(examples))
    result_path = Path(args.result) if args.result else out_dir / "result.json"
    dataset = "+".join(Path(f).name for f in args.corpus) if args.corpus else (
        "wikitext2+imdb_unsup" if args.imdb_unsup else "wikitext2")
    run = reference_run_name(REFERENCE_RUNS, SCRIPT, parse_args, args)
    write_result(result_path, stage=STAGE, dataset=dataset, split="val", metrics=metrics, headline="val_mlm_loss",
                 train_seconds=state["train_seconds"], device=device, params=sum(p.numel() for p in model.parameters()),
                 command=state["commands"], run=run, declared=REFERENCE_RUNS.get(run),
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick, "processes": world,
                        "steps": state["step"], "best_step": state["best_step"], "tokens_per_second": tokens_per_second,
                        "tokens_seen": state["tokens"], "examples": {"train": len(train_set), "val": len(val_set)},
                        "corpus": summary, "config": model.cfg.to_dict(), "hparams": resolved_config(args),
                        "fill_in": examples, "data_dir": portable(str(data_dir))})
    h = state["history"]
    panels = {"loss (nats/token)": {"train (per step)": tuple(zip(*h["train_loss"])),
                                    "val MLM": tuple(zip(*h["val_mlm_loss"]))},
              "accuracy (val)": {"MLM, masked tokens": tuple(zip(*h["val_mlm_acc"]))}}
    if task:
        panels["accuracy (val)"][task.upper()] = tuple(zip(*h[f"val_{task}_acc"]))
    plot_curves(result_path.with_suffix(".png"), panels, title=f"BERT pre-training ({run_name(args)}): "
                                                              f"val MLM loss {metrics['val_mlm_loss']}")
    log.info(f"wrote {result_path} and its plot" + (f" (reference run {run}: publish it with python "
                                                   f"scripts/publish.py {result_path})" if run else ""))


if __name__ == "__main__":
    run_cli(main)
