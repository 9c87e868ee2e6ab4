"""Stage 5 int8 quantization from scratch: the rounding bound, the fused kernel against the spelled-out arithmetic,
a quantized GPT close to its float twin and saved/loaded exactly, PyTorch's own int8 path beside it, the report's
command line on a tiny model, and bad input in one line."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from conftest import assert_one_line_error, cli, write_tiny_lm_data
from scripts.common import UserError
from stage5_gpt import quantize, train
from stage5_gpt.model import GPT, GPTConfig


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=2, n_embd=32, pos="rope",
                         mlp="swiglu")).eval()


def test_rows_are_rounded_to_within_half_a_step_and_a_zero_row_stays_zero():
    w = torch.randn(8, 40) * torch.linspace(0.01, 3, 8)[:, None]
    w[3] = 0
    q, scale = quantize.quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    err = (w - quantize.dequantize_rows(q, scale)).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    assert torch.equal(quantize.dequantize_rows(q, scale)[3], torch.zeros(40)) and torch.isfinite(scale).all()
    assert (q.abs().amax(1)[torch.arange(8) != 3] == 127).all()      # each row's largest weight uses the full range


def test_fused_kernel_equals_the_spelled_out_arithmetic_and_is_close_to_float():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    fused, plain = quantize.Int8Linear.from_linear(linear), quantize.Int8Linear.from_linear(linear, "dequantize")
    assert torch.allclose(fused(x), plain(x), atol=1e-5)
    assert (fused(x) - linear(x)).abs().max() < 0.05 * linear(x).abs().max()


def test_a_quantized_gpt_stays_close_keeps_its_tie_and_saves_exactly(tmp_path):
    model, qmodel = tiny_gpt(), quantize.quantize_model(tiny_gpt())
    x = torch.randint(0, 96, (2, 16))
    a, b = model(x)[0], qmodel(x)[0]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9 and (a - b).abs().max() < 0.05
    assert isinstance(qmodel.wte, quantize.Int8Embedding) and qmodel.wte.tied[0] is qmodel.lm_head
    assert quantize.model_bytes(qmodel) < 0.4 * quantize.model_bytes(model)
    with pytest.raises(UserError, match="already quantized"):
        quantize.quantize_model(qmodel)
    tok_file = tmp_path / "tokenizer.json"
    tok_file.write_text("{}")
    quantize.save_quantized(qmodel, tok_file, tmp_path / "q" / "int8.pt", {"path": "x"})
    ckpt = torch.load(tmp_path / "q" / "int8.pt", weights_only=True)
    rebuilt = quantize.quantize_model(GPT(GPTConfig(**ckpt["config"])))
    rebuilt.load_state_dict(ckpt["model"])
    assert torch.equal(rebuilt(x)[0], b)


def test_pytorch_dynamic_int8_is_close_too():
    model = tiny_gpt()
    x = torch.randint(0, 96, (2, 16))
    theirs = quantize.torch_dynamic_int8(model)
    assert (theirs(x)[0].argmax(-1) == model(x)[0].argmax(-1)).float().mean() > 0.8


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    data = write_tiny_lm_data(root / "data")
    train.main(["--data-dir", str(data), "--out-dir", str(root / "lm"), "--dataset", "wikitext2", "--vocab-size", "300",
                "--epochs", "2", "--batch-size", "8", "--block-size", "32", "--n-layer", "2", "--n-head", "2",
                "--n-embd", "32", "--no-tensorboard"])
    return data, root / "lm" / "best.pt"


def test_the_report_compares_the_models_on_real_text(lm, tmp_path, capsys):
    data, ckpt = lm
    quantize.main(["--checkpoint", str(ckpt), "--data-dir", str(data), "--out", str(tmp_path / "int8.pt"),
                   "--new-tokens", "8", "--result", str(tmp_path / "q.json")])
    r = json.loads((tmp_path / "q.json").read_text())
    models = r["models"]
    assert abs(models["int8 (ours, fused kernel)"]["ppl"] / models["float32"]["ppl"] - 1) < 0.02
    assert models["int8 (ours, fused kernel)"]["bytes"] < 0.5 * models["float32"]["bytes"]
    assert r["logit_error"]["top1_agreement"] > 0.9 and max(r["weight_error"].values()) < 0.02
    model, tok, q = quantize.load_quantized(tmp_path / "int8.pt", torch.device("cpu"))
    assert q["quantized"] == quantize.SCHEME
    code, err = cli(quantize.main, ["--checkpoint", str(tmp_path / "int8.pt"), "--data-dir", str(data)], capsys)
    assert_one_line_error(code, err, "already quantized")
    with pytest.raises(UserError, match="not a quantized checkpoint"):
        quantize.load_quantized(ckpt, torch.device("cpu"))
    x = torch.randint(0, 300, (1, 32))
    assert torch.allclose(model(x)[0], quantize.quantize_model(train_free(ckpt))(x)[0], atol=1e-6)


def train_free(ckpt):
    from stage5_gpt.evaluate import load_model
    return load_model(ckpt, torch.device("cpu"))[0]
