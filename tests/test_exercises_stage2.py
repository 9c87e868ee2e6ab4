"""Stage 2 exercise: the grader of stage2_rnn_lstm/exercises/lstm_cell.py.

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage2.py    # grade your own version

The grader takes a cell function and makes the comparisons of tests/test_stage2_model.py: one step by hand, one step
against nn.LSTMCell, and a 2-layer stack using the cell against nn.LSTM with the same weights (outputs, final states and
every gradient to 1e-5, from a non-zero starting state). Without MY_LLM_EXERCISES=1 (as in CI) the learner's test is
skipped, and two checks keep the exercise honest: as shipped it fails its grader with NotImplementedError, and with the
course's own `lstm_cell` (the solution) plugged in it passes.
"""
from __future__ import annotations

import inspect
import os
from unittest import mock

import pytest
import torch
import torch.nn as nn

import stage2_rnn_lstm.model as solution
from conftest import REPO_ROOT
from stage2_rnn_lstm.exercises import lstm_cell as exercise

LEARNER = os.environ.get("MY_LLM_EXERCISES") == "1"
learner_only = pytest.mark.skipif(not LEARNER, reason="set MY_LLM_EXERCISES=1 to grade your own implementation")
ci_only = pytest.mark.skipif(LEARNER, reason="checks the shipped exercise file; not run while you grade your own")
ATOL = 1e-5


def grade_lstm_cell(impl) -> None:
    """`impl` (a function like stage2_rnn_lstm/model.py `lstm_cell`) computes nn.LSTM's step."""
    # 1. By hand: all pre-activations 0 -> every sigmoid is 0.5 and tanh(g) = 0, so c' = 0.5 c and h' = 0.5 tanh(c').
    h, c = torch.zeros(1, 2), torch.ones(1, 2)
    h1, c1 = impl(torch.zeros(1, 8), h, c, torch.zeros(8, 2), torch.zeros(8))
    torch.testing.assert_close(c1, torch.full((1, 2), 0.5), msg="all gates at 0.5: c' should be 0.5 * c")
    torch.testing.assert_close(h1, 0.5 * torch.tanh(torch.full((1, 2), 0.5)), msg="h' should be o * tanh(c')")
    # The worked step of docs/stage2_rnn_lstm.md section 5: pre-activations (i, f, g, o) = (0, 2, 1, 1), c = 1.
    h1, c1 = impl(torch.tensor([[0.0, 2.0, 1.0, 1.0]]), torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(4, 1),
                  torch.zeros(4))
    assert abs(c1.item() - 1.262) < 1e-3 and abs(h1.item() - 0.622) < 1e-3, \
        f"the worked step gives c' = 1.262, h' = 0.622; got {c1.item():.3f}, {h1.item():.3f} (gate order i, f, g, o?)"

    # 2. One step against nn.LSTMCell, with random weights and a random state; gradients of x, h, c and the weights.
    torch.manual_seed(0)
    B, C, H = 3, 5, 7
    ref = nn.LSTMCell(C, H)
    w_hh = ref.weight_hh.detach().clone().requires_grad_(True)
    b_hh = ref.bias_hh.detach().clone().requires_grad_(True)
    x = torch.randn(B, C)
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    x1, ha, ca = (t.clone().requires_grad_(True) for t in (x, h0, c0))
    x2, hb, cb = (t.clone().requires_grad_(True) for t in (x, h0, c0))
    xw = x1 @ ref.weight_ih.detach().T + ref.bias_ih.detach()  # (B, 4H): the input's part, as RecurrentLayers does
    h1, c1 = impl(xw, ha, ca, w_hh, b_hh)
    h2, c2 = ref(x2, (hb, cb))
    assert h1.shape == (B, H) and c1.shape == (B, H), f"h' and c' must be (B, H) = {(B, H)}"
    torch.testing.assert_close(c1, c2, atol=ATOL, rtol=0, msg="the new cell state differs from nn.LSTMCell's")
    torch.testing.assert_close(h1, h2, atol=ATOL, rtol=0, msg="the new hidden state differs from nn.LSTMCell's")
    up_h, up_c = torch.randn(B, H), torch.randn(B, H)
    ((h1 * up_h).sum() + (c1 * up_c).sum()).backward()
    ((h2 * up_h).sum() + (c2 * up_c).sum()).backward()
    for name, mine, theirs in [("x", x1.grad, x2.grad), ("h", ha.grad, hb.grad), ("c", ca.grad, cb.grad),
                               ("w_hh", w_hh.grad, ref.weight_hh.grad), ("b_hh", b_hh.grad, ref.bias_hh.grad)]:
        assert mine is not None, f"no gradient reached {name}"
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0, msg=f"gradient of {name}")

    # 3. The cell inside a 2-layer stack against nn.LSTM, weights copied, from a non-zero state over 6 steps.
    torch.manual_seed(0)
    with mock.patch.object(solution, "lstm_cell", impl):  # RecurrentLayers calls the cell by this module name
        ours = solution.RecurrentLayers("lstm", C, H, 2)
        ref = nn.LSTM(C, H, 2, batch_first=True)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(B, 6, C)
        s0 = (torch.randn(2, B, H), torch.randn(2, B, H))
        out, (h_n, c_n) = ours(x, s0)
        ref_out, (ref_h, ref_c) = ref(x, s0)
        torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0, msg="the stack's outputs differ from nn.LSTM's")
        torch.testing.assert_close(h_n, ref_h, atol=ATOL, rtol=0, msg="final h differs from nn.LSTM's")
        torch.testing.assert_close(c_n, ref_c, atol=ATOL, rtol=0, msg="final c differs from nn.LSTM's")
        upstream = torch.randn_like(out)
        ((out * upstream).sum() + h_n.sum() + c_n.sum()).backward()
        ((ref_out * upstream).sum() + ref_h.sum() + ref_c.sum()).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=ATOL, rtol=0, msg=f"gradient of {name}")


@learner_only
def test_your_lstm_cell():
    """Your version in stage2_rnn_lstm/exercises/lstm_cell.py against nn.LSTMCell and nn.LSTM."""
    grade_lstm_cell(exercise.lstm_cell)


@ci_only
def test_shipped_exercise_fails_its_grader():
    """As shipped, the exercise has no body: the grader stops at its NotImplementedError."""
    with pytest.raises(NotImplementedError, match="your code here"):
        grade_lstm_cell(exercise.lstm_cell)


def test_grader_passes_with_the_solution(monkeypatch):
    """The course's own cell, put where the exercise's is, passes the grader."""
    monkeypatch.setattr(exercise, "lstm_cell", solution.lstm_cell)
    grade_lstm_cell(exercise.lstm_cell)


def test_grader_catches_a_wrong_gate_order():
    """A cell that reads the gates as i, f, o, g (a common slip) is refused."""
    def swapped(xw, h, c, w_hh, b_hh):
        i, f, o, g = (xw + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    with pytest.raises(AssertionError):
        grade_lstm_cell(swapped)


def test_exercise_keeps_the_solutions_signature_and_docstring():
    assert exercise.lstm_cell.__doc__ == solution.lstm_cell.__doc__
    assert inspect.signature(exercise.lstm_cell) == inspect.signature(solution.lstm_cell)


def test_exercises_page_points_at_real_code():
    """stage2_rnn_lstm/exercises.md names files and functions that exist (the check tests/test_docs.py runs)."""
    from test_docs import check_doc
    doc = REPO_ROOT / "stage2_rnn_lstm" / "exercises.md"
    refs, problems = check_doc(doc.read_text(encoding="utf-8"), doc, REPO_ROOT)
    assert refs and not problems, problems
