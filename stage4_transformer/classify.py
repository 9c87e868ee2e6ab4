"""Classify SST-2 sentences (negative / positive) with this stage's Transformer encoder, trained from scratch.

    python stage4_transformer/classify.py                 # train on SST-2 train, choose the epoch on val, score dev
    python stage4_transformer/classify.py --pool first    # read the <bos> token's vector ([CLS]-style), not the mean
    python stage4_transformer/classify.py --quick         # a smoke run on small slices
    python stage4_transformer/classify.py --resume        # continue an interrupted run exactly

The encoder is the translator's, block for block (model.py's `Embedding`, `EncoderLayer` and `padding_mask`): token
ids -> embeddings * sqrt(d) + positions -> [self-attention, feed-forward] x N. Only the top is new: one vector per
sentence, dropout, and a linear layer to the two classes, trained with cross-entropy (`TransformerClassifier`).
Tokens and vocabulary are data.py's (`tokenize`, `Vocab`, built on the training rows only); batches hold sentences of
similar length (`token_batches`), because SST-2 mixes 3-token phrases with 50-token sentences and a batch is padded
to its longest one. The learning rate warms up linearly, then falls along a cosine to lr/10 (train.py's cosine).

Honest numbers. GLUE's test labels are private, so dev (872 sentences) is the test set here: it is scored once, at
the end, with the epoch that was best on a validation split held out from train. SST-2's train set is every phrase of
the parse trees of about 8,500 sentences, so a random held-out row would nearly always be a phrase of another training
row, and its score would measure memory. `sentence_split` holds out --val-size whole sentences (rows that no other
row contains) and drops every training row that is a phrase inside one of them: validation then looks like dev.

Outputs in --out-dir (default runs/stage4_transformer/sst2_classifier/): best.pt (the chosen epoch; what
`load_predictor` reads), last.pt (to --resume exactly; also written on Ctrl-C and SIGTERM), vocab.json, train.log.
The result file is stage4_transformer/results/sst2_classifier.json with its plot (smoke runs: <out-dir>/result.json).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage4_transformer/classify.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from scripts.common import (REPO_ROOT, UserError, add_common_args, catch_stop_signals, get_device, get_logger,
                            load_checkpoint, note_command, plot_curves, positive_float, positive_int, probability,
                            resolve_data_dir, rng_state, run_cli, save_checkpoint, set_rng_state, set_seed,
                            write_result)
from stage4_transformer.data import BOS_ID, PAD_ID, Vocab, load_sst2, pad, token_batches
from stage4_transformer.model import EncoderLayer, Embedding, TransformerConfig, padding_mask

STAGE = "stage4_transformer"
KIND = "sst2_classifier"  # checkpoints say what they hold: a translator and a classifier share the stage's name
QUICK_TRAIN, QUICK_DEV = 2_000, 200
RESUMABLE = ("resume", "max_steps", "device", "out_dir", "data_dir", "result")  # from the command line on --resume


# ----------------------------------------------------------------------------- the model

@dataclass
class ClassifierConfig:
    vocab_size: int
    n_classes: int = 2            # SST-2: negative, positive
    d_model: int = 128            # width of every token's vector
    n_heads: int = 4
    n_layers: int = 2             # encoder layers
    d_ff: int = 512               # feed-forward hidden size (4 d_model, as in the paper)
    dropout: float = 0.1          # inside the encoder (as in the translator) and on the sentence vector
    norm: str = "pre"             # "pre" or "post" LayerNorm
    pos: str = "sinusoidal"       # "sinusoidal" or "learned" positions
    pool: str = "mean"            # "mean" of the real tokens' vectors, or "first": the <bos> token's ([CLS]-style)
    max_len: int = 128            # tokens per sentence, <bos> and <eos> included (longer ones are cut)
    pad_id: int = PAD_ID

    def __post_init__(self):
        if self.pool not in ("mean", "first"):
            raise ValueError(f"pool must be mean|first, got {self.pool!r}")
        self.encoder_config()  # the encoder's own checks: d_model divisible by n_heads, norm, pos

    def encoder_config(self) -> TransformerConfig:
        """The translator's config with only the encoder's fields in use: model.py's blocks read their sizes from it."""
        return TransformerConfig(src_vocab_size=self.vocab_size, tgt_vocab_size=self.vocab_size, d_model=self.d_model,
                                 n_heads=self.n_heads, n_enc_layers=self.n_layers, n_dec_layers=0, d_ff=self.d_ff,
                                 dropout=self.dropout, norm=self.norm, pos=self.pos, max_len=self.max_len,
                                 pad_id=self.pad_id)

    def to_dict(self) -> dict:
        return asdict(self)


class TransformerClassifier(nn.Module):
    """model.py's encoder -> one vector per sentence -> dropout -> Linear to the classes.

    The sentence vector is, by default, the mean of the encoder's outputs over the real tokens. A [CLS]-style vector
    (the output at one extra first token, BERT's choice; --pool first) works in BERT because pre-training has already
    taught the network to gather a summary there. Trained from scratch on short labelled phrases, that one position
    must learn to collect the sentence through attention alone, and the loss reaches every other word only through
    its attention weights. The mean gives every word a direct path to the loss (a bag of words, each seen in its
    context), which is the usual choice for small classifiers trained from scratch. Pads are left out of attention
    (padding_mask) and out of the mean, so a sentence gets the same prediction alone or padded in a batch.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder_config()
        self.embed = Embedding(cfg.vocab_size, enc)
        self.encoder = nn.ModuleList(EncoderLayer(enc) for _ in range(cfg.n_layers))
        # pre-norm leaves the last residual sum un-normalised: one final LayerNorm (as the translator's encoder)
        self.enc_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T): <bos> sentence <eos>, right-padded -> logits (B, n_classes)."""
        mask = padding_mask(ids, self.cfg.pad_id)         # (B, 1, 1, T), True on real tokens
        x = self.embed(ids)                               # (B, T, d)
        for layer in self.encoder:
            x, _ = layer(x, mask)                         # (B, T, d): every token now carries its context
        x = self.enc_norm(x)
        if self.cfg.pool == "first":
            sentence = x[:, 0]                            # (B, d): the <bos> position
        else:
            real = mask[:, 0, 0, :, None].to(x.dtype)     # (B, T, 1): 1 on real tokens, 0 on pads
            sentence = (x * real).sum(1) / real.sum(1)    # (B, d): mean over the real tokens only
        return self.head(self.drop(sentence))             # (B, n_classes)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------- data

def sentence_split(texts: list[str], n_val: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train rows, val rows) of a training set made of the phrases of its sentences, as SST-2's is.

    Validation takes `n_val` rows that no other row contains (whole sentences), tried in a random order. Training
    keeps every other row except those that are a phrase inside a validation sentence: their labels would give its
    answer away. What is left is dev's situation: sentences never seen, in whole or in part.
    """
    words = [t.split() for t in texts]
    spaced = [f" {' '.join(w)} " for w in words]  # spaces around: "art" is not inside "party"
    rows_with: dict[str, list[int]] = {}          # word -> the rows that hold it
    for i, w in enumerate(words):
        for word in set(w):
            rows_with.setdefault(word, []).append(i)

    def is_whole(i: int) -> bool:
        if not words[i]:
            return False
        rarest = min(set(words[i]), key=lambda word: len(rows_with[word]))  # a row containing i holds this word too
        return not any(j != i and spaced[i] in spaced[j] for j in rows_with[rarest])

    order = list(range(len(texts)))
    rng.shuffle(order)
    val = []
    for i in order:
        if len(val) == n_val:
            break
        if is_whole(i):
            val.append(i)
    if len(val) < n_val:
        raise UserError(f"--val-size asks for {n_val} whole sentences, but the training set has only {len(val)}")
    phrases = {" ".join(words[i][a:b]) for i in val
               for a in range(len(words[i])) for b in range(a + 1, len(words[i]) + 1)}
    held = set(val)
    train = [i for i in range(len(texts)) if i not in held and " ".join(words[i]) not in phrases]
    return train, val


def encode_sentences(vocab: Vocab, texts: list[str], max_len: int) -> list[list[int]]:
    """<bos> tokens <eos> for each text, lower-cased as SST-2 is, cut to max_len ids. The <bos> is the position that
    --pool first reads; for the mean it is one more token."""
    return [([BOS_ID] + vocab.encode(t.lower()))[:max_len] for t in texts]


def batches_of(seqs: list[list[int]], batch_size: int, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Up to batch_size sentences of similar length per batch (data.token_batches with no token limit). The batches
    depend only on `seed` (seed + epoch in training), so a resumed run sees the same ones."""
    return token_batches([(len(s), 0) for s in seqs], 10 ** 9, seed, shuffle=shuffle, max_sentences=batch_size)


@torch.no_grad()
def class_probabilities(model: TransformerClassifier, seqs: list[list[int]], device,
                        batch_size: int = 256) -> torch.Tensor:
    """(N, n_classes) softmax probabilities on the CPU, in the order of `seqs`."""
    was_training = model.training
    model.eval()
    probs = torch.zeros(len(seqs), model.cfg.n_classes)
    for idx in batches_of(seqs, batch_size, seed=0, shuffle=False):
        logits = model(pad([seqs[i] for i in idx]).to(device))     # (B, n_classes)
        probs[idx] = logits.float().softmax(-1).cpu()
    model.train(was_training)
    return probs


def classification_metrics(preds: list[int], labels: list[int]) -> dict:
    """Accuracy, and macro-F1: the mean over the two classes of F1, so that a model that favours one class shows it."""
    f1s = []
    for c in (0, 1):
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        fp = sum(p == c and y != c for p, y in zip(preds, labels))
        fn = sum(p != c and y == c for p, y in zip(preds, labels))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    accuracy = sum(p == y for p, y in zip(preds, labels)) / max(len(labels), 1)
    return {"accuracy": round(accuracy, 4), "macro_f1": round(sum(f1s) / 2, 4)}


# ----------------------------------------------------------------------------- a trained classifier, for other scripts

def load_classifier(checkpoint: str | Path, device) -> tuple[TransformerClassifier, Vocab, dict]:
    ckpt = load_checkpoint(checkpoint, stage=STAGE)
    if ckpt.get("kind") != KIND:
        raise UserError(f"{checkpoint} is not a classify.py checkpoint (a translation model's, perhaps)")
    vocab = Vocab.load(Path(checkpoint).parent / ckpt["vocab"]["file"])
    if vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"the vocabulary beside {checkpoint} is not the one it was trained with (fingerprints differ)")
    try:
        model = TransformerClassifier(ClassifierConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{checkpoint}: weights do not fit the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, ckpt


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """classify.py's best.pt -> predict(sentences: list[str]) -> (N, 2) class probabilities (negative, positive).

    Everything on the way is this stage's own code (tokeniser, vocabulary, model), so a caller that times
    predict([sentence]) times this stage's inference. Sentences are lower-cased (SST-2 is), and are best given
    tokenised as SST-2's are ("it 's", "does n't").
    """
    device = get_device(device) if isinstance(device, str) else device
    model, vocab, _ = load_classifier(checkpoint, device)

    def predict(sentences: list[str]) -> torch.Tensor:
        return class_probabilities(model, encode_sentences(vocab, list(sentences), model.cfg.max_len), device)
    return predict


# ----------------------------------------------------------------------------- training

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
    add_common_args(p, epochs=6, batch_size=64, lr=1e-3, out_dir=f"runs/stage4_transformer/{KIND}")
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
    p.add_argument("--result", default=None, help=f"result JSON (default: stage4_transformer/results/{KIND}.json; "
                                                  "<out-dir>/result.json for smoke runs)")
    args = p.parse_args(argv)
    if args.d_model % args.n_heads:
        p.error(f"--d-model {args.d_model} must be divisible by --n-heads {args.n_heads}")
    if args.max_len < 3:
        p.error(f"--max-len must leave room for <bos>, a word and <eos> (at least 3), got {args.max_len}")
    if not 0 <= args.weight_decay < 1:
        p.error(f"--weight-decay must be in [0, 1), got {args.weight_decay}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(out_dir / "last.pt", stage=STAGE)
        if ckpt.get("kind") != KIND or "optimizer" not in ckpt:
            raise UserError(f"{out_dir / 'last.pt'} is not the last.pt of a classify.py run")
        args = argparse.Namespace(**{**vars(args), **ckpt["args"], **{k: getattr(args, k) for k in RESUMABLE}})
    log = get_logger(STAGE, out_dir / "train.log")
    log.info(("resuming: " if ckpt else "") + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    device = get_device(args.device)
    set_seed(args.seed)
    t_start = time.time()

    # ---- data: train minus whole validation sentences (and their phrases); dev, scored once at the end
    data_dir = resolve_data_dir(args.data_dir)
    texts, labels = load_sst2(data_dir, "train")
    dev_texts, dev_labels = load_sst2(data_dir, "dev")
    if args.quick:
        texts, labels, dev_texts, dev_labels = texts[:QUICK_TRAIN], labels[:QUICK_TRAIN], dev_texts[:QUICK_DEV], \
            dev_labels[:QUICK_DEV]
    n_val = min(args.val_size, len(texts) // 10)
    if n_val < 1:
        raise UserError(f"SST-2 train in {data_dir} has only {len(texts)} rows: too few to hold out a validation split")
    train_rows, val_rows = sentence_split(texts, n_val, random.Random(0))  # fixed, whatever --seed is
    vocab = Vocab.load(out_dir / "vocab.json") if ckpt else Vocab.build([texts[i].lower() for i in train_rows],
                                                                        args.min_freq)
    if ckpt and vocab.fingerprint() != ckpt["vocab"]["fingerprint"]:
        raise UserError(f"{out_dir / 'vocab.json'} does not belong to {out_dir / 'last.pt'} (fingerprints differ)")
    if not ckpt:
        vocab.save(out_dir / "vocab.json")
    seqs = encode_sentences(vocab, texts, args.max_len)
    data = {"train": ([seqs[i] for i in train_rows], [labels[i] for i in train_rows]),
            "val": ([seqs[i] for i in val_rows], [labels[i] for i in val_rows]),
            "dev": (encode_sentences(vocab, dev_texts, args.max_len), dev_labels)}
    train_seqs, train_labels = data["train"]
    steps_per_epoch = len(batches_of(train_seqs, args.batch_size, args.seed))
    total_steps = args.epochs * steps_per_epoch

    # ---- model and optimizer
    config = ClassifierConfig(vocab_size=len(vocab), d_model=args.d_model, n_heads=args.n_heads, n_layers=args.layers,
                              d_ff=args.d_ff, dropout=args.dropout, norm=args.norm, pos=args.pos, pool=args.pool,
                              max_len=args.max_len)
    model = TransformerClassifier(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    dropped = len(texts) - len(train_rows) - len(val_rows)
    log.info(f"SST-2: {len(train_rows):,} train / {len(val_rows):,} val sentences (from train; {dropped:,} phrases of "
             f"them left out of train) / {len(dev_labels):,} dev | vocabulary {len(vocab):,} (min freq {args.min_freq})"
             f" | {model.num_params():,} parameters | {steps_per_epoch} steps per epoch, {total_steps} in all")

    state = {"epoch": 0, "batch": 0, "step": 0, "best_acc": None, "best_step": 0, "best_epoch": 0,
             "train_seconds": 0.0, "history": {"train_loss": [], "val_accuracy": []}}
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        log.info(f"resumed at epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}")
    note_command(state, "stage4_transformer/classify.py", argv)  # the checkpoints keep it: results name the first

    def checkpoint(path: Path, with_optimizer: bool = True) -> None:
        obj = {"stage": STAGE, "kind": KIND, "dataset": "sst2", "config": config.to_dict(), "args": vars(args),
               "model": model.state_dict(), "state": state, "rng": rng_state(),
               "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}}
        if with_optimizer:
            obj["optimizer"] = optimizer.state_dict()
        save_checkpoint(obj, path)

    stop, restore_signals = catch_stop_signals()  # Ctrl-C / SIGTERM: finish the step, save, stop

    t_loop = time.time() - state["train_seconds"]
    try:
        model.train()
        while state["epoch"] < args.epochs and not stop["by"]:
            batches = batches_of(train_seqs, args.batch_size, args.seed + state["epoch"])  # fixed by (seed, epoch)
            bar = tqdm(total=len(batches), initial=state["batch"], desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                       leave=False, disable=None)
            for idx in batches[state["batch"]:]:
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
            # ---- end of an epoch: accuracy on the held-out sentences; keep the best epoch
            state["train_seconds"] = time.time() - t_loop
            val = classification_metrics(class_probabilities(model, data["val"][0], device).argmax(-1).tolist(),
                                         data["val"][1])
            t_loop = time.time() - state["train_seconds"]  # validation time is not training time
            state["epoch"] += 1
            state["batch"] = 0
            state["history"]["val_accuracy"].append([state["step"], val["accuracy"]])
            recent = [v for _, v in state["history"]["train_loss"][-len(batches):]]
            log.info(f"epoch {state['epoch']}: train loss {sum(recent) / len(recent):.4f} | val accuracy "
                     f"{val['accuracy']:.4f} | macro-F1 {val['macro_f1']:.4f} | {state['train_seconds']:.0f}s")
            if state["best_acc"] is None or val["accuracy"] > state["best_acc"]:
                state.update(best_acc=val["accuracy"], best_step=state["step"], best_epoch=state["epoch"])
                checkpoint(out_dir / "best.pt", with_optimizer=False)
            checkpoint(out_dir / "last.pt")
    finally:
        restore_signals()
    if stop["by"]:
        state["train_seconds"] = time.time() - t_loop
        if state["best_acc"] is None:
            # no epoch finished yet: best.pt holds these weights, and the first finished epoch replaces them
            state["best_step"] = state["step"]
            checkpoint(out_dir / "best.pt", with_optimizer=False)
        checkpoint(out_dir / "last.pt")
        log.info(f"stopped by {stop['by']} at step {state['step']}; saved {out_dir / 'last.pt'}. Continue with: "
                 f"python stage4_transformer/classify.py --out-dir {out_dir}"
                 + (f" --data-dir {args.data_dir}" if args.data_dir else "") + " --resume")
        if stop["by"] != "max_steps":
            sys.exit(130)

    # ---- final report: the epoch that was best on val, scored once on dev
    model.load_state_dict(load_checkpoint(out_dir / "best.pt", stage=STAGE)["model"])
    best_val = state["best_acc"]
    if best_val is None:  # a --max-steps run that finished no epoch: the val accuracy of the weights it stopped with
        best_val = classification_metrics(class_probabilities(model, data["val"][0], device).argmax(-1).tolist(),
                                          data["val"][1])["accuracy"]
    dev = classification_metrics(class_probabilities(model, data["dev"][0], device).argmax(-1).tolist(), dev_labels)
    metrics = {**dev, "best_val_accuracy": best_val}
    chosen = (f"best epoch on val: {state['best_epoch']} (step {state['best_step']})" if state["best_acc"] is not None
              else f"no epoch finished: the weights at step {state['best_step']}")
    log.info(f"{chosen} | dev accuracy {dev['accuracy']:.4f} | macro-F1 {dev['macro_f1']:.4f}")
    smoke = args.quick or args.max_steps is not None
    result_path = Path(args.result) if args.result else (
        out_dir / "result.json" if smoke else REPO_ROOT / STAGE / "results" / f"{KIND}.json")
    write_result(result_path, stage=STAGE, dataset="sst2", split="dev", metrics=metrics, headline="accuracy",
                 train_seconds=state["train_seconds"], device=device, params=model.num_params(),
                 command=state["commands"],
                 extra={"wall_seconds": round(time.time() - t_start, 1), "quick": args.quick, "model": "Transformer "
                        f"encoder ({args.layers} layers, d_model {args.d_model}), {args.pool} pooling, from scratch",
                        "epochs_run": state["epoch"], "steps": state["step"], "best_epoch": state["best_epoch"],
                        "best_step": state["best_step"], "vocab_size": len(vocab),
                        "sizes": {"train": len(train_rows), "val": len(val_rows), "dev": len(dev_labels),
                                  "train_phrases_of_val_dropped": dropped},
                        "config": config.to_dict(), "data_dir": str(data_dir),
                        "hparams": {k: v for k, v in vars(args).items() if k not in RESUMABLE}})
    h = state["history"]
    panels = {"loss": {"train (per step)": tuple(zip(*h["train_loss"]))}}
    if h["val_accuracy"]:
        panels["accuracy"] = {"val (whole sentences held out from train)": tuple(zip(*h["val_accuracy"]))}
    plot_curves(result_path.with_suffix(".png"), panels,
                title=f"Transformer encoder on SST-2 ({args.pool} pooling): dev accuracy {dev['accuracy']}")
    log.info(f"wrote {result_path} and its plot")


if __name__ == "__main__":
    run_cli(main)
