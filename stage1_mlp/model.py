"""Stage 1 model: a multi-layer perceptron over a bag of word n-grams, built from raw parameters.

    ids, offsets -> EmbeddingBag (mean) -> Dropout -> [Linear -> ReLU -> Dropout] x n_layers -> Linear -> logits

Every layer here is written from `nn.Parameter` and plain tensor operations, so nothing is hidden.
Each has an official twin (`nn.EmbeddingBag`, `nn.Linear`, `nn.ReLU`, `nn.Dropout`); tests/test_stage1_parity.py
copies the weights across and checks that both give the same outputs and gradients.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass
class MLPConfig:
    vocab_size: int           # number of n-grams in the vocabulary (uni + bigrams)
    n_classes: int            # 2 for sentiment, 4 for AG News
    emb_dim: int = 64         # size of each n-gram's vector; the text vector is their mean
    hidden_dim: int = 64      # width of each hidden layer
    n_layers: int = 1         # hidden layers; 0 gives a linear classifier on the mean embedding (fastText)
    dropout: float = 0.3      # dropout on the text vector and after each hidden layer
    ngram_dropout: float = 0.0  # in training, drop each n-gram of a text with this probability (word dropout)

    def to_dict(self) -> dict:
        return asdict(self)


class EmbeddingBag(nn.Module):
    """Mean of the embedding vectors of each bag: an (N,) list of ids cut into B bags by `offsets`.

    Equivalent to `nn.EmbeddingBag(mode="mean")`. Averaging (instead of summing) keeps long and short
    texts on the same scale; an empty bag gives a zero vector.
    """

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        # small random vectors: a text's mean starts near 0, where the next layer's ReLUs are not saturated
        self.weight = nn.Parameter(torch.randn(num_embeddings, dim) * 0.1)  # (V, D)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B, N = offsets.shape[0], ids.shape[0]
        lengths = torch.diff(offsets, append=offsets.new_tensor([N]))           # (B,) n-grams per text
        bag = torch.repeat_interleave(torch.arange(B, device=ids.device), lengths)  # (N,) which text owns each id
        vectors = self.weight[ids]                                               # (N, D)
        sums = vectors.new_zeros(B, vectors.shape[1]).index_add_(0, bag, vectors)  # (B, D)
        return sums / lengths.clamp(min=1).unsqueeze(1).to(sums.dtype)           # (B, D)


class Linear(nn.Module):
    """y = x W^T + b, initialised like nn.Linear: uniform in +-1/sqrt(fan_in), so outputs keep unit-ish scale."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))  # (out, in)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))                 # (out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias  # (B, in) @ (in, out) -> (B, out)


class ReLU(nn.Module):
    """max(0, x): the non-linearity that makes two stacked linear layers more than one linear layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, 0.0)  # gradient 1 where x > 0, else 0 (as nn.ReLU, also at exactly 0)


class Dropout(nn.Module):
    """Inverted dropout: in training zero each unit with probability p and scale the rest by 1/(1-p),
    so the expected activation is unchanged and evaluation needs no rescaling."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype)  # (same shape as x) 1 = keep
        return x * keep / (1.0 - self.p)


def drop_ngrams(ids: torch.Tensor, offsets: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Word dropout (Iyyer et al. 2015, "Deep Unordered Composition"): remove each n-gram of a text with
    probability p. The mean then comes from a random subset, so the model cannot lean on a few n-grams."""
    B, N = offsets.shape[0], ids.shape[0]
    lengths = torch.diff(offsets, append=offsets.new_tensor([N]))              # (B,)
    bag = torch.repeat_interleave(torch.arange(B, device=ids.device), lengths)  # (N,)
    keep = torch.rand(N, device=ids.device) >= p                                # (N,) True = keep
    new_lengths = torch.bincount(bag[keep], minlength=B)                         # (B,)
    new_offsets = torch.zeros_like(offsets)
    new_offsets[1:] = torch.cumsum(new_lengths, 0)[:-1]
    return ids[keep], new_offsets


class BagOfNgramsMLP(nn.Module):
    """Text classifier: mean n-gram embedding, then an MLP, then one logit per class."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.embedding = EmbeddingBag(config.vocab_size, config.emb_dim)
        layers: list[nn.Module] = [Dropout(config.dropout)]
        width = config.emb_dim
        for _ in range(config.n_layers):
            layers += [Linear(width, config.hidden_dim), ReLU(), Dropout(config.dropout)]
            width = config.hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.head = Linear(width, config.n_classes)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if self.training and self.config.ngram_dropout > 0:
            ids, offsets = drop_ngrams(ids, offsets, self.config.ngram_dropout)
        x = self.embedding(ids, offsets)  # (B, emb_dim) one vector per text
        x = self.hidden(x)                # (B, hidden_dim)
        return self.head(x)               # (B, n_classes) logits; softmax lives in the loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
