"""Stage 1 exercises: the graders of stage1_mlp/exercises/ (the EmbeddingBag mean and the Linear layer).

    MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage1.py    # grade your own version

Each grader takes an implementation and makes the comparisons of tests/test_stage1_parity.py: the layer against its
torch.nn twin with the same weights (outputs and gradients), then inside the whole model against a model built from
torch.nn layers. Without MY_LLM_EXERCISES=1 (as in CI) the learner's test is skipped, and two checks keep the exercise
honest: as shipped it fails its grader with NotImplementedError, and with the course's own layer (the solution) plugged
in it passes.
"""
from __future__ import annotations

import inspect
import math
import os
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import stage1_mlp.model as solution
from conftest import REPO_ROOT
from stage1_mlp.exercises import embedding_bag as embedding_bag_exercise
from stage1_mlp.exercises import linear as linear_exercise

LEARNER = os.environ.get("MY_LLM_EXERCISES") == "1"
learner_only = pytest.mark.skipif(not LEARNER, reason="set MY_LLM_EXERCISES=1 to grade your own implementation")
ci_only = pytest.mark.skipif(LEARNER, reason="checks the shipped exercise file; not run while you grade your own")
ATOL = 1e-6


def _bags():
    """Four bags over a 20-word vocabulary; the third is empty."""
    ids = torch.tensor([1, 5, 5, 7, 2, 19, 0, 3, 3, 3])
    offsets = torch.tensor([0, 4, 6, 6])  # bag lengths 4, 2, 0, 4
    return ids, offsets


class TorchMLP(nn.Module):
    """The Stage 1 model from torch.nn layers, with the same parameter names, so state dicts are swappable."""

    def __init__(self, c: solution.MLPConfig):
        super().__init__()
        self.embedding = nn.EmbeddingBag(c.vocab_size, c.emb_dim, mode="mean")
        layers: list[nn.Module] = [nn.Dropout(c.dropout)]
        width = c.emb_dim
        for _ in range(c.n_layers):
            layers += [nn.Linear(width, c.hidden_dim), nn.ReLU(), nn.Dropout(c.dropout)]
            width = c.hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, c.n_classes)

    def forward(self, ids, offsets):
        return self.head(self.hidden(self.embedding(ids, offsets)))


def check_inside_the_model(layer_name: str, impl) -> None:
    """BagOfNgramsMLP built with `impl` as its `layer_name` layer gives the logits and gradients of the torch.nn twin."""
    torch.manual_seed(0)
    config = solution.MLPConfig(vocab_size=20, n_classes=3, emb_dim=8, hidden_dim=6, n_layers=2, dropout=0.3)
    with mock.patch.object(solution, layer_name, impl):  # the model builds its layers from these module names
        ours = solution.BagOfNgramsMLP(config).eval()
    ref = TorchMLP(config).eval()
    ref.load_state_dict(ours.state_dict())
    ids, offsets = _bags()
    labels = torch.tensor([0, 2, 1, 2])
    logits, ref_logits = ours(ids, offsets), ref(ids, offsets)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0, msg="the model's logits differ from torch's")
    F.cross_entropy(logits, labels).backward()
    F.cross_entropy(ref_logits, labels).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}: is the output still connected to the weights?"
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=ATOL, rtol=0, msg=f"gradient of {name}")


# ----------------------------------------------------------------------------- the graders

def grade_embedding_bag(impl) -> None:
    """`impl` (a class like stage1_mlp/model.py `EmbeddingBag`) equals nn.EmbeddingBag(mode="mean")."""
    torch.manual_seed(0)
    ours = impl(20, 6)
    ref = nn.EmbeddingBag(20, 6, mode="mean")
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
    ids, offsets = _bags()
    out, ref_out = ours(ids, offsets), ref(ids, offsets)
    assert out.shape == (4, 6), f"expected one vector per bag, shape (4, 6), got {tuple(out.shape)}"
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0, msg="bag means differ from nn.EmbeddingBag's")
    assert torch.equal(out[2], torch.zeros(6)), "an empty bag must give a zero vector"
    upstream = torch.randn(4, 6)
    (out * upstream).sum().backward()
    (ref_out * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=ATOL, rtol=0, msg="gradient of the weight")
    # an empty bag at the end (its offset equals the number of ids)
    ids, offsets = torch.tensor([4, 2, 9]), torch.tensor([0, 3])
    torch.testing.assert_close(ours(ids, offsets), ref(ids, offsets), atol=ATOL, rtol=0,
                               msg="a trailing empty bag (offset == len(ids))")
    check_inside_the_model("EmbeddingBag", impl)


def grade_linear(impl) -> None:
    """`impl` (a class like stage1_mlp/model.py `Linear`) equals nn.Linear and is initialised in the same range."""
    torch.manual_seed(0)
    ours, ref = impl(7, 5), nn.Linear(7, 5)
    assert ours.weight.shape == (5, 7) and ours.bias.shape == (5,), \
        f"weight must be (out, in) = (5, 7) and bias (out,) = (5,), got {tuple(ours.weight.shape)}, " \
        f"{tuple(ours.bias.shape)}"
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    x1 = torch.randn(3, 7, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out, ref_out = ours(x1), ref(x2)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0, msg="outputs differ from nn.Linear's")
    upstream = torch.randn(3, 5)
    (out * upstream).sum().backward()
    (ref_out * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=ATOL, rtol=0, msg="gradient of weight")
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=ATOL, rtol=0, msg="gradient of bias")
    torch.testing.assert_close(x1.grad, x2.grad, atol=ATOL, rtol=0, msg="gradient of the input")
    # initialisation: uniform in +-1/sqrt(fan_in), the whole range used, standard deviation bound / sqrt(3)
    fan_in = 100
    bound = 1 / math.sqrt(fan_in)
    wide = impl(fan_in, 300)
    for name, p in [("weight", wide.weight), ("bias", wide.bias)]:
        assert p.abs().max() <= bound, f"{name} leaves +-1/sqrt(fan_in) = +-{bound}"
        assert p.abs().max() > 0.95 * bound, f"{name} uses only part of +-1/sqrt(fan_in): uniform, not smaller"
    assert wide.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), \
        "the weights' spread is not that of uniform(-bound, bound)"
    check_inside_the_model("Linear", impl)


GRADERS = {"embedding_bag": (grade_embedding_bag, embedding_bag_exercise, "EmbeddingBag"),
           "linear": (grade_linear, linear_exercise, "Linear")}


# ----------------------------------------------------------------------------- the tests

@learner_only
@pytest.mark.parametrize("exercise", GRADERS)
def test_your_implementation(exercise):
    """Your version in stage1_mlp/exercises/<exercise>.py against torch.nn."""
    grade, module, name = GRADERS[exercise]
    grade(getattr(module, name))


@ci_only
@pytest.mark.parametrize("exercise", GRADERS)
def test_shipped_exercise_fails_its_grader(exercise):
    """As shipped, the exercise has no body: the grader stops at its NotImplementedError."""
    grade, module, name = GRADERS[exercise]
    with pytest.raises(NotImplementedError, match="your code here"):
        grade(getattr(module, name))


@pytest.mark.parametrize("exercise", GRADERS)
def test_grader_passes_with_the_solution(exercise, monkeypatch):
    """The course's own layer, put where the exercise's is, passes the grader."""
    grade, module, name = GRADERS[exercise]
    monkeypatch.setattr(module, name, getattr(solution, name))
    grade(getattr(module, name))


def test_exercise_keeps_the_solutions_signature_and_docstring():
    """The exercise is the course's own class with the bodies removed: same methods, arguments and docstrings."""
    for _, module, name in GRADERS.values():
        mine, theirs = getattr(module, name), getattr(solution, name)
        assert mine.__doc__ == theirs.__doc__, name
        for method in ("__init__", "forward"):
            assert inspect.signature(getattr(mine, method)) == inspect.signature(getattr(theirs, method)), \
                f"{name}.{method}"


def test_exercises_page_points_at_real_code():
    """stage1_mlp/exercises.md names files and functions that exist (the check tests/test_docs.py runs on the docs)."""
    from test_docs import check_doc
    doc = REPO_ROOT / "stage1_mlp" / "exercises.md"
    refs, problems = check_doc(doc.read_text(encoding="utf-8"), doc, REPO_ROOT)
    assert refs and not problems, problems
