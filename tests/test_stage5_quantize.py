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
from stage5_gpt import quantize, quantize_int4, train
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


def test_many_rows_take_the_float_product_and_give_the_same_numbers(monkeypatch):
    """The weight-only kernel is for decoding (a few rows); a prompt or a scored text goes through one float copy of
    the weight, which is much faster there. Both paths give the same outputs."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = quantize.Int8Linear.from_linear(linear)
    calls = []
    kernel = layer.fused_matmul
    monkeypatch.setattr(layer, "fused_matmul", lambda flat: calls.append(flat.shape[0]) or kernel(flat))
    few, many = torch.randn(1, quantize.FUSED_MAX_ROWS, 64), torch.randn(2, quantize.FUSED_MAX_ROWS, 64)
    plain = quantize.Int8Linear.from_linear(linear, "dequantize")
    assert torch.allclose(layer(few), plain(few), atol=1e-5) and calls == [quantize.FUSED_MAX_ROWS]
    assert torch.allclose(layer(many), plain(many), atol=1e-5) and calls == [quantize.FUSED_MAX_ROWS]


def test_a_quantized_gpt_stays_close_keeps_its_tie_and_saves_exactly(tmp_path):
    model, qmodel = tiny_gpt(), quantize.quantize_model(tiny_gpt())
    x = torch.randint(0, 96, (2, 16))
    a, b = model(x)[0], qmodel(x)[0]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9 and (a - b).abs().max() < 0.05
    assert isinstance(qmodel.wte, quantize.TiedEmbedding) and qmodel.wte.tied[0] is qmodel.lm_head
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


# ----------------------------------------------------------------------------- int4, group-wise (quantize_int4.py)

def test_nibbles_pack_two_to_a_byte_and_unpack_exactly():
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    packed = quantize_int4.pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 32)
    assert torch.equal(quantize_int4.unpack_nibbles(packed), q)
    assert int(quantize_int4.pack_nibbles(torch.tensor([[-8, 7]], dtype=torch.int8))[0, 0]) == 0xF0   # low 0, high 15


def test_each_group_is_rounded_within_half_its_own_step_and_an_outlier_coarsens_only_its_group():
    torch.manual_seed(0)
    w = torch.randn(4, 128) * 0.02
    w[1, 5] = 3.0                                                     # one large weight in row 1, group 0
    q, scale = quantize_int4.quantize_groups(w, 32)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7 and scale.shape == (4, 4)
    back = quantize_int4.dequantize_groups(q, scale)
    assert ((w - back).abs() <= scale.repeat_interleave(32, dim=1) / 2 + 1e-7).all()
    assert scale[1, 0] > 50 * scale[1, 1]                             # only group 0 of row 1 got the coarse step
    assert torch.count_nonzero(back[1, 32:]) > 0.8 * 96               # the rest of the row keeps its small weights
    q_row, s_row = quantize_int4.quantize_groups(w, 128)              # one scale for the whole row, for contrast
    assert torch.count_nonzero(quantize_int4.dequantize_groups(q_row, s_row)[1]) <= 2


def test_pytorchs_int4_kernel_equals_the_spelled_out_arithmetic():
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    x = torch.randn(3, 5, 128)
    fused = quantize_int4.Int4Linear.from_linear(linear, 32)
    plain = quantize_int4.Int4Linear.from_linear(linear, 32, "dequantize")
    assert torch.allclose(fused(x), plain(x), atol=1e-4)
    assert torch.allclose(plain(x), nn.functional.linear(x, fused.dequantized(), linear.bias), atol=1e-5)
    assert (fused(x) - linear(x)).abs().max() < 0.25 * linear(x).abs().max()


def test_an_int4_gpt_keeps_its_tie_is_an_eighth_of_the_bytes_and_refuses_what_does_not_fit():
    model, qmodel = tiny_gpt(), quantize_int4.quantize_model_int4(tiny_gpt(), 32)
    x = torch.randint(0, 96, (2, 16))
    a, b = model(x)[0], qmodel(x)[0]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.6
    assert isinstance(qmodel.wte, quantize.TiedEmbedding) and qmodel.wte.tied[0] is qmodel.lm_head
    assert quantize.model_bytes(qmodel) < 0.3 * quantize.model_bytes(model)
    int8_bytes = quantize.model_bytes(quantize.quantize_model(tiny_gpt()))
    assert quantize.model_bytes(qmodel) < int8_bytes
    with pytest.raises(UserError, match="already quantized"):
        quantize_int4.quantize_model_int4(qmodel)
    with pytest.raises(UserError, match="does not divide"):
        quantize_int4.quantize_model_int4(tiny_gpt(), 64)            # the model is 32 wide


def test_the_int4_report_compares_float_int8_and_int4_on_real_text(lm, tmp_path, capsys):
    data, ckpt = lm
    quantize_int4.main(["--checkpoint", str(ckpt), "--data-dir", str(data), "--group-size", "32", "--new-tokens", "8",
                        "--result", str(tmp_path / "q4.json")])
    models = json.loads((tmp_path / "q4.json").read_text())["models"]
    assert set(models) == {"float32", "int8, per row (quantize.py)", "int4, groups of 32",
                           "int4, groups of 32, dequantize"}
    assert models["int4, groups of 32"]["bytes"] < models["int8, per row (quantize.py)"]["bytes"] \
        < models["float32"]["bytes"]
    assert abs(models["int4, groups of 32"]["ppl"] / models["float32"]["ppl"] - 1) < 0.2
    assert models["int4, groups of 32"]["ppl"] == pytest.approx(models["int4, groups of 32, dequantize"]["ppl"],
                                                               rel=1e-3)
    code, err = cli(quantize_int4.main, ["--checkpoint", str(ckpt), "--data-dir", str(data), "--group-size", "64"],
                    capsys)
    assert_one_line_error(code, err, "does not divide")
