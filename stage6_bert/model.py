"""BERT (Devlin et al. 2019): a stack of bidirectional Transformer encoder layers, pre-trained to fill in masked words.

    ids (B, T) + segments (B, T) -> token + position + segment embeddings -> LayerNorm -> dropout
        -> [x = LN(x + attn(x)), then x = LN(x + ffn(x))] x n_layer -> hidden (B, T, C)
        -> pooler: tanh(W h_[CLS]) -> pooled (B, C)

Unlike Stage 5's GPT, every position reads every other real position, to its left and to its right: there is no causal
mask, only a padding mask, so a pad is never read. A model that sees the whole text cannot be trained to predict the
next token (it would see it), so BERT is trained on two other tasks (`BertPretrain`):
    masked LM (MLM)              about 15% of the tokens are hidden (mostly replaced by [MASK]) and the model predicts
                                 them from both sides;
    next sentence (NSP)          given "[CLS] A [SEP] B [SEP]", was B the sentence that followed A, or a random one?
Then the pre-trained encoder is fine-tuned with a small head on the pooled [CLS] state (`BertClassifier`).

The layers are post-norm, as in the paper and Hugging Face's BertModel: the LayerNorm comes after the residual sum
(Stage 4 offers both; GPT-2 puts it before each branch). norm="pre" puts it before each branch, with one LayerNorm
after the last layer instead of the one on the embeddings (Megatron-BERT's layout, also checked against transformers).
GELU is the exact erf form (Hugging Face's "gelu").
Parameters are named for what they do (`tok_emb`, `layers[i].attn.qkv`, ...); `to_hf_bert` / `from_hf_bert` translate
the names, and the tests check that `transformers`' BertModel and BertForPreTraining give the same outputs with the
same weights.

Attention has two paths that compute the same thing (tested): attn="manual" writes out the scores, the padding mask, the
softmax and the dropout to be read; attn="sdpa" (the default) calls F.scaled_dot_product_attention.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BertConfig:
    vocab_size: int = 30522           # WordPiece vocabulary (bert-base-uncased: 30522; set it from our tokenizer)
    max_position: int = 512           # longest input: one learned position vector per position 0 .. max_position-1
    type_vocab_size: int = 2          # segments: 0 for sentence A (and [CLS]), 1 for sentence B
    hidden: int = 256                 # width of the residual stream (BERT-base: 768; BERT-mini: 256)
    n_layer: int = 4                  # encoder layers (BERT-base: 12)
    n_head: int = 4                   # attention heads per layer; head size = hidden / n_head
    intermediate: int | None = None   # width of the feed-forward layer; None: 4 x hidden, as in the paper
    dropout: float = 0.1              # on the embeddings, the residual branches and the classifier input
    attn_dropout: float = 0.1         # on the attention weights
    layer_norm_eps: float = 1e-12     # added to the variance in every LayerNorm (BERT's value; PyTorch's default 1e-5)
    pad_id: int = 0                   # the [PAD] token: its embedding row starts at 0; by default it is not attended to
    initializer_range: float = 0.02   # std of the normal init of every matrix
    attn: str = "sdpa"                # "sdpa" fused kernel or "manual" written-out attention; same results
    norm: str = "post"                # "post": LayerNorm after each residual sum (BERT); "pre": before each branch
    pos_init: str = "normal"          # the learned position table starts "normal" (BERT) or as "sinusoidal" waves

    def __post_init__(self):
        if self.intermediate is None:
            self.intermediate = 4 * self.hidden
        for name in ("vocab_size", "max_position", "type_vocab_size", "hidden", "n_layer", "n_head", "intermediate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.hidden % self.n_head:
            raise ValueError(f"hidden {self.hidden} is not divisible by n_head {self.n_head}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is not a token id (vocab_size {self.vocab_size})")
        if self.attn not in ("sdpa", "manual"):
            raise ValueError(f"attn must be sdpa or manual, got {self.attn!r}")
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm must be post or pre, got {self.norm!r}")
        if self.pos_init not in ("normal", "sinusoidal"):
            raise ValueError(f"pos_init must be normal or sinusoidal, got {self.pos_init!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        return cls(**d)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's init (as Hugging Face's): every matrix N(0, std), biases 0, LayerNorm gain 1 and bias 0, and the [PAD]
    embedding row 0 (padding_idx: the lookup gives it no gradient; the tied MLM output layer still does)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def sinusoids(T: int, C: int) -> torch.Tensor:
    """(T, C) sine and cosine waves of Vaswani et al. (Stage 4's sinusoidal encoding), standard deviation 1/sqrt(2).

    Why start the learned position table from them (pos_init="sinusoidal"): the masked-LM loss needs the neighbours
    of a hidden word, and a random table has to discover which positions are neighbours before attention can find
    them. Small models on small budgets then sit near the unigram loss for thousands of steps. With sinusoids, position
    t + k is a fixed rotation of position t from the first step, and one query/key matrix can look k tokens away."""
    pos = torch.arange(T, dtype=torch.float32)[:, None]                       # (T, 1)
    freq = 10000.0 ** (-torch.arange(0, C, 2, dtype=torch.float32) / C)      # (C/2,)
    table = torch.zeros(T, C)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)[:, : C // 2]
    return table


class SelfAttention(nn.Module):
    """n_head attention heads in parallel; every position attends to every real (not padding) position."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.hidden // cfg.n_head
        self.manual, self.dropout_p = cfg.attn == "manual", cfg.attn_dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)   # q, k and v of all heads in one matmul
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)      # mixes the heads' outputs
        self.attn_dropout = nn.Dropout(cfg.attn_dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); keep (B, 1, 1, T) True at the real keys -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                                                     # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # 3 x (B, H, T, D)
        if self.manual:
            att = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)   # (B, H, T, T): every query . every key
            att = att.masked_fill(~keep, float("-inf"))                 # a pad key gets weight exp(-inf) = 0
            att = self.attn_dropout(att.softmax(dim=-1))                # each row sums to 1 over the real keys
            y = att @ v                                                 # (B, H, T, D): weighted mean of values
        else:  # the same in one fused kernel (a boolean attn_mask: True = may attend)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                               dropout_p=self.dropout_p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)                          # (B, T, H, D) -> (B, T, C): heads side by side
        return self.proj(y)


class EncoderLayer(nn.Module):
    """Post-norm layer (Vaswani et al. 2017; BERT): x = LN(x + drop(attn(x))), then x = LN(x + drop(ffn(x))). The norm
    sits on the residual stream itself, which makes early training fragile without learning-rate warmup (Xiong et al.
    2020): later models moved it before each branch (pre-norm, Stage 5): x = x + drop(attn(LN(x))), then
    x = x + drop(ffn(LN(x))), the layout of Megatron-BERT (Shoeybi et al. 2019) and of the "Cramming" recipe."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden, cfg.intermediate)    # per position: C -> 4C, GELU, -> C
        self.ffn_out = nn.Linear(cfg.intermediate, cfg.hidden)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(F.gelu(self.ffn_in(x)))   # (B, T, C) -> (B, T, 4C) -> (B, T, C); exact erf GELU

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.pre:  # the residual stream is never normalised; each branch reads a normalised copy
            x = x + self.dropout(self.attn(self.attn_norm(x), keep))               # (B, T, C)
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attn(x, keep)))                  # (B, T, C)
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Bert(nn.Module):
    """The encoder: embeddings, n_layer layers and the pooler. What pre-training and fine-tuning share. Post-norm
    normalises the embeddings; pre-norm instead normalises the output of the last layer (its residual stream is never
    normalised otherwise), as Megatron-BERT does."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_id)
        self.pos_emb = nn.Embedding(cfg.max_position, cfg.hidden)      # one learned vector per position
        self.seg_emb = nn.Embedding(cfg.type_vocab_size, cfg.hidden)   # one learned vector per segment (A or B)
        post = cfg.norm == "post"
        self.emb_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if post else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.final_norm = nn.Identity() if post else nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden)
        self.apply(lambda m: init_weights(m, cfg.initializer_range))
        if cfg.pos_init == "sinusoidal":  # still learned; only the starting point differs
            with torch.no_grad():
                self.pos_emb.weight.copy_(sinusoids(cfg.max_position, cfg.hidden) * cfg.initializer_range * math.sqrt(2))

    def forward(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T); token_type_ids (B, T) segment of each token, None: all 0; attention_mask (B, T) 1 for a
        real token and 0 for a pad, None: every token that is not pad_id. -> hidden (B, T, C), pooled (B, C).
        The states at pad positions are computed but mean nothing: read only the real ones. A row without a single real
        token has no key to attend to (NaN with attn="manual"); a BERT input always has its [CLS]."""
        B, T = input_ids.shape
        if T > self.cfg.max_position:
            raise ValueError(f"{T} tokens do not fit in max_position {self.cfg.max_position}: truncate the input")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = input_ids != self.cfg.pad_id
        keep = attention_mask.bool()[:, None, None, :]    # (B, 1, 1, T): the same keys for every head and query
        x = self.tok_emb(input_ids) + self.seg_emb(token_type_ids)                  # (B, T, C)
        x = x + self.pos_emb(torch.arange(T, device=input_ids.device))             # (T, C) broadcast over the batch
        x = self.dropout(self.emb_norm(x))
        for layer in self.layers:
            x = layer(x, keep)
        x = self.final_norm(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))   # (B, C): [CLS] is at position 0 and has read the whole input
        return x, pooled


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> scores over the vocabulary. The last matrix is the token embedding (tied, set by
    BertPretrain), with its own bias: a token is predicted by how well the state matches the vector that reads it."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))   # (..., C) -> (..., V)


class PretrainOutput(NamedTuple):
    mlm_logits: torch.Tensor         # (B, T, V); with mlm_labels and masked_only: (N, V) at the N masked positions
    nsp_logits: torch.Tensor         # (B, 2): class 0 "B follows A", 1 "B is random" (BERT's and HF's order)
    loss: torch.Tensor | None        # mlm_loss + nsp_loss (those that have labels), or None
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None


class BertPretrain(nn.Module):
    """The encoder with BERT's two pre-training heads: masked LM on every position, next sentence on the pooled [CLS].

    With mlm_labels given (the original token at a masked position, -100 elsewhere), the MLM head runs only at the
    masked positions (masked_only, the default): hidden states are gathered where labels != -100 before the head.
    The scores over the vocabulary cost C x V per position, more than a whole encoder layer's 12 C^2 once V > 12 C
    (hidden 256, 4 layers, V = 30522: 7.8M multiply-adds per position against 3.1M for the whole encoder), and only
    the ~15% masked positions have a loss. The loss is the same; masked_only=False gives the full (B, T, V) logits."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = Bert(cfg)
        self.mlm = MLMHead(cfg)
        self.nsp = nn.Linear(cfg.hidden, 2)
        for head in (self.mlm, self.nsp):
            head.apply(lambda m: init_weights(m, cfg.initializer_range))
        self.mlm.decoder.weight = self.bert.tok_emb.weight   # tied: one matrix reads tokens and scores them

    def forward(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, mlm_labels: torch.Tensor | None = None,
                nsp_labels: torch.Tensor | None = None, masked_only: bool = True) -> PretrainOutput:
        """input_ids, token_type_ids, attention_mask as in `Bert.forward`; mlm_labels (B, T) the token to predict or
        -100; nsp_labels (B,) 0 if sentence B follows A, 1 if not. With masked_only, mlm_logits are (N, V) in the
        order of mlm_labels[mlm_labels != -100] (row by row)."""
        hidden, pooled = self.bert(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        nsp_logits = self.nsp(pooled)                                        # (B, 2)
        mlm_loss = nsp_loss = None
        if mlm_labels is not None and masked_only:
            mlm_logits = self.mlm(hidden[mlm_labels != -100])                 # (N, C) gathered -> (N, V)
        else:
            mlm_logits = self.mlm(hidden)                                    # (B, T, V)
        if mlm_labels is not None:
            targets = mlm_labels[mlm_labels != -100]                         # (N,)
            scored = mlm_logits if masked_only else mlm_logits[mlm_labels != -100]   # (N, V)
            # nothing masked in the batch: a loss of 0 (still in the graph) rather than the NaN of an empty mean
            mlm_loss = F.cross_entropy(scored, targets) if len(targets) else scored.sum() * 0.0
        if nsp_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
        losses = [part for part in (mlm_loss, nsp_loss) if part is not None]
        return PretrainOutput(mlm_logits, nsp_logits, sum(losses) if losses else None, mlm_loss, nsp_loss)


def mean_pool(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """hidden (N, T, C), keep (N, T) with 1 at the real tokens -> (N, C): the mean over each row's real tokens, the
    pads left out. BertClassifier's pooling="mean", BertBiEncoder and similarity.py all pool this way."""
    keep = keep.unsqueeze(-1).to(hidden.dtype)                                  # (N, T, 1)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)                     # (N, C)


class BertClassifier(nn.Module):
    """The encoder with a fine-tuning head: dropout + Linear on a sentence vector -> (B, num_labels).
    num_labels=1 is regression (e.g. STS-B similarity; mean squared error), more is classification (cross-entropy).

    pooling="cls" is BERT's: the pooler's tanh(W h_[CLS]). It assumes pre-training taught [CLS] to sum up the input,
    which only next-sentence prediction does: under MLM alone no loss ever reads the last layer's [CLS] state.
    pooling="mean" averages the last layer over the real tokens instead, states that MLM did train (the pooler is
    then unused).

    A regression head (num_labels=1) learns standardised targets: the Linear predicts (y - label_shift) / label_scale
    and the model outputs its prediction times label_scale plus label_shift, in the labels' own units. finetune.py sets
    them to the mean and standard deviation of the training targets (STS-B: about 2.7 and 1.5 on a 0-5 scale), so the
    head starts at the mean score, its bias at 0. Without it, the head starts near 0, and AdamW moves a bias by about
    the learning rate per step: thousands of steps go into learning the offset before the ranking is learned at all.
    They are plain numbers, recorded in the checkpoint beside num_labels, not weights."""

    POOLINGS = ("cls", "mean")

    def __init__(self, cfg: BertConfig, num_labels: int, pooling: str = "cls", label_shift: float = 0.0,
                 label_scale: float = 1.0):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be 1 (regression) or the number of classes, got {num_labels}")
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {self.POOLINGS}, got {pooling!r}")
        if not label_scale > 0:
            raise ValueError(f"label_scale must be > 0, got {label_scale}")
        self.cfg, self.num_labels, self.pooling = cfg, num_labels, pooling
        self.label_shift, self.label_scale = float(label_shift), float(label_scale)   # regression only
        self.bert = Bert(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, num_labels)
        self.head.apply(lambda m: init_weights(m, cfg.initializer_range))

    def load_backbone(self, state_dict: dict) -> BertClassifier:
        """Copy a pre-trained encoder: a BertPretrain state dict (its 'bert.' entries; the MLM and NSP heads are left
        behind) or a Bert one. The classification head keeps its random init: fine-tuning learns it. Strict: a name or
        size that does not match (another config) is an error, not a silently partial load."""
        backbone = {k.removeprefix("bert."): v for k, v in state_dict.items() if k.startswith("bert.")}
        self.bert.load_state_dict(backbone or state_dict)
        return self

    def forward(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """-> logits (B, num_labels) and the loss against labels (B,) (class ids, or float targets when num_labels=1),
        or None."""
        hidden, pooled = self.bert(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        if self.pooling == "mean":
            keep = (input_ids != self.cfg.pad_id) if attention_mask is None else attention_mask
            pooled = mean_pool(hidden, keep)                                 # (B, C)
        logits = self.head(self.dropout(pooled))                             # (B, num_labels)
        loss = None
        if self.num_labels == 1:   # regression: the head predicts standard units, the model answers in the labels'
            if labels is not None:
                loss = F.mse_loss(logits.squeeze(-1), (labels.float() - self.label_shift) / self.label_scale)
            return logits * self.label_scale + self.label_shift, loss       # (B, 1)
        if labels is not None:
            loss = F.cross_entropy(logits, labels)
        return logits, loss


class BertBiEncoder(nn.Module):
    """A bi-encoder (Reimers & Gurevych 2019, Sentence-BERT) for a similarity score: each sentence of a pair goes
    through the encoder alone, is mean-pooled over its real tokens, and the score is the cosine of the two vectors,
    times `scale` (STS-B's top score, 5). One encoder with one set of weights reads both sides ("siamese").

    A cross-encoder (BertClassifier on "[CLS] a [SEP] b [SEP]") lets every word of one sentence attend to every word
    of the other; this one cannot, but a sentence's vector can be computed once and compared with millions, and it is
    exactly how all-MiniLM-L6-v2 was trained and how similarity.py scores pairs zero-shot. Fine-tuning it moves the
    zero-shot model, through the same cosine, towards STS-B's scores: the loss is the mean squared error between the
    cosine and gold / scale. It adds no parameter.

    Input: make_batch's rows for a separately encoded pair, (2B, T): sentence a of each pair, then each sentence b.
    -> scores (B, 1), like a regression head's logits, and the loss against labels (B,) or None."""

    num_labels = 1   # a score: predict.predict_rows reads it like a regression head's output

    def __init__(self, cfg: BertConfig, scale: float = 5.0):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        self.bert = Bert(cfg)

    load_backbone = BertClassifier.load_backbone

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T) -> (N, C) unit vectors: the last layer's mean over the real tokens, L2-normalised."""
        hidden, _ = self.bert(input_ids, attention_mask=attention_mask)     # (N, T, C)
        keep = (input_ids != self.cfg.pad_id) if attention_mask is None else attention_mask
        return F.normalize(mean_pool(hidden, keep).float(), dim=-1)

    def forward(self, input_ids: torch.Tensor, *, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        if input_ids.size(0) % 2:
            raise ValueError(f"a bi-encoder batch holds sentence a then sentence b of each pair: an even number of "
                             f"rows, got {input_ids.size(0)}")
        u, v = self.embed(input_ids, attention_mask).chunk(2)               # (B, C) each: side a, side b
        cosine = (u * v).sum(-1)                                             # (B,), from -1 to 1
        loss = None if labels is None else F.mse_loss(cosine, labels.float() / self.scale)
        return (cosine * self.scale).unsqueeze(-1), loss                    # (B, 1): on the labels' scale


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999)):
    """AdamW as BERT was trained: weight decay on the matrices only (Linear weights, embeddings), none on biases and
    LayerNorms. The tied embedding is one parameter and is listed once."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


# ---- Hugging Face parity: our names <-> transformers' BertModel / BertForPreTraining / BertForSequenceClassification
HF_NAMES = {"tok_emb": "embeddings.word_embeddings", "pos_emb": "embeddings.position_embeddings",
            "seg_emb": "embeddings.token_type_embeddings", "emb_norm": "embeddings.LayerNorm", "pooler": "pooler.dense",
            "mlm.dense": "cls.predictions.transform.dense", "mlm.norm": "cls.predictions.transform.LayerNorm",
            "mlm.decoder": "cls.predictions.decoder", "nsp": "cls.seq_relationship", "head": "classifier"}
HF_LAYER_NAMES = {"attn.qkv": "attention.self.{}", "attn.proj": "attention.output.dense",
                  "attn_norm": "attention.output.LayerNorm", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
                  "ffn_norm": "output.LayerNorm"}
QKV = ("query", "key", "value")  # Hugging Face keeps three Linears where we have one fused qkv
# norm="pre" has the layout of transformers' MegatronBert* models: the same names, except for the LayerNorms
HF_NAMES_PRE = {**HF_NAMES, "final_norm": "encoder.ln"}
HF_LAYER_NAMES_PRE = {**HF_LAYER_NAMES, "attn_norm": "attention.ln", "ffn_norm": "ln"}


def hf_name(name: str, norm: str = "post") -> str:
    """Our parameter name -> Hugging Face's ('{}' where q, k and v go). Both nest the encoder under 'bert.'.
    norm="pre": the name in the MegatronBert twin."""
    names, layer_names = (HF_NAMES_PRE, HF_LAYER_NAMES_PRE) if norm == "pre" else (HF_NAMES, HF_LAYER_NAMES)
    module, param = name.rsplit(".", 1)
    prefix = "bert." if module.startswith("bert.") else ""
    module = module.removeprefix("bert.")
    if module.startswith("layers."):
        _, i, sub = module.split(".", 2)
        return f"{prefix}encoder.layer.{i}.{layer_names[sub]}.{param}"
    return f"{prefix}{names[module]}.{param}"


def hf_bert_config(cfg: BertConfig, **extra):
    """A `transformers.BertConfig` of the same shape (exact GELU, our dropouts and eps, eager attention for
    attn="manual" and SDPA otherwise), a MegatronBertConfig for norm="pre" (eager attention only). extra: e.g. num_labels. Build the model
    from it (BertModel, or MegatronBertModel, ...): random weights, no download."""
    import transformers  # only the parity helpers need it
    kind = transformers.MegatronBertConfig if cfg.norm == "pre" else transformers.BertConfig
    return kind(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.intermediate, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attn_dropout,
        max_position_embeddings=cfg.max_position, type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_id,
        attn_implementation="eager" if cfg.attn == "manual" or cfg.norm == "pre" else "sdpa", **extra)


def to_hf_bert(model: nn.Module) -> dict:
    """Our weights as a state dict for the `transformers` twin: Bert -> BertModel, BertPretrain -> BertForPreTraining,
    BertClassifier -> BertForSequenceClassification (MegatronBertModel, ... for norm="pre"; load it with their
    load_state_dict)."""
    out = {}
    for name, tensor in model.state_dict().items():
        target = hf_name(name, model.cfg.norm)
        if "{}" in target:   # the fused (3C, C) qkv -> three (C, C), in the order q, k, v
            out.update({target.format(part): piece for part, piece in zip(QKV, tensor.chunk(3))})
        else:
            out[target] = tensor
        if target == "cls.predictions.decoder.bias":
            out["cls.predictions.bias"] = tensor   # HF keeps the same bias under two names
    return out


def from_hf_bert(hf_model, **overrides) -> nn.Module:
    """Our model holding the weights of a `transformers` BertModel (-> Bert), BertForPreTraining (-> BertPretrain) or
    BertForSequenceClassification (-> BertClassifier), or of their MegatronBert* twins (norm="pre").
    overrides: other config fields, e.g. attn="manual"."""
    kinds = {"BertModel": Bert, "BertForPreTraining": BertPretrain, "BertForSequenceClassification": BertClassifier}
    hf_kind = type(hf_model).__name__
    norm = "pre" if hf_kind.startswith("MegatronBert") else "post"
    kind = kinds.get(hf_kind.replace("MegatronBert", "Bert"))
    hc = hf_model.config
    if kind is None:
        raise ValueError(f"from_hf_bert reads {', '.join(kinds)}; got {type(hf_model).__name__}")
    if hc.hidden_act != "gelu" or getattr(hc, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"this BERT has exact GELU and absolute positions; the model has {hc.hidden_act!r} and "
                         f"{getattr(hc, 'position_embedding_type', None)!r}")
    cfg = BertConfig(vocab_size=hc.vocab_size, max_position=hc.max_position_embeddings,
                     type_vocab_size=hc.type_vocab_size, hidden=hc.hidden_size, n_layer=hc.num_hidden_layers,
                     n_head=hc.num_attention_heads, intermediate=hc.intermediate_size,
                     dropout=hc.hidden_dropout_prob, attn_dropout=hc.attention_probs_dropout_prob,
                     layer_norm_eps=hc.layer_norm_eps, pad_id=hc.pad_token_id or 0,
                     initializer_range=hc.initializer_range, norm=norm, **overrides)
    model = BertClassifier(cfg, hc.num_labels) if kind is BertClassifier else kind(cfg)
    theirs = hf_model.state_dict()
    mine = {}
    for name in model.state_dict():
        target = hf_name(name, norm)
        mine[name] = torch.cat([theirs[target.format(p)] for p in QKV]) if "{}" in target else theirs[target]
    model.load_state_dict(mine)
    return model


# ---- Real pre-trained weights: a Hugging Face folder (config.json + model.safetensors) read without transformers
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")   # transformers' tanh-approximation names


def config_from_hf(hc: dict, **overrides) -> BertConfig:
    """A Hugging Face config.json (as a dict) -> our BertConfig. Only what this model computes is accepted: model_type
    "bert" (post-norm layers), exact GELU, absolute positions, an encoder without cross-attention. Anything else is a
    ValueError naming the field, never a silent approximation: the tanh GELU of "gelu_new" differs from ours by up to
    4.7e-4 per activation, enough to move the hidden states off the checkpoint's. Fields a config may leave out take
    transformers' BertConfig defaults (the values of BERT itself). overrides: other fields of ours, e.g. dropout."""
    if not isinstance(hc, dict):
        raise ValueError("config.json does not hold a JSON object")
    if hc.get("model_type") != "bert":
        raise ValueError(f"model_type is {hc.get('model_type')!r}, not 'bert': a checkpoint of another architecture "
                         f"({', '.join(hc.get('architectures') or []) or 'no architectures listed'})")
    act, positions = hc.get("hidden_act", "gelu"), hc.get("position_embedding_type", "absolute")
    if act not in ("gelu", "gelu_python"):   # both are x * Phi(x) with erf in transformers
        kind = "the tanh approximation of GELU" if act in TANH_GELU else "another activation"
        raise ValueError(f"hidden_act is {act!r} ({kind}); this BERT computes exact (erf) GELU, hidden_act 'gelu'")
    if positions != "absolute":
        raise ValueError(f"position_embedding_type is {positions!r}; this BERT has absolute (learned) positions")
    if hc.get("is_decoder") or hc.get("add_cross_attention"):
        raise ValueError("is_decoder / add_cross_attention is set; this BERT is an encoder without cross-attention")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "max_position_embeddings") if k not in hc]
    if missing:
        raise ValueError(f"config.json has no {', '.join(missing)}")
    fields = dict(vocab_size=hc["vocab_size"], max_position=hc["max_position_embeddings"],
                  type_vocab_size=hc.get("type_vocab_size", 2), hidden=hc["hidden_size"],
                  n_layer=hc["num_hidden_layers"], n_head=hc["num_attention_heads"],
                  intermediate=hc["intermediate_size"], dropout=hc.get("hidden_dropout_prob", 0.1),
                  attn_dropout=hc.get("attention_probs_dropout_prob", 0.1),
                  layer_norm_eps=hc.get("layer_norm_eps", 1e-12), pad_id=hc.get("pad_token_id") or 0,
                  initializer_range=hc.get("initializer_range", 0.02), norm="post")
    try:
        return BertConfig(**{**fields, **overrides})
    except TypeError as e:   # a value of the wrong type (a width given as text, ...)
        raise ValueError(f"config.json: {e}") from None


def state_from_hf(tensors: dict, cfg: BertConfig) -> tuple[dict, list[str]]:
    """The tensors of a Hugging Face BERT checkpoint (BertModel's names, or with a "bert." prefix as in
    BertForPreTraining; LayerNorm's old "gamma"/"beta" names too) -> (a BertPretrain state dict in our names, the
    parts the checkpoint lacks). The encoder must be complete and every tensor the shape `cfg` gives it; the pooler,
    the masked-LM head and the NSP head are optional (all-MiniLM-L6-v2 has a pooler and neither head): a missing one
    keeps a fresh init and is named in the list ("pooler", "mlm", "nsp"). Tensors no part reads (position_ids, a
    task head) are left out."""
    theirs = {}
    for name, tensor in tensors.items():
        name = name.removesuffix(".gamma") + ".weight" if name.endswith(".gamma") else name
        name = name.removesuffix(".beta") + ".bias" if name.endswith(".beta") else name
        theirs[name.removeprefix("bert.")] = tensor           # the encoder's names without their "bert." prefix
    theirs.setdefault("cls.predictions.decoder.bias", theirs.get("cls.predictions.bias"))
    decoder = theirs.pop("cls.predictions.decoder.weight", None)   # BERT ties it to the token embedding; so do we
    embedding = theirs.get("embeddings.word_embeddings.weight")
    if decoder is not None and embedding is not None and not torch.equal(decoder, embedding):
        raise ValueError("the masked-LM output matrix is not the token embedding (untied): this BERT ties them")
    theirs["cls.predictions.decoder.weight"] = embedding
    template = BertPretrain(cfg).state_dict()     # every name and shape we need, with a fresh init for what is missing
    parts = {"pooler": "bert.pooler.", "mlm": "mlm.", "nsp": "nsp."}
    out, absent = {}, set()
    for name, mine in template.items():
        target = hf_name(name).removeprefix("bert.")
        keys = [target.format(p) for p in QKV] if "{}" in target else [target]
        found = [theirs.get(k) for k in keys]
        if any(t is None for t in found):
            part = next((p for p, prefix in parts.items() if name.startswith(prefix)), None)
            if part is None:
                raise ValueError(f"the checkpoint has no {keys[found.index(None)]}: not a complete BERT encoder")
            absent.add(part)
            continue
        tensor = torch.cat(found) if len(found) > 1 else found[0]   # q, k, v stacked into our fused qkv
        if tensor.shape != mine.shape:
            raise ValueError(f"{keys[0]} has shape {tuple(found[0].shape)}, but config.json makes it "
                             f"{tuple(mine.shape) if len(found) == 1 else (mine.shape[0] // 3, *mine.shape[1:])}")
        out[name] = tensor.to(mine.dtype)
    for name, mine in template.items():   # a part seen only in pieces (an MLM head without its bias) is absent too
        if any(name.startswith(parts[p]) for p in absent):
            out[name] = mine
    out["mlm.decoder.weight"] = out["bert.tok_emb.weight"]   # one tied matrix under its two names
    return out, sorted(absent)


def from_pretrained(folder, kind=Bert, *, num_labels: int = 2, pooling: str = "cls", **overrides):
    """nanoGPT's GPT.from_pretrained, for BERT: a folder with config.json and model.safetensors (the Hugging Face
    layout) -> our `kind` (Bert, BertPretrain, BertClassifier with num_labels and pooling, or BertBiEncoder) holding
    its weights, and the parts the checkpoint lacks (see state_from_hf). Only `safetensors` is needed, not
    transformers: the weights are a plain {name: tensor} file. BertPretrain needs the masked-LM head (fill-mask); a
    classifier's head is new. ValueError for a config or weights this model cannot take; OSError for a file that
    cannot be read."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file   # the weights file format of the hub: tensors, no pickled code

    folder = Path(folder)
    cfg = config_from_hf(json.loads((folder / "config.json").read_text(encoding="utf-8")), **overrides)
    state, absent = state_from_hf(load_file(folder / "model.safetensors"), cfg)
    if kind is BertPretrain and "mlm" in absent:
        raise ValueError("the checkpoint has no masked-LM head (no cls.predictions.* weights): it can be fine-tuned "
                         "or used as an encoder, but it cannot fill in masks")
    if kind is BertPretrain:
        model = BertPretrain(cfg)
    else:
        model = (BertClassifier(cfg, num_labels, pooling) if kind is BertClassifier
                 else BertBiEncoder(cfg) if kind is BertBiEncoder else Bert(cfg))
        encoder = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
        state = encoder if kind is Bert else {**model.state_dict(), **{f"bert.{k}": v for k, v in encoder.items()}}
    model.load_state_dict(state)
    return model, absent
