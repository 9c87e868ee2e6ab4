"""Draw the course's teaching diagrams (the networks, not results) into docs/images/ as PNG files.

    python scripts/figures.py                  # -> docs/images/*.png, the files the docs show
    python scripts/figures.py --out-dir /tmp/f # somewhere else, e.g. to compare before committing

Each figure is one plain function below that draws with matplotlib alone (boxes, arrows and text, no Graphviz and no
network), in the order the stages meet them. The labels use the names of the code they explain (`EmbeddingBag`,
`lstm_cell`, `Attention`, `EncoderLayer`, `causal_mask`, ...) and the symbols of the docs. Rerunning gives the same
bytes: nothing random and no timestamp or software version in the files.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

REPO_ROOT = Path(__file__).resolve().parents[1]
DPI = 110

# One colour per kind of block, the same in every figure.
DATA = "#f3f3f3"      # inputs, ids, tokens
EMB = "#fde9b6"       # embeddings
LINEAR = "#cfe2f3"    # linear layers, projections
ACT = "#d9ead3"       # non-linearities and gates
DROP = "#e8e8e8"      # dropout
NORM = "#e4d4f0"      # LayerNorm
ATTN = "#fbd3b0"      # attention
STATE = "#ffffff"     # hidden states
OUT = "#f6cfd4"       # logits and the loss
INK = "#222222"
MUTED = "#666666"
ACCENT = "#c0392b"    # the path a figure is about (the cell state, the residual stream, a gradient)

plt.rcParams.update({"font.size": 10, "font.family": "DejaVu Sans", "mathtext.fontset": "dejavusans"})


# ----------------------------------------------------------------------------- drawing helpers

@dataclass
class Box:
    """A drawn box, by its centre and size, so that arrows can be attached to its sides."""
    x: float
    y: float
    w: float
    h: float

    @property
    def top(self) -> tuple[float, float]:
        return self.x, self.y + self.h / 2

    @property
    def bottom(self) -> tuple[float, float]:
        return self.x, self.y - self.h / 2

    @property
    def left(self) -> tuple[float, float]:
        return self.x - self.w / 2, self.y

    @property
    def right(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y


def canvas(width: float, height: float):
    """A white figure whose data units are inches: (0, 0) bottom left, (width, height) top right."""
    fig = plt.figure(figsize=(width, height), facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str = "", color: str = LINEAR, fontsize: float = 10,
        dashed: bool = False, weight: str = "normal", edge: str = INK) -> Box:
    """A rounded box centred at (x, y) with `text` in its middle."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=color, edgecolor=edge, linewidth=1.2, linestyle="--" if dashed else "-",
                                zorder=2 if not dashed else 1))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight, zorder=3)
    return Box(x, y, w, h)


def arrow(ax, start, end, color: str = INK, lw: float = 1.3, rad: float = 0.0, dashed: bool = False,
          head: bool = True) -> None:
    """An arrow from `start` to `end` (points in inches); `rad` bends it."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>" if head else "-", mutation_scale=12, linewidth=lw,
                                 color=color, connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0,
                                 linestyle="--" if dashed else "-", zorder=1.5))


def line(ax, points, color: str = INK, lw: float = 1.3, dashed: bool = False) -> None:
    """A polyline through `points`, for wires with corners (finish it with `arrow` for a head)."""
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, linewidth=lw, linestyle="--" if dashed else "-", solid_capstyle="butt", zorder=1.5)


def op(ax, x: float, y: float, symbol: str, r: float = 0.17, color: str = "white", fontsize: float = 12) -> Circle:
    """A point-wise operation: a small circle with ×, + or a function name in it."""
    c = Circle((x, y), r, facecolor=color, edgecolor=INK, linewidth=1.2, zorder=2)
    ax.add_patch(c)
    ax.text(x, y, symbol, ha="center", va="center", fontsize=fontsize, zorder=3)
    return c


def note(ax, x: float, y: float, text: str, fontsize: float = 9, color: str = MUTED, ha: str = "left",
         va: str = "center", **kw) -> None:
    """Small explanatory text: shapes, code names, remarks."""
    ax.text(x, y, text, ha=ha, va=va, fontsize=fontsize, color=color, zorder=3, **kw)


def title(ax, x: float, y: float, text: str, fontsize: float = 12) -> None:
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight="bold", zorder=3)


def save(fig, path: Path) -> Path:
    """Write a PNG with no software name or timestamp in it, so that a rerun gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white", metadata={"Software": None})
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- Stage 1

def stage1_mlp(path: Path) -> Path:
    """Stage 1's `BagOfNgramsMLP`: a text becomes n-gram ids, their embeddings are averaged, an MLP classifies."""
    fig, ax = canvas(9.2, 8.4)
    title(ax, 4.6, 8.1, "Stage 1: a bag-of-n-grams MLP (BagOfNgramsMLP)")
    cx, w, h, step = 3.45, 3.9, 0.5, 0.78
    ys = [0.45 + step * i for i in range(9)]
    blocks = [
        ('"not a good film"', DATA, "a text"),
        ("not · a · good · film · not a · a good · good film", DATA, "tokenize + ngrams: unigrams and bigrams"),
        ("ids [41, 7, 52, 318, 2209, 1450, 6021]", DATA, "Vocab.encode: ids (N,) for the batch,\noffsets (B,) where each text starts"),
        ("EmbeddingBag (mean)", EMB, "one row of E (V, emb_dim) per id,\naveraged per text -> (B, emb_dim)"),
        ("Dropout", DROP, "(B, emb_dim)"),
        ("Linear", LINEAR, "(B, emb_dim) -> (B, hidden_dim)"),
        ("ReLU", ACT, "max(0, x)"),
        ("Dropout", DROP, "(B, hidden_dim)"),
        ("Linear (head)", LINEAR, "(B, hidden_dim) -> (B, n_classes): logits"),
    ]
    boxes = []
    for y, (text, color, side) in zip(ys, blocks):
        boxes.append(box(ax, cx, y, w, h, text, color, fontsize=10 if len(text) < 40 else 9))
        note(ax, cx + w / 2 + 0.3, y, side)
    for a, b in itertools.pairwise(boxes):
        arrow(ax, a.top, b.bottom)
    # the hidden block repeats n_layers times
    group = box(ax, cx, (ys[5] + ys[7]) / 2, w + 0.5, ys[7] - ys[5] + h + 0.3, color="none", dashed=True, edge=MUTED)
    note(ax, group.x - group.w / 2 - 0.1, group.y, "× n_layers", fontsize=10, color=INK, ha="right")
    # the loss sits outside the model
    loss = box(ax, cx, ys[-1] + step, w, h, "softmax + cross-entropy (in the loss)", OUT, fontsize=9.5)
    arrow(ax, boxes[-1].top, loss.bottom)
    note(ax, cx + w / 2 + 0.3, loss.y, "F.cross_entropy against the label")
    return save(fig, path)


# ----------------------------------------------------------------------------- Stage 2

def rnn_unrolled(path: Path) -> Path:
    """An Elman RNN (`rnn_cell`) drawn folded, with its loop, and unrolled over four time steps with shared weights."""
    fig, ax = canvas(11.0, 4.6)
    title(ax, 5.5, 4.3, "Stage 2: an RNN, folded and unrolled over time")
    # folded: one cell whose state loops back into itself
    fx, cy = 0.9, 2.1
    cell = box(ax, fx, cy, 1.0, 0.7, "rnn_cell", ACT)
    xin = box(ax, fx, 0.75, 0.7, 0.42, r"$x_t$", EMB, fontsize=11)
    yout = box(ax, fx, 3.45, 0.7, 0.42, r"$z_t$", OUT, fontsize=11)
    arrow(ax, xin.top, cell.bottom)
    arrow(ax, cell.top, yout.bottom)
    arrow(ax, (fx + 0.5, cy + 0.18), (fx + 0.5, cy - 0.18), rad=-1.6)
    note(ax, fx + 0.85, cy, r"$h$", color=INK, fontsize=10)
    note(ax, fx + 0.08, 1.27, r"$W_{ih}$", fontsize=8.5)
    note(ax, fx + 0.08, 2.77, r"$W_{out}$", fontsize=8.5)
    note(ax, fx + 0.66, cy + 0.42, r"$W_{hh}$", fontsize=8.5)
    ax.text(2.3, cy, "=", ha="center", va="center", fontsize=22)
    # unrolled: one copy of the cell per time step, all with the same weights
    x0, dx = 4.1, 1.75
    prev = box(ax, 3.0, cy, 0.66, 0.42, r"$h_0 = 0$", STATE, fontsize=10)
    for t in range(4):
        x = x0 + dx * t
        c = box(ax, x, cy, 1.0, 0.7, "rnn_cell", ACT)
        xi = box(ax, x, 0.75, 0.7, 0.42, rf"$x_{t + 1}$", EMB, fontsize=11)
        yo = box(ax, x, 3.45, 0.7, 0.42, rf"$z_{t + 1}$", OUT, fontsize=11)
        arrow(ax, xi.top, c.bottom)
        arrow(ax, c.top, yo.bottom)
        arrow(ax, prev.right, c.left)
        if t:
            note(ax, (prev.right[0] + c.left[0]) / 2, cy + 0.17, rf"$h_{t}$", ha="center", color=INK, fontsize=10)
        note(ax, x + 0.08, 1.27, r"$W_{ih}$", fontsize=8.5)
        note(ax, x + 0.08, 2.77, r"$W_{out}$", fontsize=8.5)
        prev = c
    arrow(ax, prev.right, (prev.right[0] + 0.55, cy))
    note(ax, prev.right[0] + 0.28, cy + 0.17, r"$h_4$", ha="center", color=INK, fontsize=10)
    note(ax, prev.right[0] + 0.62, cy, "...", fontsize=12, color=INK)
    note(ax, 5.5, 0.22,
         r"$h_t = \tanh(x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh})$   — the same $W_{ih}$, $W_{hh}$,"
         r" $W_{out}$ at every step;  $x_t$ (B, E),  $h_t$ (B, H),  logits $z_t$ (B, V)", ha="center", color=INK,
         fontsize=9.5)
    # backpropagation through time runs the other way along the h path
    line(ax, [(x0 + dx * 3 + 0.2, cy - 0.5), (3.4, cy - 0.5)], color=ACCENT, dashed=True)
    arrow(ax, (3.41, cy - 0.5), (3.0, cy - 0.5), color=ACCENT)
    note(ax, 3.0, cy - 0.8, "gradients flow back through\nevery step (BPTT)", ha="center", color=ACCENT,
         fontsize=8.5)
    return save(fig, path)


def lstm_cell(path: Path) -> Path:
    """Stage 2's `lstm_cell`: four gates from x_t and h_{t-1}, the additive cell-state path along the top."""
    fig, ax = canvas(10.0, 5.9)
    title(ax, 5.0, 5.6, "Stage 2: the LSTM cell (lstm_cell)")
    ax.add_patch(FancyBboxPatch((1.25, 1.2), 6.3, 3.85, boxstyle="round,pad=0,rounding_size=0.15",
                                facecolor="#fafafa", edgecolor=MUTED, linewidth=1.0, zorder=0))
    top, low, wire = 4.5, 2.15, 0.85     # heights of the cell-state line, the gates and the input wire
    xf, xi, xg, xo, xh = 2.4, 3.5, 4.6, 5.7, 6.75
    # the cell state, in the accent colour: on its way it is only multiplied by f and added to
    note(ax, 0.25, top, r"$c_{t-1}$", color=ACCENT, fontsize=12)
    arrow(ax, (0.8, top), (xf - 0.17, top), color=ACCENT, lw=2.2)
    op(ax, xf, top, "×")
    arrow(ax, (xf + 0.17, top), (xg - 0.17, top), color=ACCENT, lw=2.2)
    op(ax, xg, top, "+")
    arrow(ax, (xg + 0.17, top), (8.55, top), color=ACCENT, lw=2.2)
    note(ax, 8.65, top, r"$c_t$", color=ACCENT, fontsize=12)
    note(ax, 4.6, top + 0.35, r"cell state:  $c_t = f \odot c_{t-1} + i \odot g$", color=ACCENT, fontsize=10,
         ha="center")
    # the input: x_t and h_{t-1} reach all four gates through one matrix product
    note(ax, 0.25, wire, r"$h_{t-1}$", fontsize=12, color=INK)
    line(ax, [(0.8, wire), (xo, wire)])
    arrow(ax, (1.6, wire - 0.35), (1.6, wire))
    note(ax, 1.45, wire - 0.3, r"$x_t$", fontsize=12, color=INK, ha="right")
    for name, fn, x, words in [("f", r"$\sigma$", xf, "forget"), ("i", r"$\sigma$", xi, "input"),
                               ("g", "tanh", xg, "candidate"), ("o", r"$\sigma$", xo, "output")]:
        b = box(ax, x, low, 0.62, 0.5, fn, ACT, fontsize=11)
        arrow(ax, (x, wire), b.bottom)
        note(ax, x + 0.08, low - 0.5, rf"${name}$: {words}", fontsize=9, color=INK)
    # f multiplies the old cell state; i ⊙ g is added to it
    arrow(ax, (xf, low + 0.25), (xf, top - 0.17))
    op(ax, xg, 3.4, "×")
    arrow(ax, (xg, low + 0.25), (xg, 3.4 - 0.17))
    line(ax, [(xi, low + 0.25), (xi, 3.4)])
    arrow(ax, (xi, 3.4), (xg - 0.17, 3.4))
    arrow(ax, (xg, 3.4 + 0.17), (xg, top - 0.17))
    note(ax, xg + 0.12, 3.85, r"$i \odot g$", fontsize=9.5, color=INK)
    # the output: h_t = o ⊙ tanh(c_t)
    tanh_c = box(ax, xh, 3.65, 0.62, 0.42, "tanh", ACT, fontsize=10)
    arrow(ax, (xh, top), tanh_c.top)
    op(ax, xh, 2.75, "×")
    arrow(ax, tanh_c.bottom, (xh, 2.75 + 0.17))
    line(ax, [(xo, low + 0.25), (xo, 2.75)])
    arrow(ax, (xo, 2.75), (xh - 0.17, 2.75))
    line(ax, [(xh + 0.17, 2.75), (7.05, 2.75), (7.05, 1.55)])
    arrow(ax, (7.05, 1.55), (8.55, 1.55))
    note(ax, 8.65, 1.55, r"$h_t$", fontsize=12, color=INK)
    note(ax, 8.65, 1.2, "to the next step\nand the next layer", fontsize=8.5, va="top")
    note(ax, 7.7, 2.75, r"$h_t = o \odot \tanh(c_t)$", fontsize=10, color=INK)
    note(ax, 5.0, 0.15,
         r"$[\tilde\imath, \tilde f, \tilde g, \tilde o] = x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh}$"
         r"  (4H numbers, .chunk(4): i, f, g, o);   $h$, $c$ (B, H)", fontsize=9.5, color=INK, ha="center")
    return save(fig, path)


# ----------------------------------------------------------------------------- Stage 3

def seq2seq_attention(path: Path) -> Path:
    """Stage 3's `Seq2Seq` with `attention="bahdanau"`: the encoder's memory, one decoder step, its context vector."""
    fig, ax = canvas(11.8, 6.5)
    title(ax, 5.9, 6.25, "Stage 3: encoder-decoder with Bahdanau attention (decoder step t)")
    words = ["a", "dog", "runs", "<eos>"]
    weights = [0.08, 0.72, 0.15, 0.05]   # an illustrative alignment while the decoder writes "chien"
    xs = [1.5 + 1.2 * j for j in range(len(words))]
    bus, bars, bracket = 3.4, 3.85, 5.2  # heights of the memory's wire, the weights' base and the weighted sum
    # the encoder: embeddings, a bidirectional GRU, the memory h_j
    for j, (x, word, w) in enumerate(zip(xs, words, weights)):
        src = box(ax, x, 0.5, 0.85, 0.4, word, DATA, fontsize=10)
        emb = box(ax, x, 1.2, 0.85, 0.4, rf"$e(x_{j + 1})$", EMB, fontsize=10)
        gru = box(ax, x, 2.0, 0.85, 0.48, rf"$\overrightarrow{{h}}_{j + 1}, \overleftarrow{{h}}_{j + 1}$", ACT,
                  fontsize=10)
        mem = box(ax, x, 2.85, 0.85, 0.42, rf"$h_{j + 1}$", STATE, fontsize=11, weight="bold")
        arrow(ax, src.top, emb.bottom)
        arrow(ax, emb.top, gru.bottom)
        arrow(ax, gru.top, mem.bottom)
        line(ax, [mem.top, (x, bus)], color=MUTED, lw=1.0)
        if j:  # the forward GRU runs left to right, the backward one right to left
            arrow(ax, (xs[j - 1] + 0.425, 2.1), (x - 0.425, 2.1), lw=1.0)
            arrow(ax, (x - 0.425, 1.9), (xs[j - 1] + 0.425, 1.9), lw=1.0)
        # the attention weight on this source position, as a bar
        ax.add_patch(Rectangle((x - 0.2, bars), 0.4, w, facecolor=ATTN, edgecolor=INK, linewidth=1.0, zorder=2))
        note(ax, x, bars + w + 0.14, rf"$\alpha_{{t{j + 1}}} = {w:.2f}$", ha="center", fontsize=8.5, color=INK)
        line(ax, [(x, bars + w + 0.3), (x, bracket)], color=MUTED, lw=1.0, dashed=True)
    note(ax, xs[0] - 0.5, 0.5, "source", fontsize=8.5, ha="right")
    note(ax, xs[0] - 0.5, 2.0, "bidirectional\nGRU", fontsize=8.5, ha="right")
    note(ax, xs[0] - 0.5, 2.85, "memory", fontsize=8.5, ha="right")
    note(ax, (xs[0] + xs[-1]) / 2, 0.08, r"Encoder: $h_j = [\overrightarrow{h}_j ; \overleftarrow{h}_j]$,"
         " H/2 units each way; memory (B, S, H)", ha="center", fontsize=9, color=INK)
    # the attention: every h_j scored against s_{t-1}, softmax over j
    att = box(ax, 7.55, bus, 2.3, 0.8, "Attention\n" + r"$e_{tj} = v^\top \tanh(W s_{t-1} + U h_j)$", ATTN,
              fontsize=9.5)
    arrow(ax, (xs[0], bus), att.left, color=MUTED, lw=1.0)
    note(ax, (xs[-1] + 6.4) / 2 + 0.1, bus + 0.17, r"keys $U h_j$", ha="center", fontsize=8.5)
    line(ax, [att.top, (att.x, 4.45)])
    arrow(ax, (att.x, 4.45), (xs[-1] + 0.35, 4.45))
    note(ax, 6.6, 4.62, r"$\alpha_{t\cdot} = \mathrm{softmax}_j(e_{tj})$  (B, 1, S)", ha="center", fontsize=8.5,
         color=INK)
    # the context: the memory averaged with those weights
    ctx = box(ax, 7.55, bracket, 2.3, 0.5, r"context $c_t = \sum_j \alpha_{tj} h_j$ (B, 1, H)", ATTN, fontsize=9.5)
    line(ax, [(xs[0], bracket), (xs[-1], bracket)], color=MUTED, lw=1.0, dashed=True)
    arrow(ax, (xs[-1], bracket), ctx.left, color=MUTED, lw=1.0, dashed=True)
    note(ax, (xs[0] + xs[-1]) / 2, bracket + 0.2, "weighted sum of the memory", ha="center", fontsize=8.5)
    # the decoder state before this step
    s_prev = box(ax, 7.55, 1.9, 1.4, 0.45, r"$s_{t-1}$ (B, H)", STATE, fontsize=10)
    arrow(ax, s_prev.top, att.bottom)
    note(ax, 7.55, 1.3, "at t = 1: the bridge,\n" + r"$s_0 = \tanh(W_b [\overrightarrow{h}_S ; \overleftarrow{h}_1])$",
         ha="center", fontsize=8.5, va="top")
    # one decoder step: GRU on [e(y_{t-1}); c_t], then the output layer
    dx = 10.4
    note(ax, dx, 6.0 - 0.25, "Decoder.step", ha="center", fontsize=10, color=INK, weight="bold")
    y_prev = box(ax, dx, 0.75, 1.6, 0.45, r'$e(y_{t-1})$, "un"', EMB, fontsize=10)
    gru = box(ax, dx, 2.6, 1.6, 0.62, "GRU\n" + r"input $[e(y_{t-1}); c_t]$", ACT, fontsize=9)
    arrow(ax, y_prev.top, gru.bottom)
    line(ax, [s_prev.right, (8.9, 1.9), (8.9, 2.45)])
    arrow(ax, (8.9, 2.45), (gru.left[0], 2.45))
    line(ax, [ctx.right, (9.15, bracket), (9.15, 2.75)])
    arrow(ax, (9.15, 2.75), (gru.left[0], 2.75))
    st = box(ax, dx, 3.55, 1.4, 0.42, r"$s_t$ (B, H)", STATE, fontsize=10)
    arrow(ax, gru.top, st.bottom)
    logits = box(ax, dx, 4.55, 1.8, 0.62, "combine, tanh, out\n" + r"of $[s_t; c_t; e(y_{t-1})]$", OUT, fontsize=9)
    arrow(ax, st.top, logits.bottom)
    out = box(ax, dx, 5.45, 1.6, 0.4, 'logits (B, V): "chien"', OUT, fontsize=9)
    arrow(ax, logits.top, out.bottom)
    return save(fig, path)


# ----------------------------------------------------------------------------- Stage 4

def _block_column(ax, x: float, pre: bool) -> None:
    """One encoder layer in the post-norm (pre=False) or pre-norm (pre=True) order, bottom to top."""
    w = 2.3
    y = 0.95
    inp = box(ax, x, y, 1.6, 0.42, r"$x$  (B, T, d)", STATE, fontsize=10)
    stream_x = x - 1.55                       # the residual path runs on the left
    cur = inp.top
    for k, (sub, code, color) in enumerate((("Multi-head\nself-attention", "self_attn", ATTN),
                                          ("FeedForward\nd -> d_ff -> d, ReLU", "ff", LINEAR)), start=1):
        y_split = cur[1] + 0.3
        line(ax, [cur, (x, y_split)])
        line(ax, [(x, y_split), (stream_x, y_split)], color=ACCENT, lw=1.8)
        nodes = []
        if pre:
            nodes.append(("LayerNorm", f"norm{k}", NORM))
        nodes += [(sub, code, color), ("Dropout", "drop", DROP)]
        yy = y_split + 0.1
        prev_top = (x, y_split)
        for text, code, col in nodes:
            hh = 0.62 if "\n" in text else 0.4
            b = box(ax, x, yy + 0.2 + hh / 2, w, hh, text, col, fontsize=9.5)
            note(ax, b.right[0] + 0.08, b.y, code, fontsize=8, family="monospace")
            arrow(ax, prev_top, b.bottom)
            prev_top = b.top
            yy = b.top[1]
        y_add = yy + 0.42
        arrow(ax, prev_top, (x, y_add - 0.17))
        op(ax, x, y_add, "+")
        line(ax, [(stream_x, y_split), (stream_x, y_add)], color=ACCENT, lw=1.8)
        arrow(ax, (stream_x, y_add), (x - 0.17, y_add), color=ACCENT, lw=1.8)
        cur = (x, y_add + 0.17)
        if not pre:
            n = box(ax, x, y_add + 0.55, w, 0.4, "LayerNorm", NORM, fontsize=9.5)
            note(ax, n.right[0] + 0.08, n.y, f"norm{k}", fontsize=8, family="monospace")
            arrow(ax, cur, n.bottom)
            cur = n.top
    out_y = cur[1] + 0.55
    outb = box(ax, x, out_y, 1.6, 0.42, r"$x'$  (B, T, d)", STATE, fontsize=10)
    arrow(ax, cur, outb.bottom)
    note(ax, stream_x - 0.12, 2.0, "residual", color=ACCENT, fontsize=8.5, ha="right", rotation=90)


def transformer_block_norms(path: Path) -> Path:
    """Stage 4's `EncoderLayer`, post-norm (Vaswani et al.) beside pre-norm (the default, and Stage 5's `Block`)."""
    fig, ax = canvas(10.0, 9.1)
    title(ax, 5.0, 8.8, "Stage 4: a Transformer encoder layer, post-norm and pre-norm (--norm)")
    _block_column(ax, 2.85, pre=False)
    _block_column(ax, 7.75, pre=True)
    note(ax, 2.85, 8.4, "post-norm (Vaswani et al.; BERT)", ha="center", fontsize=11, color=INK, weight="bold")
    note(ax, 2.85, 8.1, r"$x_{l+1} = \mathrm{LN}(x_l + F_l(x_l))$", ha="center", fontsize=10.5, color=INK)
    note(ax, 7.75, 8.4, "pre-norm (the default; GPT-2, Stage 5's Block)", ha="center", fontsize=11, color=INK,
         weight="bold")
    note(ax, 7.75, 8.1, r"$x_{l+1} = x_l + F_l(\mathrm{LN}(x_l))$", ha="center", fontsize=10.5, color=INK)
    note(ax, 7.75, 0.35, "the residual stream is never normalised: an identity path\nto every layer; one final "
         "LayerNorm follows the last layer\n(enc_norm, dec_norm; in Stage 5, ln_f)", ha="center", fontsize=8.5)
    note(ax, 2.85, 0.35, "every path from the loss to an earlier layer\npasses through the LayerNorms above it",
         ha="center", fontsize=8.5)
    ax.plot([5.3, 5.3], [0.7, 8.55], color="#cccccc", linewidth=1.0)
    return save(fig, path)


# ----------------------------------------------------------------------------- Stages 5 and 6

def _mask_grid(ax, x0: float, y0: float, tokens: list[str], allowed, cell: float, label: str) -> float:
    """A T x T grid of may-attend cells, rows are queries and columns keys, top-left corner at (x0, y0).

    Returns the height of its bottom edge."""
    T = len(tokens)
    for i in range(T):
        for j in range(T):
            ok = allowed(i, j)
            ax.add_patch(Rectangle((x0 + j * cell, y0 - (i + 1) * cell), cell, cell,
                                   facecolor="#4a90c2" if ok else "#f1f1f1", edgecolor="white", linewidth=1.5))
            ax.text(x0 + (j + 0.5) * cell, y0 - (i + 0.5) * cell, "1" if ok else "0", ha="center", va="center",
                    fontsize=9, color="white" if ok else "#999999")
    for k, t in enumerate(tokens):
        ax.text(x0 - 0.08, y0 - (k + 0.5) * cell, t, ha="right", va="center", fontsize=9)
        ax.text(x0 + (k + 0.3) * cell, y0 + 0.08, t, ha="left", va="bottom", fontsize=9, rotation=45,
                rotation_mode="anchor")
    bottom = y0 - T * cell
    note(ax, x0 + T * cell / 2, bottom - 0.18, "key (column)", ha="center", fontsize=8.5)
    note(ax, x0 - 0.8, y0 - T * cell / 2, "query (row)", ha="center", fontsize=8.5, rotation=90)
    title(ax, x0 + T * cell / 2, y0 + 0.85, label, fontsize=11)
    return bottom


def attention_masks(path: Path) -> Path:
    """Stage 5's causal mask (`causal_mask`) beside Stage 6's padding-only mask (`keep`), as may-attend grids."""
    fig, ax = canvas(10.6, 5.3)
    cell, top = 0.42, 4.2
    gpt = ["the", "cat", "sat", "on", "the", "mat"]
    x0 = 1.5
    bottom = _mask_grid(ax, x0, top, gpt, lambda i, j: j <= i, cell, "GPT (Stage 5): causal_mask(T, T)")
    note(ax, x0 + 3 * cell, bottom - 0.48, "row t sees positions 0 to t: no looking ahead", ha="center", fontsize=9,
         color=INK)
    bert = ["[CLS]", "the", "movie", "was", "[MASK]", "[SEP]", "[PAD]"]
    x0 = 6.5
    bottom = _mask_grid(ax, x0, top, bert, lambda i, j: bert[j] != "[PAD]", cell,
                        "BERT (Stage 6): keep (B, 1, 1, T)")
    ax.add_patch(Rectangle((x0 + 6 * cell, bottom), cell, 7 * cell, facecolor="none", edgecolor=ACCENT,
                           linewidth=2.0))  # the padding key: hidden from every query
    note(ax, x0 + 3.5 * cell, bottom - 0.48, "every query sees both sides; only the [PAD] key is hidden",
         ha="center", fontsize=9, color=INK)
    note(ax, x0 + 3.5 * cell, bottom - 0.74, "(the [PAD] row is computed, but nothing reads it and no loss is taken "
         "there)", ha="center", fontsize=8.5)
    note(ax, 5.3, 0.15, "1 = may attend (True); masked_fill(~mask, -inf) turns each 0 into a weight of exactly 0 "
         "after the softmax", ha="center", fontsize=8.5)
    return save(fig, path)


# ----------------------------------------------------------------------------- the command

# file name -> the function that draws it; the docs embed each one (tests/test_figures.py checks both directions)
FIGURES = {
    "stage1_mlp.png": stage1_mlp,
    "stage2_rnn_unrolled.png": rnn_unrolled,
    "stage2_lstm_cell.png": lstm_cell,
    "stage3_seq2seq_attention.png": seq2seq_attention,
    "stage4_pre_post_norm.png": transformer_block_norms,
    "attention_masks_gpt_bert.png": attention_masks,
}


def draw_all(out_dir: Path) -> list[Path]:
    """Draw every figure into `out_dir`; returns the paths written."""
    return [draw(out_dir / name) for name, draw in FIGURES.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "docs" / "images",
                   help="where the PNG files go (default: docs/images, the files the docs show)")
    args = p.parse_args(argv)
    for path in draw_all(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
