"""Stage 2 model: recurrent language models with hand-written RNN, LSTM and GRU cells.

    ids (B, T) -> Embedding -> Dropout -> [recurrent layer] x n_layers -> Dropout -> softmax over the vocabulary

The recurrent layers exist twice: `RecurrentLayers` below, written from the equations, and PyTorch's
`nn.RNN` / `nn.LSTM` / `nn.GRU` (`--impl torch`). Both use the same parameter names and layout
(`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, ...; gates stacked in PyTorch's order), so a
state dict moves between them unchanged and the parity tests can show they compute the same function.
Embedding and Linear are torch's own: Stage 1 built those from scratch already.

The same recurrent layers also read whole sentences for classification (`RNNClassifier`, trained by classify.py):

    ids (B, T) -> Embedding -> Dropout -> [recurrent layer] x n_layers -> output at the last real token -> Dropout
               -> Linear -> class scores (B, 2)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # how many H-sized blocks each cell's weight matrices stack


@dataclass
class LMConfig:
    vocab_size: int
    model_type: str = "lstm"      # rnn | lstm | gru
    emb_dim: int = 256
    hidden_dim: int = 256
    n_layers: int = 2
    dropout: float = 0.2          # on embeddings, between layers, and before the softmax
    tie_weights: bool = False     # share the embedding matrix with the output layer (needs emb_dim == hidden_dim)
    impl: str = "scratch"         # scratch | torch
    adaptive_cutoffs: list[int] = field(default_factory=list)  # non-empty: adaptive softmax with these clusters

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClassifierConfig:
    vocab_size: int
    n_classes: int = 2
    model_type: str = "lstm"      # rnn | lstm | gru
    emb_dim: int = 128
    hidden_dim: int = 256
    n_layers: int = 1
    dropout: float = 0.5          # on embeddings, between layers, and on the sentence vector
    impl: str = "torch"           # scratch | torch: the same function; torch's loop over time runs in C++
    pad_id: int = 0               # the id that fills a batch's shorter sentences up to its longest

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- one time step of each cell
# xw is the input's contribution x W_ih^T + b_ih, computed for all time steps at once before the loop;
# only the recurrent part h W_hh^T has to wait for the previous step.

def rnn_cell(xw: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """Elman RNN: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    return torch.tanh(xw + h @ w_hh.T + b_hh)  # (B, H)


def lstm_cell(xw, h, c, w_hh, b_hh) -> tuple[torch.Tensor, torch.Tensor]:
    """LSTM: gates decide what the cell state c forgets (f), takes in (i, g) and shows (o).

    c' = f * c + i * g is a sum, not a product of many Jacobians: that additive path is what lets
    gradients survive over long spans where a vanilla RNN's vanish.
    """
    i, f, g, o = (xw + h @ w_hh.T + b_hh).chunk(4, dim=-1)  # PyTorch's gate order: input, forget, cell, output
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
    h = torch.sigmoid(o) * torch.tanh(c)                         # (B, H)
    return h, c


def gru_cell(xw, h, w_hh, b_hh) -> torch.Tensor:
    """GRU: an update gate z mixes the old state with a candidate n; a reset gate r decides how much of h n sees."""
    xr, xz, xn = xw.chunk(3, dim=-1)                 # PyTorch's gate order: reset, update, new
    hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h                       # (B, H)


class RecurrentLayers(nn.Module):
    """A stack of RNN/LSTM/GRU layers, batch first, a drop-in for nn.RNN/nn.LSTM/nn.GRU(batch_first=True).

    state: h of shape (n_layers, B, H) for rnn/gru, the pair (h, c) for lstm, or None for zeros.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        self.mode, self.hidden_size, self.num_layers, self.dropout = mode, hidden_size, num_layers, dropout
        G = GATES[mode] * hidden_size
        bound = 1 / math.sqrt(hidden_size)  # PyTorch's initialisation: uniform in +-1/sqrt(H) for every weight
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            for name, shape in [("weight_ih", (G, fan_in)), ("weight_hh", (G, hidden_size)),
                                ("bias_ih", (G,)), ("bias_hh", (G,))]:
                setattr(self, f"{name}_l{k}", nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor, state=None):
        B, T, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        if state is None:
            zeros = x.new_zeros(L, B, H)
            state = (zeros, zeros) if self.mode == "lstm" else zeros
        h0, c0 = state if self.mode == "lstm" else (state, None)
        hs, cs = [], []
        for k in range(L):
            w_hh, b_hh = getattr(self, f"weight_hh_l{k}"), getattr(self, f"bias_hh_l{k}")
            xw = x @ getattr(self, f"weight_ih_l{k}").T + getattr(self, f"bias_ih_l{k}")  # (B, T, G): all steps
            h, c = h0[k], (c0[k] if c0 is not None else None)
            outputs = []
            for t in range(T):  # the recurrence: step t needs h from step t-1
                if self.mode == "lstm":
                    h, c = lstm_cell(xw[:, t], h, c, w_hh, b_hh)
                elif self.mode == "gru":
                    h = gru_cell(xw[:, t], h, w_hh, b_hh)
                else:
                    h = rnn_cell(xw[:, t], h, w_hh, b_hh)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)  # (B, T, H): this layer's outputs are the next layer's inputs
            if k < L - 1:
                x = F.dropout(x, self.dropout, self.training)  # between layers only, as nn.LSTM does
            hs.append(h)
            cs.append(c)
        h_n = torch.stack(hs)  # (L, B, H)
        return x, ((h_n, torch.stack(cs)) if self.mode == "lstm" else h_n)


def make_recurrent(config: LMConfig | ClassifierConfig) -> nn.Module:
    """The hand-written stack or PyTorch's (config.impl): both map (B, T, emb_dim) to (B, T, hidden_dim)."""
    args = (config.emb_dim, config.hidden_dim, config.n_layers)
    dropout = config.dropout if config.n_layers > 1 else 0.0
    if config.impl == "torch":
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[config.model_type]
        return cls(*args, dropout=dropout, batch_first=True)
    return RecurrentLayers(config.model_type, *args, dropout=dropout)


def detach_state(state):
    """Cut the graph at a window boundary (truncated BPTT) but keep the values: the state carries on."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class RNNLanguageModel(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        V, E, H = config.vocab_size, config.emb_dim, config.hidden_dim
        self.tied_adaptive = bool(config.tie_weights and config.adaptive_cutoffs)
        if not self.tied_adaptive:
            self.embedding = nn.Embedding(V, E)
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = make_recurrent(config)
        if config.adaptive_cutoffs:
            # frequent words get a full softmax in the "head"; rarer ones sit in smaller tail clusters that are
            # only computed for the targets that need them: far fewer multiply-adds than H x V per token
            self.head = nn.AdaptiveLogSoftmaxWithLoss(H, V, config.adaptive_cutoffs, div_value=4.0)
        else:
            self.head = nn.Linear(H, V)
            if config.tie_weights:
                self.head.weight = self.embedding.weight  # one matrix to read and write words (Press & Wolf, 2017)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token vectors (B, T, E). Tied with an adaptive softmax, a word's input vector is its own output vector:
        a head word's row of the head matrix, a tail word's small row times its cluster's projection
        (the tied "adaptive input" of Baevski & Auli, 2019)."""
        if not self.tied_adaptive:
            return self.embedding(idx)
        head = self.head
        x = F.embedding(idx.clamp(max=head.shortlist_size - 1), head.head.weight)   # right for head words only
        for i, (lo, hi) in enumerate(zip(head.cutoffs[:-1], head.cutoffs[1:])):
            proj, words = head.tail[i][0].weight, head.tail[i][1].weight          # (h_i, H), (n_i, h_i)
            vec = F.embedding((idx - lo).clamp(0, hi - lo - 1), words) @ proj       # (B, T, H)
            x = torch.where(((idx >= lo) & (idx < hi)).unsqueeze(-1), vec, x)
        return x

    def forward(self, idx: torch.Tensor, state=None, targets: torch.Tensor | None = None):
        """Returns (log-probabilities or logits (B, T, V), mean loss or None, new state).

        With an adaptive softmax and targets, only the loss is computed (the full distribution is the
        expensive part it avoids), so the first value is None.
        """
        x = self.drop(self.embed(idx))      # (B, T, E)
        out, state = self.rnn(x, state)     # (B, T, H)
        out = self.drop(out)
        B, T, H = out.shape
        if self.config.adaptive_cutoffs:
            if targets is not None:
                return None, self.head(out.reshape(B * T, H), targets.reshape(B * T)).loss, state
            return self.head.log_prob(out.reshape(B * T, H)).view(B, T, -1), None, state
        logits = self.head(out)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss, state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() counts a tied matrix once


class RNNClassifier(nn.Module):
    """A sentence classifier: read the sentence left to right, then classify what the last state holds.

    Batches are right-padded to their longest sentence. A recurrent layer only looks back, so its output at a
    sentence's last real token (position length - 1) has read every word of it and none of the pads that follow.
    That output is the sentence vector. The final state h_n would not do: it has also read the pads, so a sentence's
    prediction would depend on how long the others in its batch are. (Packing with nn.utils.rnn.pack_padded_sequence
    skips the pads too, but only PyTorch's layers accept packed input; gathering works for both implementations.)
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_dim, padding_idx=config.pad_id)
        with torch.no_grad():  # small vectors, as in the language model; the pad's stays zero (and gets no gradient)
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            self.embedding.weight[config.pad_id].zero_()
        self.drop = nn.Dropout(config.dropout)
        self.rnn = make_recurrent(config)
        self.head = nn.Linear(config.hidden_dim, config.n_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) right-padded, lengths (B,) the number of real tokens in each -> logits (B, n_classes)."""
        x = self.drop(self.embedding(ids))                     # (B, T, E)
        out, _ = self.rnn(x)                                   # (B, T, H): the top layer's output at every position
        last = out[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, H): at each last real token
        return self.head(self.drop(last))                      # (B, n_classes)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
