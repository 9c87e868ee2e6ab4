"""A fine-tuned GPT classifier (finetune.py's best.pt) as a plain function: texts -> class probabilities.

    from stage5_gpt.predict import load_predictor
    predict = load_predictor("runs/stage5_gpt/sst2_finetune/best.pt")
    predict(["a gripping , funny film .", "dull ."])        # (2, 2): P(negative), P(positive) per sentence

The course's capstone (scripts/compare_classifiers.py) times every stage's classifier through such a function.
"""
from __future__ import annotations

from pathlib import Path

import torch

from scripts.common import UserError, load_checkpoint
from stage5_gpt.data import encode_sentences, load_tokenizer, make_batch, pad_id_of, tokenizer_fingerprint
from stage5_gpt.model import GPT, GPTClassifier, GPTConfig

STAGE = "stage5_gpt"


def load_predictor(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """-> predict(texts: list[str]) -> (N, n_classes) probabilities, on `device`'s model, returned on the CPU."""
    device = torch.device(device)
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="classifier")
    if ckpt.get("task") != "sst2":  # checkpoints older than kinds: a pre-trained GPT has no task
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
    pad_id = pad_id_of(tok)

    @torch.no_grad()  # on the function it returns: a decorator on load_predictor would end before predict runs
    def predict(texts: list[str]) -> torch.Tensor:
        ids, lengths = make_batch(encode_sentences(tok, list(texts), max_len), pad_id, device)   # (N, T), (N,)
        return model(ids, lengths).float().softmax(-1).cpu()                                     # (N, 2)
    return predict
