"""Stage 5 LoRA from scratch: the same outputs as Hugging Face peft on the same weights (merged and unmerged), a zero
update at the start, only A and B trainable, merge/unmerge round trips, adapter files that refuse other base models,
and bad input in one line."""
from __future__ import annotations

import copy

import pytest
import torch

from scripts.common import UserError
from stage5_gpt import lora
from stage5_gpt.model import GPT, GPTConfig

peft = pytest.importorskip("peft")   # a test-only reference (requirements.txt says why)


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, pos="rope", mlp="swiglu", **kw)
    return GPT(cfg).eval()


def random_adapters(model: GPT, seed: int = 1) -> None:
    """B starts at zero; give every adapter a non-zero B so that the comparisons mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def test_a_new_adapter_changes_nothing_and_trains_only_a_and_b():
    model = tiny_gpt()
    x = torch.randint(0, 64, (2, 10))
    before = model(x)[0]
    wrapped = lora.add_lora(model, lora.LoRAConfig(rank=4, alpha=8, targets=("c_attn", "c_proj", "c_fc")))
    assert len(wrapped) == 2 * 4                       # per block: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    assert torch.equal(model(x)[0], before)            # B = 0: the adapted model starts as the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    counts = lora.count_parameters(model)
    assert counts["trainable"] == sum(4 * (m.base.in_features + m.base.out_features) for m in wrapped.values())


@pytest.mark.parametrize("targets", [("c_attn",), ("c_attn", "c_proj", "c_fc"), ("attn.c_proj",)])
def test_outputs_equal_peft_merged_and_unmerged(targets):
    ours = tiny_gpt()
    theirs = copy.deepcopy(ours)                       # the same base weights
    lora.add_lora(ours, lora.LoRAConfig(rank=4, alpha=12, targets=targets))
    random_adapters(ours)
    config = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=list(targets))
    theirs = peft.inject_adapter_in_model(config, theirs)
    layers = lora.lora_layers(ours)
    peft_layers = {n: m for n, m in theirs.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert set(peft_layers) == set(layers)             # the same layers chosen by the same names
    with torch.no_grad():                              # the same A and B
        for name, layer in layers.items():
            peft_layers[name].lora_A["default"].weight.copy_(layer.lora_A)
            peft_layers[name].lora_B["default"].weight.copy_(layer.lora_B)
    x = torch.randint(0, 64, (3, 12))
    assert torch.allclose(ours(x)[0], theirs(x)[0], atol=1e-5)
    lora.merge(ours)
    for m in peft_layers.values():
        m.merge()
    assert torch.allclose(ours(x)[0], theirs(x)[0], atol=1e-5)
    for name, layer in layers.items():                 # the merged weights themselves
        assert torch.allclose(layer.base.weight, peft_layers[name].base_layer.weight, atol=1e-6)
    lora.unmerge(ours)
    for m in peft_layers.values():
        m.unmerge()
    assert torch.allclose(ours(x)[0], theirs(x)[0], atol=1e-5)


def test_merge_unmerge_round_trip_and_the_merged_model_is_a_plain_gpt():
    model = tiny_gpt()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lora.add_lora(model, lora.LoRAConfig(rank=2, alpha=4, targets=("c_attn", "c_fc")))
    random_adapters(model)
    x = torch.randint(0, 64, (2, 8))
    adapted = model(x)[0]
    lora.merge(model)
    plain = tiny_gpt()
    plain.load_state_dict({k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k})
    assert torch.allclose(plain(x)[0], adapted, atol=1e-5)   # merged: no adapter needed at all
    lora.unmerge(model)
    restored = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.allclose(restored[k], base_state[k], atol=1e-6) for k in base_state)


def test_adapter_files_are_small_and_refuse_another_base_model(tmp_path):
    model = tiny_gpt()
    lora.add_lora(model, lora.LoRAConfig(rank=2, alpha=4, targets=("c_attn",)))
    random_adapters(model)
    lora.save_adapter(model, tmp_path / "adapter.pt", base_name="tiny")
    x = torch.randint(0, 64, (1, 8))
    again = tiny_gpt()                                 # the same base weights, no adapters yet
    lora.load_adapter(again, tmp_path / "adapter.pt")
    assert torch.allclose(again(x)[0], model(x)[0], atol=1e-6)
    model.eval()
    lora.merge(model)                                  # the fingerprint is of the base weights, merged or not
    assert lora.base_fingerprint(model) == lora.base_fingerprint(again)
    other = tiny_gpt(seed=5)
    with pytest.raises(UserError, match="adapts another base model"):
        lora.load_adapter(other, tmp_path / "adapter.pt")
    with pytest.raises(UserError, match="merged"):
        lora.load_adapter(model, tmp_path / "adapter.pt")


def test_bad_settings_are_one_line_errors():
    for cfg, pattern in [(lora.LoRAConfig(rank=0), "rank 0"), (lora.LoRAConfig(rank=33), "rank 33"),
                         (lora.LoRAConfig(targets=("q_proj",)), "not a linear layer")]:
        with pytest.raises(UserError, match=pattern):
            lora.add_lora(tiny_gpt(), cfg)
    model = tiny_gpt()
    lora.add_lora(model, lora.LoRAConfig())
    with pytest.raises(UserError, match="already has LoRA"):
        lora.add_lora(model, lora.LoRAConfig())
