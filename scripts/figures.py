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


# ----------------------------------------------------------------------------- Stage 5: answering, adapting, faster

IGNORED = "#eeeeee"   # a token whose target is -100: context, not learned


def _token_width(text: str, fontsize: float) -> float:
    """A box wide enough for `text` at `fontsize` (inches; about 0.6 em per character, plus a margin)."""
    return 0.18 + 0.6 * fontsize / 72 * len(text)


def _token(ax, x: float, y: float, w: float, text: str, kind: str, h: float = 0.42, fontsize: float = 9) -> Box:
    """One token box: kind "learn" (the loss is taken on it), "ignore" (greyed: target -100), "input" (a token the
    model reads) or "pad" (padding)."""
    if kind == "pad":
        b = box(ax, x, y, w, h, "", "white", dashed=True, edge=MUTED)
        ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, facecolor="none", edgecolor="#cccccc", hatch="///",
                               linewidth=0, zorder=1.2))
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=MUTED, style="italic", zorder=3)
        return b
    plain = kind != "ignore"
    b = box(ax, x, y, w, h, "", {"learn": OUT, "input": DATA}.get(kind, IGNORED), edge=INK if plain else "#aaaaaa")
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=INK if plain else "#888888", zorder=3,
            weight="bold" if text.startswith("<|") else "normal")
    return b


def _bracket(ax, x0: float, x1: float, y: float, text: str, color: str, fontsize: float = 9) -> None:
    """A bracket under boxes, from x0 to x1 at height y, with `text` centred below it."""
    line(ax, [(x0, y + 0.1), (x0, y), (x1, y), (x1, y + 0.1)], color=color, lw=1.3)
    note(ax, (x0 + x1) / 2, y - 0.2, text, ha="center", color=color, fontsize=fontsize)


def chat_template(path: Path) -> Path:
    """Stage 5's `render`: a conversation as one row of tokens, the ones SFT learns highlighted; below, one row of a
    right-padded batch (`pad_batch`) as inputs x and targets y, with -100 wherever nothing is learned."""
    W = 12.8
    fig, ax = canvas(W, 6.6)
    title(ax, W / 2, 6.3, "Stage 5: the chat template (render), and what supervised fine-tuning learns")
    gap, fs = 0.06, 9
    # one conversation, rendered: ids and the learn mask
    tokens = [("<|endoftext|>", "ignore"), ("<|user|>", "ignore"), ("Translate", "ignore"), ("…", "ignore"),
              ("French:", "ignore"), ("A", "ignore"), ("dog", "ignore"), ("runs.", "ignore"), ("<|end|>", "ignore"),
              ("<|assistant|>", "ignore"), ("Un", "learn"), ("chien", "learn"), ("court.", "learn"),
              ("<|end|>", "learn")]
    widths = [_token_width(t, fs) for t, _ in tokens]
    x, y1 = (W - sum(widths) - gap * (len(tokens) - 1)) / 2, 5.2
    note(ax, x, y1 + 0.55, 'render(tok, [{"role": "user", "content": "Translate ... A dog runs."},  '
         '{"role": "assistant", "content": "Un chien court."}])  ->  ids, learn', fontsize=8.5, color=INK,
         family="monospace")
    boxes = []
    for (text, kind), w in zip(tokens, widths):
        boxes.append(_token(ax, x + w / 2, y1, w, text, kind, fontsize=fs))
        note(ax, x + w / 2, y1 - 0.37, "True" if kind == "learn" else "False", ha="center", fontsize=7.5,
             color=ACCENT if kind == "learn" else "#999999")
        x += w + gap
    note(ax, boxes[0].left[0] - 0.08, y1 - 0.37, "learn", ha="right", fontsize=7.5)
    _bracket(ax, boxes[0].left[0], boxes[9].right[0], y1 - 0.6,
             "the prompt: context, target -100 (not learned)", MUTED)
    _bracket(ax, boxes[10].left[0], boxes[13].right[0], y1 - 0.6, "the reply and its <|end|>: learned", ACCENT)
    note(ax, W / 2, y1 - 1.25, "<|user|>, <|assistant|> and <|end|> have ids of their own; only render places them "
         "(a user who types \"<|end|>\" gets plain characters)", ha="center", fontsize=8.5)

    # one example of a batch, right-padded: inputs x and targets y (shifted by one, as in pre-training)
    ids = ["<|endoftext|>", "<|user|>", "Is", "…", "negative?", "A", "gem.", "<|end|>", "<|assistant|>", "positive",
           "<|end|>"]
    learn = [False] * 9 + [True, True]
    n_pad = 3
    xs = ids[:-1] + ["pad"] * n_pad                                                       # x = ids[:-1], padded
    ys = [t if keep else "-100" for t, keep in zip(ids[1:], learn[1:])] + ["-100"] * n_pad  # y = ids[1:] or -100
    widths = [max(_token_width(a, fs), _token_width(b, fs)) for a, b in zip(xs, ys)]
    left = (W - sum(widths) - gap * (len(xs) - 1)) / 2 + 0.4
    yx, yy = 2.75, 1.95
    title(ax, W / 2, 3.45, "one row of a batch (pad_batch): the targets are the next tokens, -100 off the answer "
          "and on the padding", fontsize=10.5)
    note(ax, left - 0.12, yx, "x (inputs)", ha="right", fontsize=9, color=INK)
    note(ax, left - 0.12, yy, "y (targets)", ha="right", fontsize=9, color=INK)
    x = left
    for i, (a, b, w) in enumerate(zip(xs, ys, widths)):
        padding = i >= len(ids) - 1
        _token(ax, x + w / 2, yx, w, a, "pad" if padding else "input", fontsize=fs)
        _token(ax, x + w / 2, yy, w, b, "pad" if padding else "ignore" if b == "-100" else "learn", fontsize=fs)
        arrow(ax, (x + w / 2, yx - 0.21), (x + w / 2, yy + 0.21), color="#bbbbbb", lw=0.9)
        x += w + gap
    right = x - gap
    _bracket(ax, right - sum(widths[-n_pad:]) - gap * (n_pad - 1), right, yy - 0.36, "padding: target -100", MUTED)
    note(ax, W / 2, 0.62, "Each position predicts the next token: the loss teaches \"positive\" after <|assistant|>, "
         "then <|end|>; every -100 is skipped by F.cross_entropy.\nThe padding follows the last real token and "
         "attention is causal, so no real token reads it: no mask is needed. Batches hold examples\nof similar "
         "length (length_batches), so there is little padding. The pad id is <|end|>'s; any id would do.",
         ha="center", fontsize=8.5, color=INK)
    return save(fig, path)


def lora(path: Path) -> Path:
    """Stage 5's `LoRALinear`: the frozen W beside the trained low-rank path A then B, scaled by alpha / r."""
    fig, ax = canvas(10.4, 5.6)
    title(ax, 5.2, 5.3, "Stage 5: LoRA, a frozen layer plus a trained low-rank update (LoRALinear)")
    cy_top, cy_low = 3.75, 1.75
    xin = box(ax, 0.75, (cy_top + cy_low) / 2, 0.9, 0.5, r"$x$", STATE, fontsize=12)
    note(ax, 0.75, (cy_top + cy_low) / 2 - 0.45, r"$d_{in}$", ha="center", fontsize=9)
    split = 1.5
    line(ax, [xin.right, (split, xin.y)])
    # the base path: W, frozen
    w_box = box(ax, 4.6, cy_top, 2.2, 1.3, "W\n" + r"$d_{out} \times d_{in}$", DROP, fontsize=12, edge=MUTED)
    ax.add_patch(Rectangle((w_box.x - w_box.w / 2, w_box.y - w_box.h / 2), w_box.w, w_box.h, facecolor="none",
                           edgecolor="#cfcfcf", hatch="\\\\", linewidth=0, zorder=2.05))
    line(ax, [(split, xin.y), (split, cy_top)])
    arrow(ax, (split, cy_top), w_box.left)
    note(ax, w_box.x, cy_top + 0.9, "frozen: the pre-trained weight (self.base, requires_grad False)",
         ha="center", fontsize=9, color=MUTED)
    # the adapter path: A then B, trained
    a_box = box(ax, 3.0, cy_low, 0.55, 1.3, "A", LINEAR, fontsize=12, weight="bold", edge=ACCENT)
    mid = box(ax, 4.05, cy_low, 0.5, 0.38, r"$r$", STATE, fontsize=10)
    b_box = box(ax, 5.1, cy_low, 0.55, 1.3, "B", LINEAR, fontsize=12, weight="bold", edge=ACCENT)
    for b in (a_box, b_box):  # a thick edge in the accent colour: these learn
        ax.add_patch(FancyBboxPatch((b.x - b.w / 2, b.y - b.h / 2), b.w, b.h, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor="none", edgecolor=ACCENT, linewidth=2.0, zorder=2.1))
    line(ax, [(split, xin.y), (split, cy_low)])
    arrow(ax, (split, cy_low), a_box.left)
    arrow(ax, a_box.right, mid.left)
    arrow(ax, mid.right, b_box.left)
    note(ax, a_box.x, cy_low - 0.9, "A: " + r"$r \times d_{in}$" + "\nrandom at the start", ha="center", fontsize=9,
         color=INK, va="top")
    note(ax, b_box.x, cy_low - 0.9, "B: " + r"$d_{out} \times r$" + "\n= 0 at the start", ha="center", fontsize=9,
         color=INK, va="top")
    note(ax, mid.x, cy_low + 0.45, r"$Ax$", ha="center", fontsize=9)
    note(ax, (a_box.x + b_box.x) / 2, cy_low + 1.0, "trained: lora_A, lora_B", ha="center", fontsize=9,
         color=ACCENT)
    op(ax, 6.55, cy_low, r"$\times$", r=0.22)
    note(ax, 6.55, cy_low - 0.45, r"$\alpha / r$", ha="center", fontsize=10, color=INK)
    arrow(ax, b_box.right, (6.55 - 0.22, cy_low))
    # the sum
    sx = 7.7
    plus = op(ax, sx, (cy_top + cy_low) / 2, "+", r=0.22, fontsize=14)
    line(ax, [w_box.right, (sx, cy_top)])
    arrow(ax, (sx, cy_top), (sx, plus.center[1] + 0.22))
    note(ax, sx + 0.12, cy_top - 0.35, r"$Wx$", fontsize=10, color=INK)
    line(ax, [(6.55 + 0.22, cy_low), (sx, cy_low)])
    arrow(ax, (sx, cy_low), (sx, plus.center[1] - 0.22))
    note(ax, sx + 0.12, cy_low + 0.35, r"$\frac{\alpha}{r} BAx$", fontsize=10, color=INK)
    yout = box(ax, 9.3, plus.center[1], 0.9, 0.5, r"$y$", STATE, fontsize=12)
    arrow(ax, (sx + 0.22, plus.center[1]), yout.left)
    note(ax, 9.3, plus.center[1] - 0.45, r"$d_{out}$", ha="center", fontsize=9)
    note(ax, 7.3, 4.7, "a 256 x 256 layer with r = 8:\nW: 65,536 weights, frozen\nA and B: 2 x 8 x 256 = 4,096, "
         "trained", fontsize=9, color=INK, va="center")
    note(ax, 5.2, 0.22, r"$y = Wx + \frac{\alpha}{r} B A x$.   B = 0 at the start, so the adapted model starts as "
         r"the base model.   merge: $W \leftarrow W + \frac{\alpha}{r} BA$", ha="center", fontsize=10, color=INK)
    return save(fig, path)


def speculative(path: Path) -> Path:
    """Stage 5's `speculative_generate`, one round with k = 4: the draft proposes one token at a time, the target
    checks all of them in one pass, two are accepted, the third is replaced, the fourth discarded."""
    fig, ax = canvas(11.6, 7.0)
    title(ax, 5.8, 6.7, "Stage 5: speculative decoding, one round with k = 4 (speculative_generate)")
    x0, dx, w, h = 3.0, 1.45, 1.0, 0.46
    cols = [x0 + dx * i for i in range(6)]          # the last accepted token, 4 proposals, the free 5th
    words = ["cat", "sat", "on", "a", "mat"]
    # 1. the draft proposes, one pass per token
    yd = 5.5
    note(ax, 0.25, yd + 0.05, "1. the draft\n(small, cheap)\nproposes k = 4,\none pass each", fontsize=9, color=INK,
         va="center")
    prev = box(ax, cols[0], yd, w, h, words[0], DATA, fontsize=10)
    note(ax, cols[0], yd + 0.42, "last accepted", ha="center", fontsize=8)
    draft_boxes = [prev]
    for i in range(1, 5):
        b = box(ax, cols[i], yd, w, h, words[i], EMB, fontsize=10)
        arrow(ax, prev.right, b.left)
        note(ax, cols[i], yd + 0.42, rf"$d_{i} \sim p_{i}$", ha="center", fontsize=9, color=INK)
        draft_boxes.append(b)
        prev = b
    # 2. the target reads the last token and the 4 proposals in one pass
    yt = 3.95
    note(ax, 0.25, yt, "2. the target\n(large) reads\n5 tokens in\none pass", fontsize=9, color=INK, va="center")
    tgt = box(ax, (cols[0] + cols[4]) / 2, yt, cols[4] - cols[0] + w + 0.2, 0.62,
              "target model: one forward pass, 5 new positions in its KV cache", ATTN, fontsize=10)
    for b in draft_boxes:
        arrow(ax, b.bottom, (b.x, tgt.top[1]), color=MUTED, lw=1.0)
    # its distributions: the one after token j checks proposal j + 1
    yq = 3.05
    for i in range(5):
        q = box(ax, cols[i], yq, 0.62, 0.36, rf"$q_{i + 1}$", STATE, fontsize=10)
        line(ax, [(cols[i], tgt.bottom[1]), q.top], color=MUTED, lw=1.0)
        arrow(ax, q.right, (cols[i + 1] - 0.32, yq - 0.55), color=MUTED, lw=1.0)
    note(ax, cols[5] + 0.05, yq + 0.05, r"$q_j$ judges $d_j$", fontsize=8.5)
    # 3. the verdicts, from the left
    yv = 2.1
    note(ax, 0.25, yv - 0.25, "3. accept from\nthe left:\nkeep " + r"$d_j$" + " with\nprobability\n"
         r"$\min(1, q_j(d_j) / p_j(d_j))$", fontsize=9, color=INK, va="center")
    verdicts = [("sat", ACT, "accepted ✓", INK), ("on", ACT, "accepted ✓", INK), ("a", OUT, "rejected ✗", ACCENT),
                ("mat", "white", "discarded: it\nfollows a rejection", MUTED)]
    for i, (word, color, label, ink) in enumerate(verdicts, start=1):
        b = box(ax, cols[i], yv, w, h, word, color, fontsize=10, edge=INK if word != "mat" else "#bbbbbb")
        note(ax, cols[i], yv - 0.3, label, ha="center", fontsize=9, color=ink, va="top")
        if word == "mat":  # struck through
            ax.plot([b.x - 0.3, b.x + 0.3], [yv, yv], color=MUTED, linewidth=1.2, zorder=3.5)
    fix = box(ax, cols[3], yv - 1.05, w, h, "the", OUT, fontsize=10, weight="bold", edge=ACCENT)
    arrow(ax, (cols[3], yv - 0.58), fix.top, color=ACCENT)
    note(ax, cols[3] + 0.6, yv - 1.05, "the target's correction,\ndrawn from " + r"$\max(0, q_3 - p_3)$" +
         ", normalised", fontsize=8.5, color=ACCENT)
    free = box(ax, cols[5], yv, w, h, "", "white", dashed=True, edge="#bbbbbb")
    note(ax, free.x, yv, "(5th)", ha="center", fontsize=9, color=MUTED)
    note(ax, free.x, yv - 0.3, "free if all 4 pass:\n" + r"drawn from $q_5$", ha="center", fontsize=8.5,
         va="top")
    # 4. the round's result, and the caches
    note(ax, 0.25, 0.45, "4. keep the text,\nroll back the\ncaches", fontsize=9, color=INK, va="center")
    note(ax, cols[0] - 0.55, 0.45, "The text grows by \"sat on the\": 3 tokens for one target pass. Both KV caches "
         "roll back to it (KVCache.pos):\nwhat they hold for \"a\" and \"mat\" is overwritten next round. "
         "Greedy decoding: accept while " + r"$d_j = \arg\max\, q_j$" + ".", fontsize=9, color=INK)
    return save(fig, path)


# ----------------------------------------------------------------------------- Stage 5: many processes

IDLE = "#d0d0d0"      # the hatching of a pipeline stage's idle slots


def _pipeline_slots(schedule: str, p: int, m: int) -> list[list[tuple[int, str, int]]]:
    """Where each stage's forward ("F") and backward ("B") passes fall, one slot each, when every stage runs its
    micro-batches in `pipeline_step`'s order and starts each pass as soon as its input has arrived.

    -> per stage, [(slot, "F" or "B", micro-batch)]."""
    orders = []
    for r in range(p):
        if schedule == "gpipe":
            order = [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
        else:                                   # 1F1B: warm up, then one forward and one backward in turn, cool down
            w = min(p - r - 1, m)
            order = [("F", i) for i in range(w)]
            for i in range(m - w):
                order += [("F", w + i), ("B", i)]
            order += [("B", i) for i in range(m - w, m)]
        orders.append(order)
    end: dict[tuple[str, int, int], int] = {}   # (kind, micro-batch, stage) -> the slot after it
    free, nxt, placed = [0] * p, [0] * p, [[] for _ in range(p)]
    while any(nxt[r] < len(orders[r]) for r in range(p)):
        for r in range(p):
            if nxt[r] == len(orders[r]):
                continue
            kind, i = orders[r][nxt[r]]
            # a forward needs the previous stage's activations; a backward the next stage's gradient
            need = (("F", i, r - 1) if r > 0 else None) if kind == "F" else (("B", i, r + 1) if r < p - 1 else None)
            if need is not None and need not in end:
                continue
            start = max(free[r], end.get(need, 0))
            placed[r].append((start, kind, i))
            end[(kind, i, r)] = free[r] = start + 1
            nxt[r] += 1
    return placed


def pipeline(path: Path) -> Path:
    """Stage 5's `pipeline_step` on 2 stages and 4 micro-batches: GPipe's order (every forward, then every backward)
    above 1F1B's (one forward, one backward in turn), the idle slots of each stage hatched: the bubble."""
    p, m = 2, 4
    W = 12.2
    fig, ax = canvas(W, 6.85)
    title(ax, W / 2, 6.55, "Stage 5: pipeline parallelism, 2 stages and 4 micro-batches (pipeline_step)")
    x0, sw, rh, gap = 2.5, 0.78, 0.5, 0.32           # the first slot's left edge, slot width, row height, row gap
    n_slots = 2 * (m + p - 1)
    stages = ["stage 0 (rank 0)\nwte, first Blocks", "stage 1 (rank 1)\nlast Blocks, ln_f, head"]
    for top, schedule, heading in [(5.95, "gpipe", 'GPipe (schedule="gpipe"): every forward, then every backward'),
                                   (3.3, "1f1b", '1F1B (schedule="1f1b"): after a warm-up, one forward and one '
                                                 'backward in turn')]:
        note(ax, x0, top, heading, fontsize=10.5, color=INK, weight="bold")
        slots = _pipeline_slots(schedule, p, m)
        ys = [top - 0.55 - k * (rh + gap) for k in range(p)]
        centre: dict[tuple[str, int, int], float] = {}
        for r, (y, label) in enumerate(zip(ys, stages)):
            note(ax, x0 - 0.15, y, label, ha="right", fontsize=9, color=INK)
            busy = {s for s, _, _ in slots[r]}
            for s, kind, i in slots[r]:
                box(ax, x0 + (s + 0.5) * sw, y, sw - 0.06, rh, f"{kind}{i + 1}", LINEAR if kind == "F" else OUT,
                    fontsize=10, weight="bold" if kind == "B" else "normal")
                centre[(kind, i, r)] = x0 + (s + 0.5) * sw
            for s in sorted(set(range(n_slots)) - busy):    # idle: the stage waits for its neighbour
                ax.add_patch(Rectangle((x0 + s * sw + 0.03, y - rh / 2), sw - 0.06, rh, facecolor="white",
                                       edgecolor=IDLE, hatch="///", linewidth=1.0, zorder=1.2))
                note(ax, x0 + (s + 0.5) * sw, y, "bubble", ha="center", fontsize=8.5, style="italic",
                     color=ACCENT, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0})
            # activations kept alive: forwards done whose backward has not run yet, at the worst moment
            alive = max(sum(1 for t, k, _ in slots[r] if k == "F" and t <= s)
                        - sum(1 for t, k, _ in slots[r] if k == "B" and t < s) for s in range(n_slots))
            note(ax, x0 + n_slots * sw + 0.15, y, f"keeps up to {alive}\nmicro-batches'\nactivations", fontsize=8.5)
        # the sends between the stages: activations down (forward), their gradients up (backward)
        for i in range(m):
            a, b = centre[("F", i, 0)], centre[("F", i, 1)]
            arrow(ax, (a + 0.15, ys[0] - rh / 2), (b - 0.15, ys[1] + rh / 2), color=MUTED, lw=0.9)
            a, b = centre[("B", i, 1)], centre[("B", i, 0)]
            arrow(ax, (a + 0.15, ys[1] + rh / 2), (b - 0.15, ys[0] - rh / 2), color=ACCENT, lw=0.9)
        bottom = ys[-1] - rh / 2
        for s in range(n_slots):
            note(ax, x0 + (s + 0.5) * sw, bottom - 0.17, str(s + 1), ha="center", fontsize=8)
    note(ax, x0 - 0.15, 3.3 - 0.55 - (rh + gap) - rh / 2 - 0.17, "time slot", ha="right", fontsize=8)
    note(ax, x0 - 0.15, 5.95 - 0.55 - (rh + gap) - rh / 2 - 0.17, "time slot", ha="right", fontsize=8)
    # the legend and the arithmetic
    ly = 1.15
    box(ax, 0.55, ly, 0.5, 0.3, "F1", LINEAR, fontsize=8.5)
    note(ax, 0.9, ly, "forward of micro-batch 1", fontsize=8.5, color=INK)
    box(ax, 3.25, ly, 0.5, 0.3, "B1", OUT, fontsize=8.5, weight="bold")
    note(ax, 3.6, ly, "its backward", fontsize=8.5, color=INK)
    arrow(ax, (5.0, ly + 0.12), (5.35, ly - 0.12), color=MUTED, lw=0.9)
    note(ax, 5.45, ly, "activations sent on", fontsize=8.5, color=INK)
    arrow(ax, (7.2, ly - 0.12), (7.55, ly + 0.12), color=ACCENT, lw=0.9)
    note(ax, 7.65, ly, "their gradients sent back", fontsize=8.5, color=INK)
    note(ax, W / 2, 0.5, r"The bubble: each stage is idle while the pipeline fills and drains, $(p - 1)/(m + p - 1)$ "
         r"of the time; here $p = 2$ stages, $m = 4$ micro-batches: $1/5$." + "\n1F1B has the same bubble, but starts "
         "each backward as soon as it can, so a stage keeps at most p − rank micro-batches' activations instead of m."
         "\nMore micro-batches shrink the bubble (m = 16: 1/17). A backward is drawn as long as a forward; the "
         "fraction is the same when it takes twice as long.", ha="center", fontsize=9, color=INK)
    return save(fig, path)


def _holding(ax, x: float, y: float, length: float, h: float, color: str, part: str, hatch_rest: bool = False) -> None:
    """One bar of a rank's bytes: `part` "all", "first" or "second" half filled, the rest an empty outline (or
    hatched: held only for a moment)."""
    ax.add_patch(Rectangle((x, y - h / 2), length, h, facecolor="white", edgecolor=MUTED, linewidth=0.9,
                           linestyle="--", zorder=1.5))
    if part == "all":
        spans = [(x, length)]
    else:
        spans = [(x if part == "first" else x + length / 2, length / 2)]
    for sx, sl in spans:
        ax.add_patch(Rectangle((sx, y - h / 2), sl, h, facecolor=color, edgecolor=INK, linewidth=1.0, zorder=2))
    if hatch_rest and part != "all":
        rx = x + length / 2 if part == "first" else x
        ax.add_patch(Rectangle((rx, y - h / 2), length / 2, h, facecolor="none", edgecolor="#9fbbd6", hatch="...",
                               linewidth=0, zorder=1.6))


def sharding(path: Path) -> Path:
    """Who holds which bytes of a float32 model trained with AdamW on 2 ranks, under DDP, ZeRO-1 (`ShardedAdamW`),
    FSDP (`shard_fsdp2`, ZeRO-3's idea) and tensor parallelism (`tensor_parallel`), and what each communicates."""
    fig, ax = canvas(13.0, 8.3)
    title(ax, 6.5, 8.0, "Stage 5: who holds which bytes on 2 ranks (float32 weights, AdamW)")
    note(ax, 6.5, 7.65, "per parameter: weight 4 bytes + gradient 4 + AdamW's two moments m, v 8 = 16 bytes; "
         "a bar's length is its bytes, filled = held by this rank", ha="center", fontsize=9.5, color=INK)
    unit = 0.2                                        # inches per byte of a parameter
    bars = [("weights", 4, LINEAR), ("gradients", 4, OUT), ("AdamW m, v", 8, NORM)]
    schemes = [
        ("DDP", "DistributedDataParallel", ["all", "all", "all"], "4 + 4 + 8 = 16",
         "all-reduce of the gradients, once a\nstep (bucket by bucket, during backward)"),
        ("ZeRO-1", "ShardedAdamW", ["all", "all", "half"], "4 + 4 + 4 = 12",
         "all-reduce of the gradients, as DDP;\n+ each owner broadcasts the parameters\nit updated"),
        ("FSDP (ZeRO-3)", "shard_fsdp2: fully_shard", ["half", "half", "half"], "2 + 2 + 4 = 8",
         "all-gather of each Block's weights\n(forward, and again for backward),\nreduce-scatter of its gradients"),
        ("tensor parallel", "tensor_parallel: TPAttention, TPMLP", ["half", "half", "half"],
         "about 8", "two all-reduces per Block forward (g),\ntwo backward (f); both ranks read\nthe same batch"),
    ]
    lx, rank_x, rank_w, notes_x = 0.2, [2.75, 6.05], 3.05, 9.35
    row_h, top = 1.45, 7.0
    note(ax, rank_x[0] + rank_w / 2, top + 0.05, "rank 0", ha="center", fontsize=10, color=INK, weight="bold")
    note(ax, rank_x[1] + rank_w / 2, top + 0.05, "rank 1", ha="center", fontsize=10, color=INK, weight="bold")
    note(ax, notes_x, top + 0.05, "what it communicates", fontsize=10, color=INK, weight="bold")
    for k, (name, code, parts, total, comms) in enumerate(schemes):
        yc = top - 0.25 - row_h * (k + 0.5)
        note(ax, lx, yc + 0.18, name, fontsize=11, color=INK, weight="bold")
        note(ax, lx, yc - 0.17, code, fontsize=8, family="monospace")
        for r, rx in enumerate(rank_x):
            ax.add_patch(FancyBboxPatch((rx, yc - 0.62), rank_w, 1.24, boxstyle="round,pad=0,rounding_size=0.08",
                                        facecolor="#fafafa", edgecolor=MUTED, linewidth=1.0, zorder=0.5))
            for j, ((label, nbytes, color), part) in enumerate(zip(bars, parts)):
                by = yc + 0.38 - j * 0.3
                note(ax, rx + 0.1, by, label, fontsize=8.5, color=INK)
                _holding(ax, rx + 1.3, by, nbytes * unit, 0.2, color,
                         "all" if part == "all" else "first" if r == 0 else "second",
                         hatch_rest=(name.startswith("FSDP") and j == 0))
            note(ax, rx + rank_w / 2, yc - 0.5, f"{total} bytes per parameter", ha="center", fontsize=8.5,
                 color=INK)
        note(ax, notes_x, yc, comms, fontsize=9, color=INK)
        if k:
            ax.plot([lx, 12.8], [yc + row_h / 2, yc + row_h / 2], color="#dddddd", linewidth=0.8, zorder=0.2)
    note(ax, 6.5, 0.42, "ZeRO-1: each parameter has one owner, which keeps its moments and updates it. FSDP: the "
         "dotted half of the weights is gathered while its Block runs, then freed.\nTensor parallel: each rank holds "
         "half the heads and half the MLP's hidden units of every Block; the embedding and the norms are whole on "
         "both.\nA 124M-parameter GPT-2 on 2 ranks: 16 x 124M = 2.0 GB per rank under DDP, 1.5 GB under ZeRO-1, "
         "1.0 GB under FSDP (activations not counted).", ha="center", fontsize=8.5, color=INK)
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
    "stage5_chat_template.png": chat_template,
    "stage5_lora.png": lora,
    "stage5_speculative.png": speculative,
    "stage5_pipeline.png": pipeline,
    "stage5_sharding.png": sharding,
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
