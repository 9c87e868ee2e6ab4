"""INT4 weight quantization, group-wise: the second lesson after int8 (quantize.py), where one scale per row stops
being enough.

    qmodel = quantize_model_int4(model, group_size=64)       # nn.Linear -> Int4Linear, the tied embedding follows
    python stage5_gpt/quantize_int4.py --checkpoint runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt

Four bits give 16 levels. Symmetric quantization keeps a scale s and integers q = round(w / s) in [-8, 7], so w moves by
at most s / 2, and s = max|w| / 7 for the weights sharing it. With 127 levels (int8) one scale per row was fine; with 7,
a row's one large weight would leave every small weight of that row at 0 or +-s. So each row is cut into groups of
--group-size consecutive weights (32 to 256 are common), and every group gets its own scale: a large weight now coarsens
only its own group. The price is the scales: one float per group. In float32 a group of 64 adds 4 bytes to its 32 bytes
of packed weights, 0.5 + 0.0625 = 0.5625 bytes per weight, about a seventh of float32's 4 (bf16 scales, as
production formats keep them, would halve that overhead).

Two 4-bit numbers share a byte: `pack_nibbles` stores q + 8 (0..15) of even columns in the low half and of odd columns
in the high half, and `unpack_nibbles` undoes it exactly. `Int4Linear` computes y = x (q * s)^T + b: kernel "dequantize"
spells it out (unpack, times each group's scale, an ordinary matmul), kernel "fused" hands the weights, converted once
into the layout PyTorch's CPU kernel wants (torch._convert_weight_to_int4pack_for_cpu), to that kernel
(torch._weight_int4pack_mm_for_cpu, gpt-fast's and torchao's CPU int4 path), which reads the 4-bit weights as they are.
The test checks the two against each other. The tied embedding reads its rows from the output layer's packed weights.

This script's report puts float32, int8 (quantize.py) and int4 side by side on real text: perplexity, the logits'
change, bytes, decoding speed at batch 1, and greedy text. It writes no int4 checkpoint: save and load are int8's
lesson, and the int4 model is remade from the float one in a second.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/quantize_int4.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn as nn

from scripts.common import UserError, get_device, portable, run_cli
from stage5_gpt.evaluate import load_model
from stage5_gpt.model import GPT
from stage5_gpt.quantize import (QuantizedLinear, TiedEmbedding, add_report_args, check_quantizable, compare,
                                 finish_report, float_model_and_text, quantize_model, swap_linears)

GROUP_SIZES = (32, 64, 128, 256)


def quantize_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A float matrix (out, in) -> (q int8 (out, in) in [-8, 7], scale float32 (out, in / group_size))."""
    out_f, in_f = w.shape
    groups = w.detach().float().reshape(out_f, in_f // group_size, group_size)     # (out, G, group)
    scale = (groups.abs().amax(dim=-1) / 7).clamp(min=1e-12)                       # (out, G): max|w| maps to 7
    q = torch.round(groups / scale[..., None]).clamp(-8, 7).to(torch.int8)
    return q.reshape(out_f, in_f), scale


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """(..., in) integers and (..., G) scales -> (..., in) floats: each group of in / G times its own scale."""
    group_size = q.shape[-1] // scale.shape[-1]
    return (q.to(dtype).unflatten(-1, (scale.shape[-1], group_size)) * scale[..., None].to(dtype)).flatten(-2)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """int8 in [-8, 7] (..., in), in even -> uint8 (..., in / 2): column 2j in the low 4 bits, 2j + 1 in the high 4."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)                                    # 0..15
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_nibbles: uint8 (..., in / 2) -> int8 (..., in) in [-8, 7]."""
    low, high = (packed & 0x0F).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)


class Int4Linear(QuantizedLinear):
    """A linear layer with 4-bit weights, two to a byte, and one float scale per group of group_size inputs."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, kernel: str = "fused"):
        super().__init__()
        self.out_features, self.in_features = q.shape
        # PyTorch's CPU kernel takes a multiple of 16 outputs; another layer (a vocabulary of 300) is spelled out
        self.group_size = self.in_features // scale.shape[1]
        self.kernel = "dequantize" if kernel == "fused" and self.out_features % 16 else kernel
        self.register_buffer("weight_int4", pack_nibbles(q))     # (out, in / 2) uint8: an eighth of float32's bytes
        self.register_buffer("scale", scale)                     # (out, in / group_size) float32
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        if self.kernel == "fused":   # PyTorch's own tiled layout of the same numbers, made once (not saved: derived)
            self.register_buffer("fused_weight", torch._convert_weight_to_int4pack_for_cpu(
                (q.to(torch.int32) + 8).contiguous(), 1), persistent=False)
            # the kernel computes (q + 8 - 8) * scale + zero per group: zero 0, since ours are symmetric
            self.register_buffer("scales_and_zeros", torch.stack([scale.t(), torch.zeros_like(scale.t())], -1)
                                 .contiguous(), persistent=False)                 # (G, out, 2)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, kernel: str = "fused") -> "Int4Linear":
        return cls(*quantize_groups(linear.weight, group_size), linear.bias, kernel)

    def dequantized(self, rows=slice(None), dtype=torch.float32) -> torch.Tensor:
        """q * s for the weight's rows (all, or those `rows` picks), unpacked: (out, in), or (..., in) for ids."""
        return dequantize_groups(unpack_nibbles(self.weight_int4[rows]), self.scale[rows], dtype)

    def fused_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(flat, self.fused_weight, self.group_size,
                                                 self.scales_and_zeros.to(flat.dtype))


def quantize_model_int4(model: GPT, group_size: int = 64, kernel: str = "fused") -> GPT:
    """Every nn.Linear of `model` -> Int4Linear (in place), the tied embedding reading the output layer's weights."""
    check_quantizable(model, kernel)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.in_features % group_size:
            raise UserError(f"--group-size {group_size} does not divide {name}'s {m.in_features} inputs: use a "
                            f"group size that divides every layer's width ({', '.join(map(str, GROUP_SIZES))})")
    return swap_linears(model, lambda linear: Int4Linear.from_linear(linear, group_size, kernel), TiedEmbedding,
                        f"int4, symmetric, groups of {group_size}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Quantize a GPT's weights to 4 bits per group and compare it with float32 "
                                            "and int8 (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_report_args(p)
    p.add_argument("--group-size", type=int, nargs="+", default=[32, 64], choices=GROUP_SIZES,
                   help="the group sizes to compare")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = get_device("cpu")
    model, tok, ckpt, ids = float_model_and_text(args, device)
    fresh = lambda: load_model(args.checkpoint, device)[0]  # noqa: E731   (each quantizer takes a model of its own)
    models = {"float32": model, "int8, per row (quantize.py)": quantize_model(fresh())}
    for g in args.group_size:
        models[f"int4, groups of {g}"] = quantize_model_int4(fresh(), g)
    spelled = [n for n, m in models[f"int4, groups of {g}"].named_modules()
               if isinstance(m, Int4Linear) and m.kernel == "dequantize"]
    if spelled:
        print(f"PyTorch's int4 kernel takes a multiple of 16 outputs: {', '.join(spelled)} computed spelled out")
    models[f"int4, groups of {g}, dequantize"] = quantize_model_int4(fresh(), g, "dequantize")
    rows = compare(models, tok, ids, args, device)
    finish_report("stage5_gpt/quantize_int4.py", parse_args, args, argv, ckpt,
                  {"checkpoint": portable(str(args.checkpoint)), "dataset": ckpt["dataset"], "split": args.split,
                   "threads": torch.get_num_threads(), "models": rows},
                  f"{ckpt['dataset']} GPT, {model.num_params() / 1e6:.1f} M parameters: int4 groups against int8")


if __name__ == "__main__":
    run_cli(main)
