"""Stage 5 model: parity with transformers' GPT2LMHeadModel after copying weights (logits, loss and 20 greedy tokens),
fused attention = written-out attention (outputs and gradients, every variant), KV-cached = uncached (logits step by
step, and generation past block_size), causality, tied weights, init, config checks, optimizer groups, RMSNorm =
nn.RMSNorm, RoPE's relative positions, sampling."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from stage5_gpt.model import (GPT, GPTConfig, KVCache, RMSNorm, apply_rope, from_hf_gpt2, rope_tables, sample_next,
                              to_hf_gpt2)

V, BLOCK, C = 50, 16, 32
VARIANTS = [dict(pos=p, norm=n, mlp=m)
            for p, n, m in itertools.product(("learned", "rope"), ("layernorm", "rmsnorm"), ("gelu", "swiglu"))]


def cfg(**kw) -> GPTConfig:
    base = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=C, dropout=0.0)
    return GPTConfig(**{**base, **kw})


def make(seed: int = 0, scale: float = 0.1, **kw) -> GPT:
    """A tiny GPT in eval mode, every parameter moved off its init (gains 1 and biases 0 would hide a bad copy).
    A larger scale makes its greedy text vary more (at init it repeats one token, which would compare little)."""
    torch.manual_seed(seed)
    model = GPT(cfg(**kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=scale)
    return model


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def greedy_reference(model: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """The plain loop, independent of generate(): a full forward pass over the last block_size tokens per step."""
    idx = prompt
    for _ in range(n):
        logits, _ = model(idx[:, -model.cfg.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


def hf_twin(model: GPT, transformers):
    """A randomly initialised GPT2LMHeadModel of the same size (nothing downloaded), holding our weights."""
    c = model.cfg
    config = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                     n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     layer_norm_epsilon=c.layer_norm_epsilon, bos_token_id=0, eos_token_id=None)
    theirs = transformers.GPT2LMHeadModel(config).eval()
    theirs.load_state_dict(to_hf_gpt2(model))
    return theirs


@pytest.mark.parametrize("attn", ["sdpa", "manual"])
def test_logits_loss_and_greedy_tokens_match_hf_gpt2(hf, attn):
    ours = make(attn=attn, block_size=32)
    theirs = hf_twin(ours, hf)
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_params(non_embedding=False)
    idx = tokens(3, 32)
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)  # HF shifts `labels` itself; we take targets
    with torch.no_grad():
        ref = theirs(idx, labels=idx)
        logits, loss = ours(idx, targets)
    assert (logits - ref.logits).abs().max() <= 1e-5
    assert abs(loss.item() - ref.loss.item()) <= 1e-5
    prompt = tokens(2, 5, seed=2)
    ref_tokens = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                                 pad_token_id=0)
    assert ref_tokens.shape == (2, 25) and all(len(row[5:].unique()) > 3 for row in ref_tokens)
    for use_cache in (True, False):
        assert torch.equal(ours.generate(prompt, 20, temperature=0.0, use_cache=use_cache), ref_tokens)


def test_from_hf_gpt2_and_back(hf):
    torch.manual_seed(0)
    config = hf.GPT2Config(vocab_size=V, n_positions=BLOCK, n_embd=C, n_layer=2, n_head=2, resid_pdrop=0.0,
                           embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    theirs = hf.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    ours = from_hf_gpt2(theirs).eval()
    idx = tokens(2, BLOCK)
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max() <= 1e-5
    theirs_sd = theirs.state_dict()
    for name, tensor in to_hf_gpt2(ours).items():
        assert torch.equal(tensor, theirs_sd[name]), name
    with pytest.raises(ValueError, match="learned positions"):
        to_hf_gpt2(make(pos="rope"))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_sdpa_attention_equals_manual_attention(variant):
    fast = make(**variant)  # attn="sdpa", the default
    slow = GPT(cfg(**variant, attn="manual")).eval()
    slow.load_state_dict(fast.state_dict())
    idx, targets = tokens(3, BLOCK), tokens(3, BLOCK, seed=3)
    fast_logits, fast_loss = fast(idx, targets)
    slow_logits, slow_loss = slow(idx, targets)
    assert torch.allclose(fast_logits, slow_logits, atol=1e-5)
    fast_loss.backward()
    slow_loss.backward()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("attn", ["sdpa", "manual"])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_cached_logits_equal_uncached(pos, attn):
    model = make(pos=pos, attn=attn)
    idx = tokens(2, BLOCK)
    full, _ = model(idx)
    cache = KVCache(model.cfg.n_layer, BLOCK)
    # a prompt of 5 in one pass, one token, 3 at once (a cached step with T > 1: the mask is not the plain causal one)
    pieces = [slice(0, 5), slice(5, 6), slice(6, 9)] + [slice(t, t + 1) for t in range(9, BLOCK)]
    for piece in pieces:
        step, _ = model(idx[:, piece], cache=cache)
        assert torch.allclose(step, full[:, piece], atol=1e-5), piece
    assert cache.pos == BLOCK
    with pytest.raises(ValueError, match="block_size"):
        model(idx[:, :1], cache=cache)  # the cache is full: no position left


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_cached_generation_equals_uncached_past_block_size(pos):
    model = make(seed=2, scale=0.3, pos=pos)
    prompt, n = tokens(2, 5), 2 * BLOCK  # the last 5 + 32 - 16 = 21 steps read a cropped window
    ref = greedy_reference(model, prompt, n)
    assert all(len(row[-BLOCK:].unique()) > 3 for row in ref)  # not one repeated token, which would compare little
    assert torch.equal(model.generate(prompt, n, temperature=0.0), ref)
    assert torch.equal(model.generate(prompt, n, temperature=0.0, use_cache=False), ref)
    assert torch.equal(model.generate(prompt, n, top_k=1), ref)
    # sampling: the same random stream gives the same tokens with and without the cache
    sampled = [model.generate(prompt, n, top_k=10, use_cache=use_cache, generator=torch.Generator().manual_seed(3))
               for use_cache in (True, False)]
    assert torch.equal(sampled[0], sampled[1]) and not torch.equal(sampled[0], ref)
    # a prompt longer than the context: both paths read its last block_size tokens
    long_prompt = tokens(1, BLOCK + 4)
    assert torch.equal(model.generate(long_prompt, 3, temperature=0.0), greedy_reference(model, long_prompt, 3))


def test_generate_stream_yields_one_token_per_step():
    model = make()
    prompt = tokens(2, 4)
    steps = list(model.generate_stream(prompt, 6, temperature=0.0))
    assert len(steps) == 6 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.cat([prompt, torch.stack(steps, 1)], 1), model.generate(prompt, 6, temperature=0.0))
    assert torch.equal(model.generate(prompt, 0), prompt)


@pytest.mark.parametrize("variant", VARIANTS + [dict(attn="manual"), dict(pos="rope", attn="manual")],
                         ids=lambda v: "-".join(v.values()))
def test_future_tokens_change_nothing_before_them(variant):
    model = make(**variant)
    idx = tokens(2, BLOCK)
    changed = idx.clone()
    changed[:, 9] = (idx[:, 9] + 1) % V
    before, _ = model(idx)
    after, _ = model(changed)
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-6)
    assert ((before[:, 9:] - after[:, 9:]).abs().amax(-1) > 1e-4).all()  # and every position from 9 on does change


def test_output_layer_is_the_token_embedding():
    model = make()
    assert model.lm_head.weight is model.wte.weight
    idx = tokens(2, 8)
    with torch.no_grad():
        model.wte.weight[7].zero_()  # one write changes both uses: token 7's input vector and its output score
    logits, _ = model(idx)
    assert torch.allclose(logits[..., 7], torch.zeros(()), atol=1e-6)
    _, loss = model(idx, tokens(2, 8, seed=4))
    loss.backward()
    model.configure_optimizer(weight_decay=0.1, lr=1e-2).step()
    assert model.lm_head.weight is model.wte.weight
    per_layer = 12 * C * C + 13 * C  # attention 4C^2 + 4C, MLP 8C^2 + 5C, two LayerNorms 4C
    assert model.num_params(non_embedding=False) == V * C + BLOCK * C + 2 * per_layer + 2 * C  # head counted once
    assert model.num_params() == model.num_params(non_embedding=False) - BLOCK * C
    assert make(pos="rope").num_params() == V * C + 2 * per_layer + 2 * C


def test_gpt2_init():
    model = GPT(cfg(n_layer=8, n_embd=64, n_head=4))
    block = model.h[3]
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.001
    for proj in (block.attn.c_proj, block.mlp.c_proj):  # residual branches: 0.02 / sqrt(2 * 8)
        assert abs(proj.weight.std().item() - 0.005) < 0.0005
    assert block.mlp.c_fc.bias.abs().sum() == 0 and (block.ln_1.weight == 1).all()
    # at init every token is about equally likely: the loss is ln(V)
    _, loss = model(tokens(4, BLOCK), tokens(4, BLOCK, seed=2))
    assert abs(loss.item() - math.log(V)) < 0.05


def test_loss_skips_minus_100_and_hidden_states_feed_the_head():
    model = make()
    idx, targets = tokens(2, 10), tokens(2, 10, seed=5)
    targets[0, :4] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    assert torch.allclose(loss, F.cross_entropy(logits[keep], targets[keep]))
    assert torch.allclose(model.lm_head(model.hidden_states(idx)), logits)
    # right padding leaves the last real token's state as it was (causal attention): what a classifier reads
    padded = torch.cat([idx[:1, :6], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(model.hidden_states(padded)[0, 5], model.hidden_states(idx[:1, :6])[0, 5], atol=1e-6)


@pytest.mark.parametrize("kw,message", [
    (dict(n_embd=30, n_head=4), "not divisible by n_head"),
    (dict(pos="alibi"), "pos must be learned or rope"),
    (dict(norm="batchnorm"), "norm must be layernorm or rmsnorm"),
    (dict(mlp="relu"), "mlp must be gelu or swiglu"),
    (dict(attn="flash"), "attn must be sdpa or manual"),
    (dict(pos="rope", n_embd=30, n_head=2), "head size 15 must be even"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
])
def test_config_rejects_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kw)


def test_config_round_trips_through_a_dict():
    c = cfg(pos="rope", mlp="swiglu")
    assert GPTConfig(**c.to_dict()) == c


@pytest.mark.parametrize("variant", [dict(), dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)],
                         ids=["gpt2", "modern"])
def test_optimizer_groups_cover_every_parameter_once(variant):
    model = make(**variant)
    decay, no_decay = model.configure_optimizer(weight_decay=0.1, lr=1e-3).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    names = {id(p): name for name, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay_names == {n for n in names.values() if n.endswith("bias") or "ln_" in n}
    assert "wte.weight" in {names[id(p)] for p in decay["params"]}


def test_rmsnorm_matches_torch():
    ours, theirs = RMSNorm(C, eps=1e-5), nn.RMSNorm(C, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    for x in (torch.randn(2, 5, C) * 3 + 1, torch.randn(2, 5, C) * 1e-3):  # small x: where eps matters
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_rope_scores_depend_on_distance_only():
    D = 8
    cos, sin = rope_tables(40, D)
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)

    def score(m: int, n: int) -> torch.Tensor:  # query at position m . key at position n
        return (apply_rope(q, cos[m:m + 1], sin[m:m + 1]) * apply_rope(k, cos[n:n + 1], sin[n:n + 1])).sum()

    assert torch.allclose(score(7, 3), score(27, 23), atol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 4), atol=1e-3)
    x = torch.randn(1, 2, 40, D)
    rotated = apply_rope(x, cos, sin)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths
    assert torch.equal(rotated[:, :, 0], x[:, :, 0])  # position 0 is not turned


def test_rope_matches_hf_llama(hf):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    D = 8
    cos, sin = rope_tables(12, D)
    q, k = torch.randn(2, 3, 12, D), torch.randn(2, 3, 12, D)
    ref_q, ref_k = llama.apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.allclose(apply_rope(q, cos, sin), ref_q, atol=1e-6)
    assert torch.allclose(apply_rope(k, cos, sin), ref_k, atol=1e-6)


def test_sampling_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])  # probabilities .607 .223 .135 .030 .004
    idx = torch.tensor([[4]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # top_k=1 and a tiny top_p leave only the best token, whatever the draw
        assert sample_next(logits, idx, top_k=1, generator=g).item() == 0
        assert sample_next(logits, idx, top_p=0.01, generator=g).item() == 0
    draws = lambda **kw: {sample_next(logits, idx, generator=g, **kw).item() for _ in range(300)}  # noqa: E731
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.9) == {0, 1, 2}  # .607 + .223 < .9 <= .607 + .223 + .135
    assert draws() >= {0, 1, 2, 3}  # no filter: everything can come (token 4, p = .004, may not in 300 draws)
    assert sample_next(logits, idx, temperature=0).item() == 0
    assert sample_next(logits, torch.tensor([[0]]), temperature=0, repetition_penalty=3.0).item() == 1  # 2/3 < 1
    penalised = torch.tensor([[-1.0, -1.1]])  # a negative logit is multiplied: -1 * 1.2 = -1.2 < -1.1
    assert sample_next(penalised, torch.tensor([[0]]), temperature=0, repetition_penalty=1.2).item() == 1
    first = sample_next(logits.repeat(8, 1), idx.repeat(8, 1), generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, sample_next(logits.repeat(8, 1), idx.repeat(8, 1),
                                          generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, idx, temperature=-1.0)
