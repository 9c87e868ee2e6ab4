"""The Transformer (Vaswani et al. 2017) for translation, written out: attention, heads, positions, layers, masks.

    source ids (B, S) -> embed * sqrt(d) + positions -> [self-attention, feed-forward] x N           -> memory (B, S, d)
    target ids (B, T) -> embed * sqrt(d) + positions -> [masked self-attention, cross-attention over
                                                          the memory, feed-forward] x N              -> logits (B, T, V)

Every sub-layer sits in a residual branch with a LayerNorm, either after the addition (norm="post", the paper) or
before the sub-layer (norm="pre", what most code does today: the residual path stays an identity, so gradients
reach the first layers unchanged and training is stable without a long warmup).

Decoding keeps a cache per decoder layer: the keys and values of the tokens generated so far (self-attention) and of
the source (cross-attention, computed once). A step then costs one new row of attention instead of the whole prefix;
the tests check that cached and uncached decoding give the same logits.

The same encoder, with a pooled sentence vector and a linear layer on top, is the stage's sentence classifier
(`ClassifierConfig`, `TransformerClassifier`, at the end of this file; classify.py trains it on SST-2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TransformerConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 256
    n_heads: int = 8
    n_enc_layers: int = 3
    n_dec_layers: int = 3
    d_ff: int = 512
    dropout: float = 0.1
    norm: str = "pre"             # "pre" or "post" LayerNorm
    pos: str = "sinusoidal"       # "sinusoidal" or "learned" positions
    share_embeddings: bool = False  # one table for source and target (needs one joint vocabulary, target tokens first)
    tie_output: bool = True       # the output layer reuses the target embedding (Press & Wolf 2017)
    max_len: int = 256
    pad_id: int = 0

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.norm not in ("pre", "post") or self.pos not in ("sinusoidal", "learned"):
            raise ValueError(f"norm must be pre|post and pos sinusoidal|learned, got {self.norm!r}, {self.pos!r}")
        if self.share_embeddings and self.tgt_vocab_size > self.src_vocab_size:
            raise ValueError("share_embeddings needs one joint vocabulary whose first tgt_vocab_size entries are the "
                             f"target tokens; got tgt_vocab_size {self.tgt_vocab_size} > src_vocab_size "
                             f"{self.src_vocab_size}")

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_dot_product_attention(q, k, v, mask=None, dropout: float = 0.0, training: bool = False):
    """softmax(q k^T / sqrt(d_k)) v. q (B, h, T, d_k), k and v (B, h, S, d_k); mask broadcasts to (B, h, T, S) and is
    True where attention is allowed. -> output (B, h, T, d_k), weights (B, h, T, S).

    Dividing by sqrt(d_k) keeps the dot products' variance near 1 whatever the head size, so the softmax does not
    saturate into a one-hot whose gradient vanishes.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])   # (B, h, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    return F.dropout(weights, dropout, training) @ v, weights


class MultiHeadAttention(nn.Module):
    """h attention heads in parallel, each on its own d_model/h-dimensional projection of queries, keys and values."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.h, self.d_k, self.dropout = n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.h, self.d_k).transpose(1, 2)  # (B, L, d) -> (B, h, L, d_k)

    def forward(self, query, key=None, value=None, mask=None, kv=None):
        """query (B, T, d); key/value (B, S, d), or `kv`: their projections (B, h, S, d_k) already made (the cache).
        -> output (B, T, d), weights (B, h, T, S), the projected (k, v) for caching."""
        q = self.split(self.q_proj(query))
        k, v = kv if kv is not None else (self.split(self.k_proj(key)), self.split(self.v_proj(value)))
        out, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, self.training)
        B, _, T, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, self.h * self.d_k)), weights, (k, v)


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...): every position a unique pattern, and PE[p+k] a linear
    function of PE[p], which makes relative offsets easy to attend to. -> (max_len, d_model)."""
    position = torch.arange(max_len).unsqueeze(1)                                           # (L, 1)
    freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))          # (d/2,)
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(d_model) (so it is not drowned by the positions), plus positions, then dropout."""

    def __init__(self, vocab_size: int, cfg: TransformerConfig):
        super().__init__()
        self.scale = math.sqrt(cfg.d_model)
        self.tokens = nn.Embedding(vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.normal_(self.tokens.weight, std=cfg.d_model ** -0.5)
        with torch.no_grad():
            self.tokens.weight[cfg.pad_id].zero_()  # <pad> adds nothing (it is masked anyway)
        if cfg.pos == "learned":
            self.positions = nn.Embedding(cfg.max_len, cfg.d_model)
        else:
            self.register_buffer("pe", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids (B, L) at positions start .. start+L-1 (start > 0 when decoding one token at a time)."""
        L = ids.shape[1]
        if start + L > (self.positions.num_embeddings if hasattr(self, "positions") else self.pe.shape[0]):
            raise ValueError(f"sequence of {start + L} tokens is longer than max_len")
        pos = self.positions.weight[start:start + L] if hasattr(self, "positions") else self.pe[start:start + L]
        return self.drop(self.tokens(ids) * self.scale + pos)  # (B, L, d)


class FeedForward(nn.Module):
    """The same two-layer MLP applied to every position on its own: the layer's per-token computation, where attention
    only mixes positions. At the paper's width (d_ff = 4 d_model) it holds two thirds of an encoder layer's weights."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.linear1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.linear2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.linear2(self.drop(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, src_mask):
        """x (B, S, d); src_mask (B, 1, 1, S), True on real tokens. -> (B, S, d), attention (B, h, S, S)."""
        h = self.norm1(x) if self.pre else x
        a, weights, _ = self.self_attn(h, h, h, src_mask)
        x = x + self.drop(a) if self.pre else self.norm1(x + self.drop(a))
        h = self.norm2(x) if self.pre else x
        x = x + self.drop(self.ff(h)) if self.pre else self.norm2(x + self.drop(self.ff(h)))
        return x, weights


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.drop = nn.Dropout(cfg.dropout)

    def sublayer(self, x, norm, fn):
        """The residual branch around one sub-layer, pre- or post-norm."""
        if self.pre:
            out, weights = fn(norm(x))
            return x + self.drop(out), weights
        out, weights = fn(x)
        return norm(x + self.drop(out)), weights

    def forward(self, y, memory, self_mask, src_mask, cache: dict | None = None):
        """y (B, T, d) target positions; memory (B, S, d). With a cache (decoding), y holds only the new positions
        and the cache holds the keys/values of the earlier ones. -> (B, T, d), self- and cross-attention weights."""
        def self_attention(h):
            k, v = self.self_attn.split(self.self_attn.k_proj(h)), self.self_attn.split(self.self_attn.v_proj(h))
            if cache is not None:
                if "self" in cache:  # append the new positions' keys and values to the earlier ones
                    k, v = torch.cat([cache["self"][0], k], 2), torch.cat([cache["self"][1], v], 2)
                cache["self"] = (k, v)
            out, w, _ = self.self_attn(h, mask=self_mask, kv=(k, v))
            return out, w

        def cross_attention(h):
            kv = cache.get("cross") if cache is not None else None
            out, w, kv = self.cross_attn(h, memory, memory, src_mask, kv=kv)
            if cache is not None:
                cache["cross"] = kv  # the source never changes: project it once per sentence
            return out, w

        y, self_w = self.sublayer(y, self.norm1, self_attention)
        y, cross_w = self.sublayer(y, self.norm2, cross_attention)
        y, _ = self.sublayer(y, self.norm3, lambda h: (self.ff(h), None))
        return y, self_w, cross_w


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """ids (B, S) -> (B, 1, 1, S), True on real tokens: every query (and head) may look at every real key, no pad."""
    return (ids != pad_id)[:, None, None, :]


def causal_mask(T: int, device=None, start: int = 0) -> torch.Tensor:
    """(T, start+T) True where query position start+i may look at key position j: j <= start+i (no peeking ahead)."""
    return torch.ones(T, start + T, dtype=torch.bool, device=device).tril(start)


class TiedOutput(nn.Module):
    """logits = h @ E[:n]^T (Press & Wolf 2017): a token's score is how well the state matches the vector that reads
    it. With a joint table (target tokens first), only the n rows the decoder may write are scored: for en -> fr about
    half the table, and the output layer is the costliest matmul of a training step."""

    def __init__(self, embedding: nn.Embedding, n: int):
        super().__init__()
        self.weight, self.n = embedding.weight, n   # the same Parameter as the embedding's (saved under both names)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight[:self.n])    # (..., d) -> (..., n)


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = Embedding(cfg.src_vocab_size, cfg)
        self.tgt_embed = Embedding(cfg.tgt_vocab_size, cfg)
        if cfg.share_embeddings:
            self.tgt_embed.tokens = self.src_embed.tokens
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_dec_layers))
        # pre-norm leaves the last residual sum un-normalised: one final LayerNorm per stack (as nn.Transformer)
        self.enc_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.dec_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        # tied, the output layer is the target embedding table: its first tgt_vocab_size rows (all of a shared joint
        # table's target tokens, data.Vocab.n_target); untied, a matrix of its own
        self.out = (TiedOutput(self.tgt_embed.tokens, cfg.tgt_vocab_size) if cfg.tie_output
                    else nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False))

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """src (B, S) -> memory (B, S, d), src_mask (B, 1, 1, S), per-layer attention weights."""
        src_mask = padding_mask(src, self.cfg.pad_id)
        x, weights = self.src_embed(src), []
        for layer in self.encoder:
            x, w = layer(x, src_mask)
            weights.append(w)
        return self.enc_norm(x), src_mask, weights

    def decode(self, tgt_in: torch.Tensor, memory, src_mask, cache: list | None = None, start: int = 0):
        """tgt_in (B, T) -> logits (B, T, V), per-layer self- and cross-attention weights.

        Training passes the whole shifted target at once, with a causal mask; decoding passes one new token per
        call with `cache` (one dict per layer) and `start` = how many tokens came before it."""
        T = tgt_in.shape[1]
        self_mask = causal_mask(T, tgt_in.device, start)[None, None]   # (1, 1, T, start+T)
        y, self_ws, cross_ws = self.tgt_embed(tgt_in, start), [], []
        for i, layer in enumerate(self.decoder):
            y, sw, cw = layer(y, memory, self_mask, src_mask, None if cache is None else cache[i])
            self_ws.append(sw)
            cross_ws.append(cw)
        return self.out(self.dec_norm(y)), self_ws, cross_ws

    def forward(self, src, tgt_in, tgt_out=None, label_smoothing: float = 0.0):
        """-> logits (B, T, V), mean cross-entropy over real target tokens (or None)."""
        memory, src_mask, _ = self.encode(src)
        logits, _, _ = self.decode(tgt_in, memory, src_mask)
        loss = None
        if tgt_out is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1),
                                   ignore_index=self.cfg.pad_id, label_smoothing=label_smoothing)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------- the sentence classifier

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
    pad_id: int = 0               # data.PAD_ID

    def __post_init__(self):
        if self.pool not in ("mean", "first"):
            raise ValueError(f"pool must be mean|first, got {self.pool!r}")
        self.encoder_config()  # the encoder's own checks: d_model divisible by n_heads, norm, pos

    def encoder_config(self) -> TransformerConfig:
        """The translator's config with only the encoder's fields in use: the blocks above read their sizes from it."""
        return TransformerConfig(src_vocab_size=self.vocab_size, tgt_vocab_size=self.vocab_size, d_model=self.d_model,
                                 n_heads=self.n_heads, n_enc_layers=self.n_layers, n_dec_layers=0, d_ff=self.d_ff,
                                 dropout=self.dropout, norm=self.norm, pos=self.pos, max_len=self.max_len,
                                 pad_id=self.pad_id)

    def to_dict(self) -> dict:
        return asdict(self)


class TransformerClassifier(nn.Module):
    """The translator's encoder -> one vector per sentence -> dropout -> Linear to the classes.

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
