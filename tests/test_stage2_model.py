"""Stage 2 model: the hand-written RNN/LSTM/GRU equal nn.RNN/nn.LSTM/nn.GRU given the same weights.

Weights are copied both ways (ours -> torch and torch -> ours); outputs, final states and every parameter's
gradient must agree to 1e-5, also with a non-zero starting state and in a multi-layer stack.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from stage2_rnn_lstm.model import (LMConfig, RecurrentLayers, RNNLanguageModel, detach_state, gru_cell, lstm_cell,
                                   rnn_cell)

ATOL = 1e-5
TORCH_CLASS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
MODES = ["rnn", "lstm", "gru"]


def _pair(mode: str, direction: str, input_size=5, hidden=7, layers=2):
    """Our stack and torch's, with the weights of one copied into the other."""
    torch.manual_seed(0)
    ours = RecurrentLayers(mode, input_size, hidden, layers)
    ref = TORCH_CLASS[mode](input_size, hidden, layers, batch_first=True)
    src, dst = (ours, ref) if direction == "ours_to_torch" else (ref, ours)
    dst.load_state_dict(src.state_dict())  # same names and shapes, so a plain state dict copy works
    return ours, ref


def _state(mode: str, layers=2, batch=3, hidden=7):
    h = torch.randn(layers, batch, hidden)
    return (h, torch.randn(layers, batch, hidden)) if mode == "lstm" else h


def _flat(state):
    return torch.cat([s.flatten() for s in state]) if isinstance(state, tuple) else state.flatten()


@pytest.mark.parametrize("direction", ["ours_to_torch", "torch_to_ours"])
@pytest.mark.parametrize("mode", MODES)
def test_recurrent_layers_match_torch(mode, direction):
    """Outputs, final states and all gradients equal torch's, from a random (not zero) starting state."""
    ours, ref = _pair(mode, direction)
    x = torch.randn(3, 6, 5)            # (B, T, C)
    s0 = _state(mode)
    out, s = ours(x, s0)
    ref_out, ref_s = ref(x, s0)
    assert out.shape == (3, 6, 7)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0)
    torch.testing.assert_close(_flat(s), _flat(ref_s), atol=ATOL, rtol=0)
    upstream = torch.randn_like(out)
    ((out * upstream).sum() + _flat(s).sum()).backward()
    ((ref_out * upstream).sum() + _flat(ref_s).sum()).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=ATOL, rtol=0, msg=f"gradient of {name}")


@pytest.mark.parametrize("mode", MODES)
def test_recurrent_layers_zero_state_default(mode):
    """No state given means zeros, as in torch."""
    ours, ref = _pair(mode, "ours_to_torch", layers=1)
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=ATOL, rtol=0)


def test_cells_by_hand():
    """One step of each cell against the textbook equations, with every weight 0 and bias 0 except noted."""
    h, c = torch.zeros(1, 2), torch.ones(1, 2)
    assert torch.equal(rnn_cell(torch.zeros(1, 2), h, torch.zeros(2, 2), torch.zeros(2)), torch.zeros(1, 2))
    # all gate pre-activations 0: sigmoid = 0.5, tanh(g) = 0 -> c' = 0.5 * c, h' = 0.5 * tanh(c')
    h1, c1 = lstm_cell(torch.zeros(1, 8), h, c, torch.zeros(8, 2), torch.zeros(8))
    torch.testing.assert_close(c1, torch.full((1, 2), 0.5))
    torch.testing.assert_close(h1, 0.5 * torch.tanh(torch.full((1, 2), 0.5)))
    # GRU with z = 0.5, n = tanh(0) = 0: h' = 0.5 * h
    torch.testing.assert_close(gru_cell(torch.zeros(1, 6), c, torch.zeros(6, 2), torch.zeros(6)), 0.5 * c)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("adaptive", [False, True])
def test_language_model_scratch_equals_torch(mode, adaptive):
    """The whole LM: loss and log-probabilities agree between --impl scratch and --impl torch."""
    cfg = dict(vocab_size=40, model_type=mode, emb_dim=16, hidden_dim=16, n_layers=2, dropout=0.0,
               adaptive_cutoffs=[10, 20] if adaptive else [])
    torch.manual_seed(0)
    ours = RNNLanguageModel(LMConfig(impl="scratch", **cfg))
    ref = RNNLanguageModel(LMConfig(impl="torch", **cfg))
    ref.load_state_dict(ours.state_dict())
    x, y = torch.randint(0, 40, (2, 5)), torch.randint(0, 40, (2, 5))
    out, loss, _ = ours(x, targets=y)
    ref_out, ref_loss, _ = ref(x, targets=y)
    torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=0)
    scores, _, _ = ours(x)
    assert scores.shape == (2, 5, 40)
    torch.testing.assert_close(scores, ref(x)[0], atol=ATOL, rtol=0)


def test_tied_weights_share_one_matrix():
    m = RNNLanguageModel(LMConfig(vocab_size=30, emb_dim=16, hidden_dim=16, tie_weights=True))
    assert m.head.weight is m.embedding.weight
    untied = RNNLanguageModel(LMConfig(vocab_size=30, emb_dim=16, hidden_dim=16))
    assert m.num_params() == untied.num_params() - 30 * 16


def test_detach_state_keeps_values_cuts_graph():
    h = torch.randn(2, 3, 4, requires_grad=True) * 2
    pair = detach_state((h, h + 1))
    assert not pair[0].requires_grad and torch.equal(pair[0], h.detach())
    assert not detach_state(h).requires_grad


def test_state_carries_across_windows():
    """Two windows with the state carried give the same output as one long window: what truncated BPTT relies on."""
    torch.manual_seed(0)
    m = RNNLanguageModel(LMConfig(vocab_size=20, emb_dim=8, hidden_dim=8, dropout=0.0, impl="scratch")).eval()
    x = torch.randint(0, 20, (2, 10))
    whole, _, _ = m(x)
    first, _, s = m(x[:, :6])
    second, _, _ = m(x[:, 6:], detach_state(s))
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_a_few_steps_lower_the_loss(mode):
    """Twenty Adam steps on one repeated batch bring the loss well down, for every cell."""
    torch.manual_seed(0)
    m = RNNLanguageModel(LMConfig(vocab_size=12, model_type=mode, emb_dim=16, hidden_dim=32, n_layers=1,
                                  dropout=0.0, impl="scratch"))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    seq = torch.arange(12).repeat(2, 3)  # (2, 36): 0 1 2 ... 11 0 1 ..., perfectly predictable
    x, y = seq[:, :-1], seq[:, 1:]
    first = m(x, targets=y)[1].item()
    for _ in range(20):
        _, loss, _ = m(x, targets=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_tied_adaptive_softmax_reads_words_from_the_output_layer():
    """Tied with an adaptive softmax, a head word's input vector is its row of the head matrix and a tail word's
    is its cluster row times the cluster's projection; there is no separate embedding table."""
    V, H, cutoffs = 40, 16, [10, 25]
    m = RNNLanguageModel(LMConfig(vocab_size=V, emb_dim=H, hidden_dim=H, tie_weights=True, adaptive_cutoffs=cutoffs))
    untied = RNNLanguageModel(LMConfig(vocab_size=V, emb_dim=H, hidden_dim=H, adaptive_cutoffs=cutoffs))
    assert not hasattr(m, "embedding") and m.num_params() == untied.num_params() - V * H
    idx = torch.tensor([[0, 9, 10, 24], [25, 39, 3, 30]])
    x = m.embed(idx)  # (B, T, H)
    head, tail = m.head.head.weight, m.head.tail
    expected = {0: head[0], 9: head[9], 3: head[3],
                10: tail[0][1].weight[0] @ tail[0][0].weight, 24: tail[0][1].weight[14] @ tail[0][0].weight,
                25: tail[1][1].weight[0] @ tail[1][0].weight, 39: tail[1][1].weight[14] @ tail[1][0].weight,
                30: tail[1][1].weight[5] @ tail[1][0].weight}
    for (b, t), i in zip([(b, t) for b in range(2) for t in range(4)], idx.flatten().tolist()):
        assert torch.allclose(x[b, t], expected[i], atol=1e-6), i
    _, loss, _ = m(idx, targets=idx.roll(1, dims=1))
    loss.backward()
    assert m.head.tail[1][1].weight.grad[14].abs().sum() > 0  # gradients reach the tied rows
