"""An RNN encoder-decoder for translation, with Bahdanau (additive) or Luong (multiplicative) attention, or none.

    source ids (B, S) -> Encoder: bidirectional GRU -> memory (B, S, H) and a summary of the sentence (B, H)
    target so far     -> Decoder: GRU + attention over the memory -> next-token logits (B, T, V)

attention="none" is the classic sequence-to-sequence model (Cho et al. 2014): the decoder sees the source
only through one fixed vector, the encoder's summary. attention="bahdanau" (Bahdanau et al. 2015) scores
every source position with a small MLP on the *previous* decoder state and feeds the weighted context into
the GRU. attention="luong" (Luong et al. 2015, "general" score) scores with a bilinear form on the *current*
decoder state and mixes the context into the output; the GRU never sees it, so training runs the GRU over
the whole target at once, which is several times faster on a CPU.

Every variant has one `step` function (one target token for a batch of hypotheses), used by greedy and beam
search. `forward` (teacher forcing) computes the same thing for a whole target sentence: the parallel path
of luong/none is tested equal to looping `step`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ATTENTIONS = ("bahdanau", "luong", "none")


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    emb_dim: int = 256
    hidden_dim: int = 512      # decoder state; each encoder direction has hidden_dim // 2
    attention: str = "bahdanau"
    dropout: float = 0.3
    pad_id: int = 0

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.hidden_dim % 2:
            raise ValueError("hidden_dim must be even: the two encoder directions share it")

    def to_dict(self) -> dict:
        return asdict(self)


class Encoder(nn.Module):
    """A bidirectional GRU: position i of the memory sees the whole sentence, left (forward) and right (backward)."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.src_vocab_size, cfg.emb_dim, padding_idx=cfg.pad_id)
        self.rnn = nn.GRU(cfg.emb_dim, cfg.hidden_dim // 2, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)  # final states -> the decoder's first state
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.drop(self.embed(src))                                  # (B, S, E)
        # packing makes the backward direction start at each sentence's last real token, not at its padding
        packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, h = self.rnn(packed)                                       # h: (2, B, H/2), forward and backward
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, H)
        summary = torch.tanh(self.bridge(torch.cat([h[0], h[1]], dim=-1)))                # (B, H)
        return self.drop(memory), summary


class Attention(nn.Module):
    """Scores of one decoder state against every source position -> weights (softmax over real tokens) -> context."""

    def __init__(self, kind: str, hidden_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":  # score(s, h_j) = v . tanh(W s + U h_j)
            self.W = nn.Linear(hidden_dim, hidden_dim, bias=False)
            self.U = nn.Linear(hidden_dim, hidden_dim)
            self.v = nn.Linear(hidden_dim, 1, bias=False)
        else:                   # luong "general": score(s, h_j) = s . (W h_j)
            self.W = nn.Linear(hidden_dim, hidden_dim, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """The part of the score that depends only on the source: computed once per sentence, not per step."""
        return self.U(memory) if self.kind == "bahdanau" else self.W(memory)  # (B, S, H)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, H) for T target positions at once; mask (B, S) is True on real source tokens."""
        if self.kind == "bahdanau":
            scores = self.v(torch.tanh(self.W(query).unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)  # (B, T, S)
        else:
            scores = query @ keys.transpose(1, 2)                                                   # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))  # padding gets weight exactly 0
        weights = F.softmax(scores, dim=-1)                              # (B, T, S), each row sums to 1
        return weights @ memory, weights                                 # context (B, T, H)


class Decoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        E, H = cfg.emb_dim, cfg.hidden_dim
        self.kind = cfg.attention
        self.embed = nn.Embedding(cfg.tgt_vocab_size, E, padding_idx=cfg.pad_id)
        # bahdanau and none feed a context vector into the GRU with the previous word; luong does not
        self.rnn = nn.GRU(E + (H if self.kind != "luong" else 0), H, batch_first=True)
        self.attention = Attention(self.kind, H) if self.kind != "none" else None
        # the output layer reads the new state, the context and (bahdanau/none) the previous word
        self.combine = nn.Linear(2 * H + (E if self.kind != "luong" else 0), E)
        self.out = nn.Linear(E, cfg.tgt_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def logits(self, state: torch.Tensor, context: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        parts = [state, context] if self.kind == "luong" else [state, context, emb]
        return self.out(self.drop(torch.tanh(self.combine(torch.cat(parts, dim=-1)))))  # (B, T, V)

    def advance(self, y_prev: torch.Tensor, state: torch.Tensor, enc: dict):
        """The recurrent part of one step: y_prev (B,), state (B, H) -> GRU output (B, 1, H), context (B, 1, H),
        embedding (B, 1, E), new state (B, H), attention (B, 1, S) or None."""
        emb = self.drop(self.embed(y_prev)).unsqueeze(1)                           # (B, 1, E)
        weights = None
        if self.kind == "bahdanau":  # attend with the previous state, feed the context into the GRU
            context, weights = self.attention(state.unsqueeze(1), enc["keys"], enc["memory"], enc["mask"])
            out, h = self.rnn(torch.cat([emb, context], dim=-1), state.unsqueeze(0))
        elif self.kind == "luong":   # run the GRU first, then attend with the new state
            out, h = self.rnn(emb, state.unsqueeze(0))
            context, weights = self.attention(out, enc["keys"], enc["memory"], enc["mask"])
        else:                        # no attention: the same summary vector at every step
            context = enc["summary"].unsqueeze(1)
            out, h = self.rnn(torch.cat([emb, context], dim=-1), state.unsqueeze(0))
        return out, context, emb, h.squeeze(0), weights

    def step(self, y_prev: torch.Tensor, state: torch.Tensor, enc: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One target token for every row: y_prev (B,), state (B, H) -> logits (B, V), new state, attention (B, S)."""
        out, context, emb, state, weights = self.advance(y_prev, state, enc)
        return self.logits(out, context, emb).squeeze(1), state, None if weights is None else weights.squeeze(1)

    def forward(self, tgt_in: torch.Tensor, state: torch.Tensor, enc: dict,
                teacher_forcing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: the reference previous token at every position. -> logits (B, T, V), attention (B, T, S).

        With teacher_forcing < 1 each row feeds back its own previous prediction with probability 1 - ratio
        (scheduled sampling), which needs the whole step, output layer included, one token at a time.
        """
        if teacher_forcing < 1.0:
            logits, weights = [], []
            y = tgt_in[:, 0]
            for t in range(tgt_in.shape[1]):
                if t > 0:
                    own = torch.rand(y.shape, device=y.device) >= teacher_forcing
                    y = torch.where(own, logits[-1].argmax(-1), tgt_in[:, t])
                lg, state, w = self.step(y, state, enc)
                logits.append(lg)
                weights.append(w)
            return torch.stack(logits, 1), (torch.stack(weights, 1) if weights[0] is not None else None)
        if self.kind == "bahdanau":  # the context depends on the previous state: loop over the recurrence only,
            steps = []               # then run the output layer once over all T positions (one big matmul)
            for t in range(tgt_in.shape[1]):
                out, context, emb, state, w = self.advance(tgt_in[:, t], state, enc)
                steps.append((out, context, emb, w))
            out, context, emb, weights = (torch.cat(parts, 1) for parts in zip(*steps))
            return self.logits(out, context, emb), weights
        emb = self.drop(self.embed(tgt_in))                                        # (B, T, E)
        if self.kind == "luong":     # the GRU does not depend on the context: run it over all T at once
            out, _ = self.rnn(emb, state.unsqueeze(0))                             # (B, T, H)
            context, weights = self.attention(out, enc["keys"], enc["memory"], enc["mask"])
        else:
            context, weights = enc["summary"].unsqueeze(1).expand(-1, emb.shape[1], -1), None
            out, _ = self.rnn(torch.cat([emb, context], dim=-1), state.unsqueeze(0))
        return self.logits(out, context, emb), weights


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Everything the decoder reads from the source, and its first state (B, H)."""
        memory, summary = self.encoder(src, src_len)
        enc = {"memory": memory, "summary": summary, "mask": src != self.cfg.pad_id}   # mask (B, S)
        enc["keys"] = self.decoder.attention.keys(memory) if self.decoder.attention is not None else None
        return enc, summary

    def forward(self, src, src_len, tgt_in, tgt_out=None, label_smoothing: float = 0.0, teacher_forcing: float = 1.0):
        """-> logits (B, T, V), mean cross-entropy over real target tokens (or None), attention (B, T, S) or None."""
        enc, state = self.encode(src, src_len)
        logits, weights = self.decoder(tgt_in, state, enc, teacher_forcing)
        loss = None
        if tgt_out is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1),
                                   ignore_index=self.cfg.pad_id, label_smoothing=label_smoothing)
        return logits, loss, weights

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def select_rows(enc: dict, index: torch.Tensor) -> dict:
    """The encoder outputs of the sentences `index` picks (beam search keeps K copies of each sentence)."""
    return {k: (v.index_select(0, index) if v is not None else None) for k, v in enc.items()}


def init_weights(model: nn.Module) -> None:
    """Small uniform weights, zero biases, and orthogonal recurrent matrices (as Bahdanau et al. used), which keep
    repeated multiplication by W_hh from shrinking or blowing up the state early in training."""
    for name, p in model.named_parameters():
        if "weight_hh" in name:
            for gate in p.data.chunk(3, 0):
                nn.init.orthogonal_(gate)
        elif "bias" in name:
            nn.init.zeros_(p)
        else:
            nn.init.uniform_(p, -0.1, 0.1)
    for m in model.modules():  # the <pad> embedding stays zero: padding must add nothing
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])
