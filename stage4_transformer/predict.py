"""A trained Stage 4 sentence classifier as a plain function: sentences -> class probabilities.

    from stage4_transformer.predict import load_predictor
    predict = load_predictor("runs/stage4_transformer/sst2_classifier/best.pt", "cpu")
    predict(["a gripping , beautifully acted film .", "two hours i will never get back ."])  # (2, 2): neg, pos

The course's capstone (scripts/compare_classifiers.py) times every stage's classifier through `load_predictor`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from scripts.common import UserError, get_device, load_checkpoint
from stage4_transformer.data import Vocab, encode_sentences, vocab_beside
from stage4_transformer.evaluate import class_probabilities
from stage4_transformer.model import ClassifierConfig, TransformerClassifier

STAGE = "stage4_transformer"


def load_classifier(checkpoint: str | Path, device) -> tuple[TransformerClassifier, Vocab, dict]:
    """classify.py's best.pt (or last.pt) -> the model in eval mode on `device`, its vocabulary, the checkpoint."""
    ckpt = load_checkpoint(checkpoint, stage=STAGE, kind="classifier")
    vocab = vocab_beside(checkpoint, ckpt)
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
