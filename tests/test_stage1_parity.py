"""Stage 1 model: each from-scratch layer against its torch.nn twin, with the same weights copied across."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from stage1_mlp.model import BagOfNgramsMLP, Dropout, EmbeddingBag, Linear, MLPConfig, ReLU, drop_ngrams

ATOL = 1e-6


def _bags():
    """Four bags over a 20-word vocabulary; the third is empty."""
    ids = torch.tensor([1, 5, 5, 7, 2, 19, 0, 3, 3, 3])
    offsets = torch.tensor([0, 4, 6, 6])  # bag lengths 4, 2, 0, 4
    return ids, offsets


def _embedding_bag_pair(num: int, dim: int) -> tuple[EmbeddingBag, nn.EmbeddingBag]:
    """Our EmbeddingBag and torch's (mean mode), holding the same weights."""
    torch.manual_seed(0)
    ours = EmbeddingBag(num, dim)
    ref = nn.EmbeddingBag(num, dim, mode="mean")
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
    return ours, ref


def test_embedding_bag_matches_nn_embedding_bag():
    """Mean of each bag, an empty bag giving zeros, and the weight gradient all match nn.EmbeddingBag(mode="mean")."""
    ours, ref = _embedding_bag_pair(20, 6)
    ids, offsets = _bags()
    out, ref_out = ours(ids, offsets), ref(ids, offsets)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0)
    assert torch.equal(out[2], torch.zeros(6))
    upstream = torch.randn(4, 6)
    (out * upstream).sum().backward()
    (ref_out * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=ATOL, rtol=0)


def test_embedding_bag_trailing_empty_bag():
    """An empty bag at the end (offset == number of ids) also gives zeros, like nn.EmbeddingBag."""
    ours, ref = _embedding_bag_pair(10, 3)
    ids, offsets = torch.tensor([4, 2, 9]), torch.tensor([0, 3])
    torch.testing.assert_close(ours(ids, offsets), ref(ids, offsets), atol=ATOL, rtol=0)
    assert torch.equal(ours(ids, offsets)[1], torch.zeros(3))


def test_linear_matches_nn_linear():
    """Outputs and the gradients of weight, bias and input match nn.Linear."""
    torch.manual_seed(0)
    ours, ref = Linear(7, 5), nn.Linear(7, 5)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    x1 = torch.randn(3, 7, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out, ref_out = ours(x1), ref(x2)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0)
    upstream = torch.randn(3, 5)
    (out * upstream).sum().backward()
    (ref_out * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=ATOL, rtol=0)
    torch.testing.assert_close(x1.grad, x2.grad, atol=ATOL, rtol=0)


def test_linear_init_bound_like_nn_linear():
    """Default init is uniform in +-1/sqrt(fan_in) for weight and bias, the same range nn.Linear uses."""
    torch.manual_seed(0)
    fan_in = 100
    bound = 1 / math.sqrt(fan_in)
    ours, ref = Linear(fan_in, 300), nn.Linear(fan_in, 300)
    for mine, theirs in [(ours.weight, ref.weight), (ours.bias, ref.bias)]:
        assert mine.abs().max() <= bound
        assert mine.abs().max() > 0.95 * bound  # the whole range is used, not a narrower one
        assert theirs.abs().max() <= bound and theirs.abs().max() > 0.95 * bound
    # uniform(-b, b) has standard deviation b / sqrt(3)
    assert ours.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_relu_matches_nn_relu():
    """Outputs match nn.ReLU (zeros included) and gradients match away from exactly 0."""
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 4.0]])
    assert torch.equal(ReLU()(x), nn.ReLU()(x))
    x1 = torch.tensor([-2.0, -0.5, -1e-8, 1e-8, 0.3, 4.0], requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ReLU()(x1).sum().backward()
    nn.ReLU()(x2).sum().backward()
    assert torch.equal(x1.grad, x2.grad)


def test_relu_gradient_at_zero_matches_nn_relu():
    """At exactly 0 the gradient matches nn.ReLU's (0)."""
    x1 = torch.zeros(3, requires_grad=True)
    x2 = torch.zeros(3, requires_grad=True)
    ReLU()(x1).sum().backward()
    nn.ReLU()(x2).sum().backward()
    assert torch.equal(x1.grad, x2.grad)


def test_dropout_eval_is_identity():
    """In eval mode dropout returns its input unchanged."""
    d = Dropout(0.5).eval()
    x = torch.randn(10, 10)
    assert torch.equal(d(x), x)


def test_dropout_p0_is_identity_in_training():
    """p = 0 never drops anything, even in training mode."""
    x = torch.randn(10, 10)
    assert torch.equal(Dropout(0.0).train()(x), x)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_dropout_train_zeros_p_and_scales_rest(p):
    """In training a share ~p of units is zeroed, the rest scaled by 1/(1-p), so the mean stays ~1."""
    torch.manual_seed(0)
    x = torch.ones(400, 250)  # 100,000 units: the dropped share is within +-0.01 of p (7+ standard deviations)
    y = Dropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.01)
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    assert y.mean().item() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_p(p):
    """A probability outside [0, 1) is refused when the layer is built."""
    with pytest.raises(ValueError):
        Dropout(p)


class ReferenceMLP(nn.Module):
    """The Stage 1 model assembled from torch.nn layers, with the same module names, so state dicts are swappable."""

    def __init__(self, c: MLPConfig):
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


@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_model_matches_torch_nn_model(n_layers):
    """BagOfNgramsMLP and the nn-built twin with copied weights give the same logits and parameter gradients."""
    torch.manual_seed(0)
    config = MLPConfig(vocab_size=20, n_classes=3, emb_dim=8, hidden_dim=6, n_layers=n_layers, dropout=0.3)
    ours = BagOfNgramsMLP(config).eval()
    ref = ReferenceMLP(config).eval()
    ref.load_state_dict(ours.state_dict())  # strict: every parameter has a twin with the same name and shape
    ids, offsets = _bags()
    labels = torch.tensor([0, 2, 1, 2])
    logits, ref_logits = ours(ids, offsets), ref(ids, offsets)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    F.cross_entropy(logits, labels).backward()
    F.cross_entropy(ref_logits, labels).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("n_layers,n_classes", [(0, 2), (1, 4), (3, 2)])
def test_model_output_shape(n_layers, n_classes):
    """The model gives one logit per class per bag: (B, n_classes)."""
    config = MLPConfig(vocab_size=20, n_classes=n_classes, emb_dim=8, hidden_dim=5, n_layers=n_layers)
    ids, offsets = _bags()
    assert BagOfNgramsMLP(config)(ids, offsets).shape == (4, n_classes)


def test_model_parameter_count():
    """num_params counts embedding, hidden and head weights and biases."""
    config = MLPConfig(vocab_size=20, n_classes=3, emb_dim=8, hidden_dim=6, n_layers=1)
    assert BagOfNgramsMLP(config).num_params() == 20 * 8 + (8 * 6 + 6) + (6 * 3 + 3)


def test_gradients_reach_every_parameter():
    """In training mode, one backward pass gives every parameter a non-zero gradient."""
    torch.manual_seed(0)
    config = MLPConfig(vocab_size=20, n_classes=3, emb_dim=8, hidden_dim=16, n_layers=2, dropout=0.1)
    model = BagOfNgramsMLP(config).train()
    ids, offsets = _bags()
    F.cross_entropy(model(ids, offsets), torch.tensor([0, 2, 1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    used = torch.zeros(20, dtype=torch.bool)
    used[ids] = True
    assert torch.all(model.embedding.weight.grad[~used] == 0)  # only the rows of ids in a bag get a gradient


# ----------------------------------------------------------------------------- n-gram (word) dropout

def _split_bags(ids, offsets) -> list[list[int]]:
    ends = offsets.tolist()[1:] + [len(ids)]
    return [ids[b:e].tolist() for b, e in zip(offsets.tolist(), ends)]


def _is_subsequence(part: list[int], whole: list[int]) -> bool:
    it = iter(whole)
    return all(x in it for x in part)


def test_drop_ngrams_keeps_an_ordered_subset_of_each_bag():
    """Each new bag is what is left of the same bag after removing some ids, in the original order."""
    torch.manual_seed(0)
    ids, offsets = _bags()
    new_ids, new_offsets = drop_ngrams(ids, offsets, 0.5)
    assert new_offsets.shape == offsets.shape and new_offsets[0] == 0
    assert torch.all(torch.diff(new_offsets) >= 0) and new_offsets[-1] <= len(new_ids)
    before, after = _split_bags(ids, offsets), _split_bags(new_ids, new_offsets)
    assert all(_is_subsequence(a, b) for a, b in zip(after, before))
    assert after[2] == []  # the empty bag stays empty


def test_drop_ngrams_p0_keeps_everything():
    """p = 0 returns the ids and offsets unchanged."""
    ids, offsets = _bags()
    new_ids, new_offsets = drop_ngrams(ids, offsets, 0.0)
    assert torch.equal(new_ids, ids) and torch.equal(new_offsets, offsets)


def test_drop_ngrams_drops_share_p():
    """Over many n-grams the dropped share is close to p."""
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (100_000,))
    offsets = torch.arange(0, 100_000, 50)
    new_ids, _ = drop_ngrams(ids, offsets, 0.25)
    assert 1 - len(new_ids) / len(ids) == pytest.approx(0.25, abs=0.01)


def test_ngram_dropout_only_in_training():
    """ngram_dropout changes the output in training mode only; in eval mode the model is deterministic."""
    torch.manual_seed(0)
    model = BagOfNgramsMLP(MLPConfig(vocab_size=20, n_classes=2, emb_dim=8, n_layers=1, dropout=0.0,
                                     ngram_dropout=0.5))
    ids, offsets = _bags()
    model.eval()
    assert torch.equal(model(ids, offsets), model(ids, offsets))
    evaluated = model(ids, offsets)
    model.train()
    assert not torch.allclose(model(ids, offsets), evaluated)
