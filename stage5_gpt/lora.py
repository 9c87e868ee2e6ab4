"""LoRA from scratch (Hu et al. 2021): adapt a frozen GPT by training two thin matrices beside some of its layers.

    cfg = LoRAConfig(rank=8, alpha=16, dropout=0.05, targets=("c_attn", "c_proj", "c_fc"))
    wrapped = add_lora(model, cfg)        # the chosen nn.Linear layers become LoRALinear; every base weight frozen
    count_parameters(model)               # {"trainable": ..., "frozen": ...}
    save_adapter(model, "adapter.pt")     # only A and B (and which base model they belong to)
    load_adapter(model, "adapter.pt")     # refuses an adapter trained on another base model
    merge(model); unmerge(model)          # fold B @ A into the base weights (no extra cost per token), and back

Full fine-tuning changes every weight W (d_out x d_in) by some dW. LoRA bets that the change a new task needs has low
rank: dW = B @ A, with A (r x d_in) and B (d_out x r) and r much smaller than either side. A layer then computes

    y = W x + (alpha / r) * B (A x)          W frozen; only A and B learn

- B starts at zero, so the adapted model starts exactly as the base model; A starts random (Kaiming-uniform, as
  nn.Linear initialises its weights), so the gradient reaching B is not zero.
- alpha / r scales the update. Doubling r doubles the number of terms summed in B @ A; dividing by r keeps the size of
  the update (and so a good learning rate) roughly the same when r changes. alpha is "how loud" the adapter speaks.
- Only A and B need gradients and optimizer state: for a 256-wide layer, r = 8 trains 2 * 8 * 256 numbers instead of
  256 * 256 (1/16), and AdamW keeps two more numbers per trained one.
- Merging adds (alpha / r) * B @ A into W: the merged model is a plain GPT again, as fast as the base, and unmerging
  subtracts it back (up to float rounding). An unmerged adapter can be switched off, swapped, or saved on its own: a
  file of a few hundred kilobytes that names the base model it was trained on.

`peft` (Hugging Face) is the production implementation; tests/test_stage5_lora.py copies the same base weights and the
same A and B into peft's LoRA and checks that both give the same outputs, merged and unmerged.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.common import UserError, load_checkpoint, save_checkpoint

STAGE = "stage5_gpt"
KIND = "lora_adapter"


@dataclass
class LoRAConfig:
    rank: int = 8                       # r: the width of the bottleneck A -> B
    alpha: float = 16.0                 # the update is scaled by alpha / r
    dropout: float = 0.0                # dropout on the adapter's input (the base path never sees it)
    targets: tuple[str, ...] = field(default=("c_attn", "c_proj"))  # layers to adapt: the ends of module names,
                                        # "c_attn" (q, k, v), "c_proj" (attention and MLP outputs), "c_fc" (MLP in),
                                        # or longer ("attn.c_proj") to pick one of the two c_proj


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = base(x) + (alpha / r) * B(A(dropout(x)))."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not 1 <= rank <= min(base.in_features, base.out_features):
            raise UserError(f"LoRA rank {rank}: it must be from 1 to the layer's smaller side "
                            f"({min(base.in_features, base.out_features)})")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))    # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))   # (d_out, r): zero, so dW starts at 0
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))              # as nn.Linear (and peft) initialise
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the base weight: (alpha / r) * B @ A, (d_out, d_in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)                                                     # (..., d_out)
        if self.merged:                                                      # the update is already inside W
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling  # x -> (.., r) -> out

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, cfg: LoRAConfig) -> dict[str, LoRALinear]:
    """Freeze every weight of `model`, then put a LoRALinear around each nn.Linear whose name ends with one of
    cfg.targets (a whole name component: "c_proj" matches "h.0.attn.c_proj", never "xc_proj"). -> the new layers."""
    if lora_layers(model):
        raise UserError("this model already has LoRA layers: merge or remove them first")
    fingerprint = base_fingerprint(model)                 # of the weights as they are, before any adapter
    model.requires_grad_(False)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = {}
    for target in cfg.targets:
        found = [n for n in linears if n == target or n.endswith("." + target)]
        if not found:
            shown = sorted({n.split(".", 2)[-1] for n in linears})
            raise UserError(f"LoRA target {target!r} is not a linear layer of this model; its linear layers end with: "
                            f"{', '.join(shown)}")
        chosen.update({n: linears[n] for n in found})
    wrapped = {}
    for name, linear in chosen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = LoRALinear(linear, cfg.rank, cfg.alpha, cfg.dropout).to(linear.weight.device)
        setattr(parent, child, layer)
        wrapped[name] = layer
    model.lora_config, model.lora_base_fingerprint = cfg, fingerprint
    return wrapped


def merge(model: nn.Module) -> None:
    """Fold every adapter into its base weight: the model computes the same, at the base model's cost."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the plain model the adapters amount to (each base weight + its update, under the base layer's
    own name), without touching `model`: what a checkpoint that any GPT loader reads holds."""
    layers = lora_layers(model)
    out = {}
    for key, t in model.state_dict().items():
        if ".lora_" in key:
            continue
        name = key.replace(".base.", ".")
        owner = key.rsplit(".base.", 1)[0] if ".base." in key else None
        if owner in layers and key.endswith(".base.weight") and not layers[owner].merged:
            t = t + layers[owner].delta_weight().detach().to(t.dtype)
        out[name] = t
    return out


def count_parameters(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable}


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the base model's own weights: what an adapter file names as the model it belongs to. add_lora takes
    it before any adapter exists and keeps it, so merging (which changes the base weights) does not change it."""
    if getattr(model, "lora_base_fingerprint", None):
        return model.lora_base_fingerprint
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_adapter(model: nn.Module, path: str | Path, base_name: str = "") -> None:
    """Only the adapters (every A and B) and their config, with the fingerprint of the base model they adapt."""
    layers = lora_layers(model)
    if not layers:
        raise UserError("this model has no LoRA layers to save")
    tensors = {f"{name}.{w}": getattr(layer, w).detach().cpu() for name, layer in layers.items()
               for w in ("lora_A", "lora_B")}
    save_checkpoint({"stage": STAGE, "kind": KIND, "config": asdict(model.lora_config), "model": tensors,
                     "base": {"fingerprint": base_fingerprint(model), "name": base_name}}, path)


def load_adapter(model: nn.Module, path: str | Path) -> LoRAConfig:
    """Put a saved adapter on `model` (adding the LoRA layers if it has none): refused, in one line, when the model is
    not the base model the adapter was trained on."""
    ckpt = load_checkpoint(path, stage=STAGE, kind=KIND)
    cfg = LoRAConfig(**{**ckpt["config"], "targets": tuple(ckpt["config"]["targets"])})
    if any(layer.merged for layer in lora_layers(model).values()):
        raise UserError("this model's adapters are merged into its weights: unmerge them before loading another")
    base = ckpt["base"]
    if base_fingerprint(model) != base["fingerprint"]:
        raise UserError(f"{path} adapts another base model ({base.get('name') or 'unnamed'}, fingerprint "
                        f"{base['fingerprint']}); this model's fingerprint is {base_fingerprint(model)}")
    if not lora_layers(model):
        add_lora(model, cfg)
    layers = lora_layers(model)
    for key, t in ckpt["model"].items():
        name, _, w = key.rpartition(".")
        if name not in layers or getattr(layers[name], w).shape != t.shape:
            raise UserError(f"{path} does not fit this model's LoRA layers ({key}, {tuple(t.shape)})")
        with torch.no_grad():
            getattr(layers[name], w).copy_(t)
    return cfg
