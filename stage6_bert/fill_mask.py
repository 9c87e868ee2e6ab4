"""Ask the pre-trained BERT to fill in hidden words: what masked-LM pre-training taught it, one text at a time.

    python stage6_bert/fill_mask.py "the movie was [MASK] ."
    python stage6_bert/fill_mask.py "paris is the [MASK] of [MASK] ." --top-k 10
    python stage6_bert/fill_mask.py "..." --checkpoint runs/stage6_bert/pretrain/best.pt
    python stage6_bert/fill_mask.py "..." --pretrained bert-base-uncased     # real weights with a masked-LM head

Write [MASK] (upper case, with the brackets) where a word should be guessed. The tokenizer treats "[MASK]" in raw text
as plain characters ("[", "mask", "]"), exactly as it must for a text that happens to contain them, so this script
cuts the text at each "[MASK]", encodes the pieces and puts the [MASK] id between them:

    "the movie was [MASK] ."  ->  [CLS] the movie was [MASK] . [SEP]

One forward pass reads the whole text in both directions; the MLM head's softmax at each [MASK] position gives a
probability for every token in the vocabulary, and the top --top-k are printed. With several masks each is guessed on
its own, from the same pass: BERT does not fill one and then look at it when guessing the next. A guess is one
WordPiece token: a piece starting with "##" continues a word, and a word the vocabulary splits in two cannot come out.

Real weights (--pretrained, see pretrained.py) fill masks only if their checkpoint kept its masked-LM head
(cls.predictions.*, as bert-base-uncased's does). all-MiniLM-L6-v2 has none: it was trained to give sentence
embeddings, and the script says so in one line instead of guessing with a random head.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage6_bert/fill_mask.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scripts.common import UserError, get_device, positive_int, resolve_data_dir, run_cli
from stage6_bert.model import BertPretrain
from stage6_bert.predict import load_pretrained
from stage6_bert.pretrained import load_pretrained_bert
from stage6_bert.reference_runs import BERT_CHECKPOINT
from stage6_bert.tokenizer import MASK_ID, WordPieceTokenizer

MASK = "[MASK]"


def check_text(text: str) -> None:
    if not text.strip():
        raise UserError("the text is empty; give a sentence with [MASK] where a word should be guessed")
    if MASK not in text:
        hint = " ([MASK] is upper case)" if MASK.lower() in text.lower() else ""
        raise UserError(f"the text has no {MASK}{hint}; write it where a word should be guessed, "
                        f"e.g. \"the movie was {MASK} .\"")


def encode_masked(tok, text: str, max_len: int) -> list[int]:
    """[CLS] piece [MASK] piece ... [SEP]: the text cut at each literal "[MASK]", the pieces encoded one by one."""
    check_text(text)
    ids = [tok.cls_id]
    pieces = text.split(MASK)
    for i, piece in enumerate(pieces):
        ids += tok.encode(piece)
        if i < len(pieces) - 1:
            ids.append(tok.mask_id)
    ids.append(tok.sep_id)
    if len(ids) > max_len:
        raise UserError(f"the text is {len(ids)} tokens long with [CLS] and [SEP]; the model reads at most {max_len}")
    return ids


def load_mlm(checkpoint: str | Path, device) -> tuple[BertPretrain, WordPieceTokenizer]:
    """A pre-training checkpoint as a model with its masked-LM head, in eval mode, and its tokenizer (fill_mask's input;
    scripts/demo.py loads its fill-mask model through this too)."""
    state, cfg, tok, _ = load_pretrained(checkpoint)
    model = BertPretrain(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{checkpoint}: the weights do not fit its config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), tok


@torch.no_grad()
def fill_mask(model: BertPretrain, ids: list[int], top_k: int, device,
              mask_id: int = MASK_ID) -> list[list[tuple[int, float]]]:
    """For each [MASK] in ids, in order: the top_k (token id, probability) pairs, most probable first. mask_id: the
    tokenizer's (tok.mask_id; the default is a vocabulary trained here's, 4)."""
    x = torch.tensor([ids], device=device)                        # (1, T)
    logits = model(x).mlm_logits[0]                               # (T, V): no labels, so every position is scored
    positions = (x[0] == mask_id).nonzero().squeeze(-1)           # (M,) where the masks are
    probs = logits[positions].float().softmax(-1)                 # (M, V)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)         # values, indices: (M, k) each
    return [list(zip(i.tolist(), p.tolist())) for p, i in zip(top.values, top.indices)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fill in [MASK] tokens with the pre-trained BERT (Stage 6).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("text", help='a text with one or more [MASK], e.g. "the movie was [MASK] ."')
    p.add_argument("--top-k", type=positive_int, default=5, help="guesses to show for each [MASK]")
    p.add_argument("--checkpoint", default=BERT_CHECKPOINT,
                   help="a pre-training checkpoint (its tokenizer.json sits beside it)")
    p.add_argument("--pretrained", default=None, metavar="NAME",
                   help="real pre-trained weights instead of --checkpoint: a folder, a name under "
                        "<data-dir>/pretrained/ or a hub id (see stage6_bert/pretrained.py); they need a masked-LM head")
    p.add_argument("--data-dir", default=None, help="where --pretrained names are looked for (default: $MY_LLM_DATA, "
                                                     "else ~/.cache/my_llm/data)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return p.parse_args(argv)


def best_guess(tok, ids: list[int], guesses: list[list[tuple[int, float]]]) -> str:
    """The text with every [MASK] replaced by its most probable token (guesses as fill_mask returns them)."""
    filled = list(ids)
    for pos, top in zip([i for i, t in enumerate(ids) if t == tok.mask_id], guesses):
        filled[pos] = top[0][0]
    return tok.decode(filled, skip_special_tokens=False).removeprefix("[CLS] ").removesuffix(" [SEP]")


def main(argv=None) -> None:
    args = parse_args(argv)
    check_text(args.text)   # a bad text is reported before the checkpoint is loaded
    device = get_device(args.device)
    if args.pretrained:   # a checkpoint without a masked-LM head is one line here, before any guess
        model, tok, _ = load_pretrained_bert(args.pretrained, resolve_data_dir(args.data_dir), BertPretrain)
        model = model.to(device).eval()
    else:
        model, tok = load_mlm(args.checkpoint, device)
    ids = encode_masked(tok, args.text, model.cfg.max_position)
    guesses = fill_mask(model, ids, args.top_k, device, tok.mask_id)
    for n, top in enumerate(guesses, start=1):
        print(f"[MASK] {n} of {len(guesses)}:")
        for token_id, p in top:
            print(f"  {p:7.4f}  {tok.vocab[token_id]}")
    print("best guess:", best_guess(tok, ids, guesses))


if __name__ == "__main__":
    run_cli(main)
