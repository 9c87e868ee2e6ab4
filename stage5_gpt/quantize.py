"""INT8 weight quantization from scratch: every weight matrix of a GPT stored as 8-bit integers and one float per row.

    qmodel = quantize_model(model)                     # nn.Linear -> Int8Linear, the tied embedding -> TiedEmbedding
    save_quantized(qmodel, tok_file, "int8.pt"); load_quantized("int8.pt")
    python stage5_gpt/quantize.py --checkpoint runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt

A float32 weight takes 4 bytes; an int8 one takes 1. Symmetric per-output-channel quantization keeps, for each row w of
a weight matrix (the weights that make one output), a scale s = max|w| / 127 and the integers q = round(w / s), all in
[-127, 127]. The row is then q * s: each weight moves by at most s / 2, so a row with one large weight is quantized
coarsely, which is why each row gets its own scale instead of one for the whole matrix.

- `Int8Linear` computes y = x (q * s)^T + b. kernel="dequantize" spells it out (int8 -> float, times the scales, then an
  ordinary matmul: the arithmetic, but no speed-up, since a float copy of the weight is made every call);
  kernel="fused" hands the int8 weight and the scales to PyTorch's weight-only int8 kernel
  (torch._weight_int8pack_mm, the one gpt-fast and torchao use on CPUs), which reads the int8 bytes directly: decoding
  one token at a time is limited by how fast the weights stream from memory, so a quarter of the bytes can mean more
  tokens per second.
- The tied embedding (one matrix reads tokens and scores them) stays tied: `TiedEmbedding` looks its rows up in the same
  int8 matrix and scales as the output layer uses.
- Norms, biases and the rotary tables stay float: they are tiny, and the norms' gains are where errors would spread.

`report` measures what a learner should look at before trusting a smaller model: the weights' relative error per
layer, the logits' error and how often the top token changes, the perplexity of both models on the same text, and
greedy text side by side. PyTorch's own int8 path (torch.ao's dynamic quantization: int8 weights and, per batch, int8
activations) is measured beside it as the production twin.
"""
from __future__ import annotations

import argparse
import copy
import io
import math
import platform
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python stage5_gpt/quantize.py`: put the repo root on the path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.common import (UserError, cpu_has_native_bf16, get_device, load_checkpoint, portable, positive_int,
                            provenance, resolve_data_dir, resolved_config, run_cli, save_checkpoint, write_json)
from stage5_gpt.corpus import dataset_info, load_text
from stage5_gpt.data import encode_split, load_tokenizer, tokenizer_fingerprint
from stage5_gpt.evaluate import load_model, score_split
from stage5_gpt.model import GPT, GPTConfig
from stage5_gpt.reference_runs import REFERENCE_RUNS

STAGE = "stage5_gpt"
SCHEME = "int8, symmetric, per output channel"
KERNELS = ("fused", "dequantize")
# PyTorch's weight-only kernels are written for decoding: a few rows of activations against the whole weight. With many
# rows (a prompt read at once, a text scored in windows) they are far slower than converting the weight to float once
# and using the float matrix product (measured on a 2-core CPU, 8,000 x 192 output layer: at 8,192 rows the int8 kernel
# took 13 s, the float product 0.4 s; at 1 row the int8 kernel wins). Above this many rows "fused" does the latter.
FUSED_MAX_ROWS = 16


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float matrix (out, in) -> (q int8 (out, in), scale float32 (out,)), with w ~ q * scale[:, None]."""
    scale = (w.detach().float().abs().amax(dim=1) / 127).clamp(min=1e-12)   # (out,): max|w| maps to 127
    q = torch.round(w.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale[:, None].to(dtype)


class QuantizedLinear(nn.Module):
    """What the int8 layer below and the int4 one (quantize_int4.py) share: y = x W^T + b with W kept quantized. Each
    says how its weights read back as floats (`dequantized`: every row, or the rows an embedding looks up) and how
    PyTorch's kernel multiplies by them as they are (`fused_matmul`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if self.kernel == "dequantize" or rows > FUSED_MAX_ROWS:   # the arithmetic, spelled out (and, for many rows,
            y = F.linear(x, self.dequantized(dtype=x.dtype))        # the faster way: one float copy, one float GEMM)
        else:                                       # PyTorch's kernel reads the quantized weight as it is
            flat = x.reshape(-1, self.in_features).contiguous()                           # (N, in)
            y = self.fused_matmul(flat).reshape(*x.shape[:-1], self.out_features)          # (..., out)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int8Linear(QuantizedLinear):
    """A linear layer with int8 weights and one float scale per output: y = x (q * s)^T + b."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, kernel: str = "fused"):
        super().__init__()
        self.in_features, self.out_features, self.kernel = q.shape[1], q.shape[0], kernel
        self.register_buffer("weight_int8", q)      # (out, in) int8: a quarter of the float32 bytes
        self.register_buffer("scale", scale)        # (out,) float32
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "fused") -> "Int8Linear":
        return cls(*quantize_rows(linear.weight), linear.bias, kernel)

    def dequantized(self, rows=slice(None), dtype=torch.float32) -> torch.Tensor:
        """q * s for the weight's rows (all, or those `rows` picks): (out, in), or (..., in) for a tensor of ids."""
        return self.weight_int8[rows].to(dtype) * self.scale[rows][..., None].to(dtype)

    def fused_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(flat, self.weight_int8, self.scale.to(flat.dtype))


class TiedEmbedding(nn.Module):
    """An embedding whose rows are the output layer's quantized rows (GPT ties the two matrices, section 7): looked up,
    then read back as floats."""

    def __init__(self, tied: QuantizedLinear):
        super().__init__()
        self.tied = [tied]                          # a list: not a submodule, so its buffers are saved once

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tied[0].dequantized(idx)        # (B, T, C)


def check_quantizable(model: GPT, kernel: str) -> None:
    if getattr(model, "quantized", None):
        raise UserError(f"this model is already quantized ({model.quantized}): quantize the float checkpoint instead")
    if kernel not in KERNELS:
        raise UserError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")


def swap_linears(model: GPT, quantized_linear, quantized_embedding, scheme: str) -> GPT:
    """Replace every nn.Linear of `model` by quantized_linear(it) (in place), and a tied embedding by
    quantized_embedding(the new output layer), which reads its rows from that layer's quantized weights. Returns the
    model, marked with its scheme and in eval mode (it is for inference)."""
    tied = model.lm_head.weight is model.wte.weight
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, quantized_linear(module))
    if tied:
        model.wte = quantized_embedding(model.lm_head)
    model.quantized = scheme
    return model.eval()


def quantize_model(model: GPT, kernel: str = "fused") -> GPT:
    """Every nn.Linear of `model` -> Int8Linear (in place), the tied embedding -> a TiedEmbedding reading the output
    layer's int8 rows."""
    check_quantizable(model, kernel)
    return swap_linears(model, lambda linear: Int8Linear.from_linear(linear, kernel), TiedEmbedding, SCHEME)


def model_bytes(model: nn.Module) -> int:
    """The size of the model's saved weights (torch.save of its state_dict): what a file of it takes on disk, tied
    matrices once, and the packed weights of PyTorch's quantized layers included."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def save_quantized(model: GPT, tokenizer_file: Path, path: str | Path, source: dict) -> None:
    """A checkpoint of the int8 model (its tokenizer copied beside it) that load_quantized reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer_file.resolve() != (path.parent / tokenizer_file.name).resolve():
        shutil.copyfile(tokenizer_file, path.parent / tokenizer_file.name)
    save_checkpoint({"stage": STAGE, "kind": "language_model", "quantized": SCHEME, "config": model.cfg.to_dict(),
                     "model": model.state_dict(), "dataset": source.get("dataset"), "state": source.get("state", {}),
                     "data": {"tokenizer": tokenizer_file.name, "fingerprint": tokenizer_fingerprint(tokenizer_file)},
                     "source": source.get("path")}, path)


def load_quantized(path: str | Path, device, kernel: str = "fused") -> tuple[GPT, object, dict]:
    """-> (the int8 model, its tokenizer, the checkpoint). The structure is rebuilt, then the int8 weights loaded."""
    ckpt = load_checkpoint(path, stage=STAGE, kind="language_model")
    if not ckpt.get("quantized"):
        raise UserError(f"{path} is not a quantized checkpoint: quantize.py writes those")
    model = quantize_model(GPT(GPTConfig(**ckpt["config"])), kernel)
    model.load_state_dict(ckpt["model"])
    return model.to(device), load_tokenizer(Path(path).parent / ckpt["data"]["tokenizer"]), ckpt


def torch_dynamic_int8(model: GPT) -> GPT:
    """PyTorch's own int8 path for CPUs (torch.ao dynamic quantization): int8 weights per channel and activations
    quantized on the fly; the embedding stays float (the output layer gets its own int8 copy)."""
    import warnings

    import torch.ao.quantization as tq
    with warnings.catch_warnings():   # torch.ao announces its move to torchao; it still is PyTorch's CPU int8 path
        warnings.simplefilter("ignore")
        untied = GPT(model.cfg)
        untied.load_state_dict(model.state_dict())
        untied.lm_head = nn.Linear(model.cfg.n_embd, model.cfg.vocab_size, bias=False)
        untied.lm_head.weight = nn.Parameter(model.wte.weight.detach().clone())
        return tq.quantize_dynamic(untied.eval(), {nn.Linear}, dtype=torch.qint8)


# ----------------------------------------------------------------------------- what quantization changed

@torch.no_grad()
def weight_errors(float_model: GPT, qmodel: GPT) -> dict[str, float]:
    """Per quantized matrix: ||W - q*s|| / ||W|| (relative Frobenius error)."""
    out = {}
    float_linears = {n: m for n, m in float_model.named_modules() if isinstance(m, nn.Linear)}
    for name, m in qmodel.named_modules():
        if isinstance(m, Int8Linear):
            w = float_linears[name].weight.float()
            out[name] = round(float((w - dequantize_rows(m.weight_int8, m.scale)).norm() / w.norm()), 6)
    return out


@torch.no_grad()
def logit_errors(float_model: GPT, qmodel: GPT, ids: np.ndarray, windows: int = 16) -> dict:
    """On `windows` consecutive context windows of real text: the logits' largest and mean absolute change, and
    how often the most likely next token stays the same."""
    T = float_model.cfg.block_size
    windows = max(1, min(windows, len(ids) // T))
    x = torch.from_numpy(ids[:windows * T].astype(np.int64)).view(windows, -1)    # (windows, <= T)
    a, b = float_model(x)[0], qmodel(x)[0]
    return {"max_abs": round(float((a - b).abs().max()), 5), "mean_abs": round(float((a - b).abs().mean()), 6),
            "top1_agreement": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 5)}


@torch.no_grad()
def decode_speeds(models: dict[str, GPT], prompt: list[int], n: int, rounds: int = 10) -> dict[str, float]:
    """Each model's greedy decoding tokens/s at batch 1 with the KV cache, the best of `rounds`. The models take turns
    within each round, so a moment when the CPU is busy with something else slows them all, not one of them."""
    best = dict.fromkeys(models, 0.0)
    idx = torch.tensor([prompt])
    for _ in range(rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            for _ in model.generate_stream(idx, n, temperature=0):
                pass
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return {name: round(v, 1) for name, v in best.items()}


# ----------------------------------------------------------------------------- the report (also quantize_int4.py's)

def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="runs/stage5_gpt/wikitext2_rope_rmsnorm_swiglu/best.pt",
                   help="a float GPT checkpoint (train.py's or sft.py's best.pt)")
    p.add_argument("--split", default="val", help="the split whose perplexity is compared")
    p.add_argument("--max-tokens", type=positive_int, default=200_000, help="score at most this many tokens of it")
    p.add_argument("--new-tokens", type=positive_int, default=128, help="tokens per decoding-speed measurement")
    p.add_argument("--prompt", default="The history of", help="the prompt of the text shown side by side")
    p.add_argument("--data-dir", default=None, help="default: $MY_LLM_DATA, else ~/.cache/my_llm/data")
    p.add_argument("--result", default=None,
                   help="the result JSON with every figure, its plot beside it as .png (default: "
                        "runs/stage5_gpt/<script>.json; publish the reference run's with scripts/publish.py)")


def float_model_and_text(args: argparse.Namespace, device) -> tuple[GPT, object, dict, np.ndarray]:
    """The float model of --checkpoint (refused if already quantized), its tokenizer and checkpoint, and the token ids
    of the split it is scored on."""
    src = load_checkpoint(args.checkpoint, stage=STAGE, kind="language_model")
    if src.get("quantized"):
        raise UserError(f"{args.checkpoint} is already quantized ({src['quantized']}): give the float checkpoint")
    model, tok, ckpt = load_model(args.checkpoint, device)
    info = dataset_info(ckpt["dataset"])
    if args.split not in info["splits"]:
        raise UserError(f"{ckpt['dataset']} has no split {args.split!r}; it has {', '.join(info['splits'])}")
    ids = np.array(encode_split(tok, load_text(ckpt["dataset"], resolve_data_dir(args.data_dir), args.split)),
                   dtype=np.int64)[:args.max_tokens + 1]
    return model, tok, ckpt, ids


def compare(models: dict[str, GPT], tok, ids: np.ndarray, args: argparse.Namespace, device) -> dict:
    """Each model on the same text: perplexity, bytes, decoding speed at batch 1, greedy text, and how often its most
    likely next token is the first model's (the float one); a line printed per model."""
    reference, prompt, rows = next(iter(models.values())), tok.encode(args.prompt) or [0], {}
    speeds = decode_speeds(models, prompt, args.new_tokens)
    for name, m in models.items():
        loss, n = score_split(m, ids, device)
        text = tok.decode(m.generate(torch.tensor([prompt]), 40, temperature=0)[0, len(prompt):].tolist())
        top1 = logit_errors(reference, m, ids)["top1_agreement"] if m is not reference else 1.0
        rows[name] = {"ppl": round(math.exp(loss), 3), "tokens_scored": n, "bytes": model_bytes(m),
                      "top1_agreement": top1, "decode_tokens_per_second": speeds[name],
                      "greedy_text": text}
        print(f"{name:34s} ppl {rows[name]['ppl']:9.3f} | {rows[name]['bytes'] / 2**20:7.2f} MiB | top-1 same "
              f"{top1:.3f} | {rows[name]['decode_tokens_per_second']:7.1f} tokens/s | {text[:50]!r}")
    return rows


def plot_report(path: Path, rows: dict, title: str) -> None:
    """Two panels per model: decoding tokens/s at batch 1 (how much faster) and perplexity (what it cost)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 1.6), sharey=True)
    left.barh(names, [rows[n]["decode_tokens_per_second"] for n in names], color="tab:blue")
    left.set_xlabel("greedy decoding, batch 1 (tokens/s)")
    right.barh(names, [rows[n]["ppl"] for n in names], color="tab:orange")
    right.set_xlabel("perplexity (lower is better)")
    base = rows[names[0]]["ppl"]
    right.set_xlim(0.9 * min(r["ppl"] for r in rows.values()), 1.05 * max(r["ppl"] for r in rows.values()))
    right.axvline(base, color="grey", ls=":", lw=1)
    for ax, key, fmt in ((left, "decode_tokens_per_second", "{:.0f}"), (right, "ppl", "{:.2f}")):
        for i, n in enumerate(names):
            ax.text(rows[n][key], i, " " + fmt.format(rows[n][key]), va="center", fontsize=8)
    left.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish_report(script: str, parse, args: argparse.Namespace, argv, ckpt: dict, result: dict, title: str) -> None:
    """Add what every result file carries (the run's name when it is a declared reference run, its command, commit,
    machine, and each model's decoding speed against the first, float32) and write the file with its plot."""
    first = next(iter(result["models"].values()))["decode_tokens_per_second"]
    for row in result["models"].values():
        row["speedup_over_float32"] = round(row["decode_tokens_per_second"] / first, 3)
    model = ckpt["config"]
    result = {"stage": STAGE} | result | {
        "model": model, "params": GPT(GPTConfig(**model)).num_params(), "cpu": platform.processor() or platform.machine(),
        "cpu_native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "config": resolved_config(args)} \
        | provenance(REFERENCE_RUNS, script, parse, args, argv)
    out = Path(args.result or f"runs/{STAGE}/{Path(script).stem}.json")
    write_json(out, result)
    plot_report(out.with_suffix(".png"), result["models"], title)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Quantize a GPT's weights to int8 and measure what changed (Stage 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_report_args(p)
    p.add_argument("--out", default=None, help="write the int8 model here (default: int8.pt beside the checkpoint)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device("cpu")
    model, tok, ckpt, ids = float_model_and_text(args, device)
    tok_file = Path(args.checkpoint).parent / ckpt["data"]["tokenizer"]
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("int8.pt")
    qmodel = quantize_model(load_model(args.checkpoint, device)[0])
    save_quantized(qmodel, tok_file, out, {"path": portable(str(args.checkpoint)), "dataset": ckpt.get("dataset"),
                                          "state": ckpt.get("state", {})})
    models = {"float32": model}
    if cpu_has_native_bf16():   # bf16 weights: half the bytes, and this CPU multiplies them natively
        models["bf16"] = copy.deepcopy(model).to(torch.bfloat16)
    models |= {"int8 (ours, fused kernel)": qmodel,
               "int8 (ours, dequantize)": quantize_model(load_model(args.checkpoint, device)[0], "dequantize"),
               "int8 (torch.ao dynamic)": torch_dynamic_int8(model)}
    rows = compare(models, tok, ids, args, device)
    result = {"checkpoint": portable(str(args.checkpoint)), "int8_checkpoint": portable(str(out)),
              "dataset": ckpt["dataset"], "split": args.split, "scheme": SCHEME, "threads": torch.get_num_threads(),
              "weight_error": weight_errors(model, qmodel), "logit_error": logit_errors(model, qmodel, ids),
              "models": rows}
    worst = max(result["weight_error"].items(), key=lambda kv: kv[1])
    print(f"weights: worst relative error {worst[1]:.4f} ({worst[0]}) | logits: max |diff| "
          f"{result['logit_error']['max_abs']}, top-1 agreement {result['logit_error']['top1_agreement']:.4f} | "
          f"wrote {out}")
    finish_report("stage5_gpt/quantize.py", parse_args, args, argv, ckpt, result,
                  f"{ckpt['dataset']} GPT, {model.num_params() / 1e6:.1f} M parameters: int8 weights against float")


if __name__ == "__main__":
    run_cli(main)
