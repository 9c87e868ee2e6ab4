"""Stage 5 mfu.py: the FLOPs per token its MFU rests on equal what PyTorch's own FLOP counter counts in a training
step's forward and backward passes; the script runs and writes its figures."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stage5_gpt import mfu
from stage5_gpt.model import GPT, GPTConfig


@pytest.mark.parametrize("variant", [{"pos": "learned", "mlp": "gelu"},
                                     {"pos": "rope", "mlp": "swiglu", "norm": "rmsnorm", "bias": False}])
def test_6n_plus_12ltd_is_what_torch_counts_in_a_training_step(variant):
    """PyTorch's FlopCounterMode counts the matrix products: every weight matrix's (the tied embedding as the output
    layer) and attention's, written out (attn="manual") so that they are products it sees. 6N also counts the
    biases and norm gains, which are no matrix products: the count uses N without them."""
    cfg = GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=64, attn="manual", **variant)
    model = GPT(cfg)
    x, y = torch.randint(0, 300, (3, 64)), torch.randint(0, 300, (3, 64))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(x, y)
        loss.backward()
    counted = counter.get_total_flops() / x.numel()           # forward and backward, per token
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and n != "wpe.weight")
    assert counted == pytest.approx(mfu.flops_per_token(cfg, matrices), rel=1e-3)
    assert mfu.flops_per_token(cfg, model.num_params()) > counted   # the script's N: every parameter


def test_mfu_runs_and_writes_a_share_of_the_measured_peak(tmp_path, capsys):
    out = tmp_path / "mfu.json"
    mfu.main(["--vocab-size", "200", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
              "--batch-size", "2", "--steps", "2", "--rounds", "1", "--warmup", "1", "--sizes", "64", "128",
              "--json", str(out)])
    r = json.loads(out.read_text())
    fp32 = r["precisions"]["float32"]
    assert fp32["peak_at_n"] in (64, 128) and fp32["peak_gflops"] > 0 and 0 < fp32["mfu"] < 1
    assert "MFU" in capsys.readouterr().out and r["command"].startswith("python stage5_gpt/mfu.py")
