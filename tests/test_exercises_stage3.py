"""Stage 3 exercise: the grader of stage3_attention_seq2seq/exercises/attention.py (Bahdanau's and Luong's attention).

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage3.py    # grade your own version

The grader takes an attention class and, for both kinds, compares it with the equations of docs/stage3_attention.md
written out one (target, source) pair at a time: weights, context and the gradients of every input and weight, with
padded positions weighted exactly 0. Then it puts the class into a small translation model and makes the comparisons
of tests/test_stage3_model.py: the same logits and attention maps as the course's model, teacher forcing equal to
stepping, and a sentence's output unchanged by padding. Without MY_LLM_EXERCISES=1 (as in CI) the learner's test is
skipped, and two checks keep the exercise honest: as shipped it fails its grader with NotImplementedError, and with
the course's own `Attention` (the solution) plugged in it passes.
"""
from __future__ import annotations

import copy
import inspect
import os

import pytest
import torch

import stage3_attention_seq2seq.model as solution
from conftest import REPO_ROOT
from stage3_attention_seq2seq.data import EOS_ID, make_batch
from stage3_attention_seq2seq.exercises import attention as exercise

LEARNER = os.environ.get("MY_LLM_EXERCISES") == "1"
learner_only = pytest.mark.skipif(not LEARNER, reason="set MY_LLM_EXERCISES=1 to grade your own implementation")
ci_only = pytest.mark.skipif(LEARNER, reason="checks the shipped exercise file; not run while you grade your own")
KINDS = ["bahdanau", "luong"]
V_SRC, V_TGT = 40, 50


def equations(kind: str, p: dict, query, memory, mask):
    """Attention written out pair by pair: score(s_t, h_j), a softmax over the real positions only, the weighted sum.

    bahdanau: score = v . tanh(W s_t + U h_j + b);  luong: score = s_t . (W h_j).
    """
    B, T, _ = query.shape
    S = memory.shape[1]
    weights = torch.zeros(B, T, S)
    contexts = []
    for b in range(B):
        real = [j for j in range(S) if mask[b, j]]
        for t in range(T):
            s = query[b, t]
            if kind == "bahdanau":
                e = torch.stack([p["v"] @ torch.tanh(p["W"] @ s + p["U"] @ memory[b, j] + p["b"]) for j in real])
            else:
                e = torch.stack([s @ (p["W"] @ memory[b, j]) for j in real])
            alpha = torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()
            weights[b, t, real] = alpha
            contexts.append(sum(a * memory[b, j] for a, j in zip(alpha, real)))
    return torch.stack(contexts).view(B, T, -1), weights


def check_against_the_equations(impl, kind: str) -> None:
    torch.manual_seed(0)
    B, T, S, H = 2, 3, 5, 6
    att = impl(kind, H)
    params = {"W": att.W.weight} if kind == "luong" else \
        {"W": att.W.weight, "U": att.U.weight, "b": att.U.bias, "v": att.v.weight}  # v: (1, H)
    twins = {k: (v[0] if k == "v" else v).detach().clone().requires_grad_(True) for k, v in params.items()}
    query, memory = torch.randn(B, T, H), torch.randn(B, S, H)
    mask = torch.tensor([[True] * S, [True, True, True, False, False]])  # the second sentence has 2 pads
    q1, m1 = query.clone().requires_grad_(True), memory.clone().requires_grad_(True)
    q2, m2 = query.clone().requires_grad_(True), memory.clone().requires_grad_(True)
    keys = att.keys(m1)
    assert keys.shape == (B, S, H), f"keys must be (B, S, H) = {(B, S, H)}, got {tuple(keys.shape)}"
    context, weights = att(q1, keys, m1, mask)
    ref_context, ref_weights = equations(kind, twins, q2, m2, mask)
    assert weights.shape == (B, T, S), f"{kind}: weights must be (B, T, S) = {(B, T, S)}, got {tuple(weights.shape)}"
    assert context.shape == (B, T, H), f"{kind}: context must be (B, T, H) = {(B, T, H)}, got {tuple(context.shape)}"
    assert torch.all(weights[1, :, 3:] == 0), f"{kind}: padded positions must get weight exactly 0 (mask them)"
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, T), msg=f"{kind}: each row of weights must sum to 1")
    torch.testing.assert_close(weights, ref_weights, atol=1e-5, rtol=0, msg=f"{kind}: weights differ from the equations")
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=0, msg=f"{kind}: context differs from the equations")
    up_c, up_w = torch.randn(B, T, H), torch.randn(B, T, S)
    ((context * up_c).sum() + (weights * up_w).sum()).backward()
    ((ref_context * up_c).sum() + (ref_weights * up_w).sum()).backward()
    for name, mine, theirs in [("query", q1.grad, q2.grad), ("memory", m1.grad, m2.grad)] + \
            [(name, params[name].grad.view_as(twins[name]) if params[name].grad is not None else None,
              twins[name].grad) for name in params]:
        assert mine is not None, f"{kind}: no gradient reached {name}"
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0, msg=f"{kind}: gradient of {name}")


def make_model(kind: str, impl=None) -> solution.Seq2Seq:
    """The small model of tests/test_stage3_model.py; with `impl`, its attention replaced by `impl` (same weights)."""
    torch.manual_seed(0)
    model = solution.Seq2Seq(solution.Seq2SeqConfig(V_SRC, V_TGT, emb_dim=16, hidden_dim=24, attention=kind,
                                                    dropout=0.0))
    solution.init_weights(model)
    if impl is not None:
        model = copy.deepcopy(model)
        theirs = model.decoder.attention
        model.decoder.attention = impl(kind, 24)
        model.decoder.attention.load_state_dict(theirs.state_dict())
    return model.eval()


def random_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(4, V_SRC, (n - 1,), generator=g).tolist() + [EOS_ID] for n in [7, 4, 1, 6, 7]]
    tgt = [torch.randint(4, V_TGT, (n,), generator=g).tolist() + [EOS_ID] for n in [5, 8, 3, 6, 2]]
    return make_batch(src, tgt)


def check_inside_the_model(impl, kind: str) -> None:
    b = random_batch()
    course, ours = make_model(kind), make_model(kind, impl)
    logits, _, attn = ours(b["src"], b["src_len"], b["tgt_in"])
    ref_logits, _, ref_attn = course(b["src"], b["src_len"], b["tgt_in"])
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0, msg=f"{kind}: the model's logits differ")
    torch.testing.assert_close(attn, ref_attn, atol=1e-6, rtol=0, msg=f"{kind}: the model's attention maps differ")
    # teacher forcing in one call equals calling Decoder.step token by token
    enc, state = ours.encode(b["src"], b["src_len"])
    for t in range(b["tgt_in"].shape[1]):
        step_logits, state, w = ours.decoder.step(b["tgt_in"][:, t], state, enc)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=0, msg=f"{kind}: step {t} differs")
        torch.testing.assert_close(w, attn[:, t], atol=1e-6, rtol=0, msg=f"{kind}: attention at step {t} differs")
    # a sentence gives the same logits alone as in a padded batch
    n = int(b["src_len"][1])
    alone, _, _ = ours(b["src"][1:2, :n], b["src_len"][1:2], b["tgt_in"][1:2])
    torch.testing.assert_close(logits[1:2], alone, atol=1e-5, rtol=0, msg=f"{kind}: padding changed the output")


def grade_attention(impl) -> None:
    """`impl` (a class like stage3_attention_seq2seq/model.py `Attention`) computes both kinds of attention."""
    for kind in KINDS:
        check_against_the_equations(impl, kind)
        check_inside_the_model(impl, kind)


@learner_only
def test_your_attention():
    """Your version in stage3_attention_seq2seq/exercises/attention.py against the equations and the course model."""
    grade_attention(exercise.Attention)


@ci_only
def test_shipped_exercise_fails_its_grader():
    """As shipped, the exercise has no body: the grader stops at its NotImplementedError."""
    with pytest.raises(NotImplementedError, match="your code here"):
        grade_attention(exercise.Attention)


def test_grader_passes_with_the_solution(monkeypatch):
    """The course's own Attention, put where the exercise's is, passes the grader."""
    monkeypatch.setattr(exercise, "Attention", solution.Attention)
    grade_attention(exercise.Attention)


def test_grader_catches_a_missing_mask():
    """Attention that forgets the padding mask is refused."""
    class Unmasked(solution.Attention):
        def forward(self, query, keys, memory, mask):
            return super().forward(query, keys, memory, torch.ones_like(mask))
    with pytest.raises(AssertionError, match="padded positions"):
        grade_attention(Unmasked)


def test_exercise_keeps_the_solutions_signature_and_docstring():
    mine, theirs = exercise.Attention, solution.Attention
    assert mine.__doc__ == theirs.__doc__
    for method in ("__init__", "keys", "forward"):
        assert getattr(mine, method).__doc__ == getattr(theirs, method).__doc__, method
        assert inspect.signature(getattr(mine, method)) == inspect.signature(getattr(theirs, method)), method


def test_exercises_page_points_at_real_code():
    """stage3_attention_seq2seq/exercises.md names files and functions that exist (the check tests/test_docs.py runs)."""
    from test_docs import check_doc
    doc = REPO_ROOT / "stage3_attention_seq2seq" / "exercises.md"
    refs, problems = check_doc(doc.read_text(encoding="utf-8"), doc, REPO_ROOT)
    assert refs and not problems, problems
