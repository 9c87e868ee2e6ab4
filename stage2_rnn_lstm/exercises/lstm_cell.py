"""Exercise: one time step of an LSTM, from its four gates.

Write `lstm_cell` below. The solution is `lstm_cell` in stage2_rnn_lstm/model.py (the equations are in
docs/stage2_rnn_lstm.md section 5). Grade your version with

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage2.py

which checks it on a step worked by hand, against `nn.LSTMCell` (the new h and c, and the gradients of every input),
and as the cell of a 2-layer `RecurrentLayers` stack against `nn.LSTM` (outputs, final states, all gradients).
"""
from __future__ import annotations

import torch


def lstm_cell(xw, h, c, w_hh, b_hh) -> tuple[torch.Tensor, torch.Tensor]:
    """LSTM: gates decide what the cell state c forgets (f), takes in (i, g) and shows (o).

    c' = f * c + i * g is a sum, not a product of many Jacobians: that additive path is what lets
    gradients survive over long spans where a vanilla RNN's vanish.
    """
    # xw (B, 4H): the input's part x W_ih^T + b_ih, already computed; h, c (B, H); w_hh (4H, H); b_hh (4H,)
    raise NotImplementedError(
        "your code here: add the recurrent part h W_hh^T + b_hh to xw and split the (B, 4H) result into four "
        "(B, H) blocks in PyTorch's order i, f, g, o (.chunk(4, dim=-1)); c' = sigmoid(f) * c + sigmoid(i) * tanh(g); "
        "h' = sigmoid(o) * tanh(c'); return (h', c')")
