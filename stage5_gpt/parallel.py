"""Training across processes beyond plain data parallelism, from scratch: ZeRO stage 1, the optimizer state sharded.

    torchrun --standalone --nproc_per_node=2 stage5_gpt/train.py --parallel zero1
    optimizer = ShardedAdamW(model, weight_decay=0.1, lr=2e-3, betas=(0.9, 0.99))   # under torch.distributed
    optimizer.state_dict()       # on every rank: the whole optimizer, as one process's AdamW would hold it

Data parallelism (DDP) keeps a whole copy of everything on every process: the weights, their gradients, and AdamW's
two running moments per weight, which alone are twice the weights. ZeRO (Rajbhandari et al. 2020) notices that the
copies are redundant. Its first stage shards the optimizer state: every parameter gets one owner, the rank that keeps
its moments and updates it; after the step, each owner broadcasts its updated parameters to the others. Gradients are
still averaged everywhere by DDP (ZeRO-2 would shard them too, ZeRO-3 the weights: that is FSDP). With R ranks, each
holds about 1/R of the optimizer state, and the arithmetic of the update is exactly AdamW's, so the losses are those
of one process (tests/test_stage5_parallel.py checks it).

Owners are whole parameters, balanced by size (the largest first, each to the rank with the least so far), so a
parameter is never split; the shards are then only as even as the tensors allow. `state_dict` gathers the shards
into the layout of a single process's torch.optim.AdamW (the same parameter order and groups as
GPT.configure_optimizer), so a checkpoint written by a sharded run resumes in one process, and the reverse.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def owners(sizes: list[int], world: int) -> list[int]:
    """Each parameter's owning rank: the largest first, each to the least-loaded rank (ties: the lowest rank)."""
    load, owner = [0] * world, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i], load[rank] = rank, load[rank] + sizes[i]
    return owner


class ShardedAdamW:
    """AdamW whose state is split over the ranks of the default process group (ZeRO-1). Call it like an optimizer:
    zero_grad(), then backward() (DDP averages the gradients), then step()."""

    def __init__(self, model: torch.nn.Module, weight_decay: float, lr: float, betas=(0.9, 0.95)):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        params = [p for p in model.parameters() if p.requires_grad]
        # the order of GPT.configure_optimizer's single-process AdamW: the matrices (decayed), then the rest
        self.order = [p for p in params if p.dim() >= 2] + [p for p in params if p.dim() < 2]
        self.decay = [p.dim() >= 2 for p in self.order]
        self.owner = owners([p.numel() for p in self.order], self.world)
        mine = [i for i in range(len(self.order)) if self.owner[i] == self.rank]
        groups = [{"params": [self.order[i] for i in mine if self.decay[i]], "weight_decay": weight_decay},
                  {"params": [self.order[i] for i in mine if not self.decay[i]], "weight_decay": 0.0}]
        self.inner = torch.optim.AdamW(groups, lr=lr, betas=betas)
        self.local = [i for i in mine if self.decay[i]] + [i for i in mine if not self.decay[i]]  # inner's order

    @property
    def param_groups(self) -> list[dict]:
        """The loop sets each group's "lr" here, as on AdamW. A property: load_state_dict replaces the inner
        optimizer's group dicts, and a list saved at construction would then point at the old ones."""
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.order:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Update the parameters this rank owns, then every owner sends its parameters to the others."""
        self.inner.step()
        for i, p in enumerate(self.order):
            dist.broadcast(p.data, src=self.owner[i])

    def state_bytes(self) -> int:
        """Bytes of optimizer state on this rank (the moments of the parameters it owns)."""
        return sum(t.numel() * t.element_size() for s in self.inner.state.values() for t in s.values()
                   if torch.is_tensor(t) and t.dim() > 0)

    def state_dict(self) -> dict:
        """The whole optimizer, gathered from every rank, in the layout of one process's AdamW. Every rank must call
        it (it communicates); every rank gets the same dict."""
        inner = self.inner.state_dict()
        mine = {self.local[k]: {n: t.cpu() if torch.is_tensor(t) else t for n, t in s.items()}
                for k, s in inner["state"].items()}
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, mine)
        state = {i: s for part in gathered for i, s in part.items()}
        n_decay = sum(self.decay)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": ids}
                  for g, ids in zip(inner["param_groups"], (list(range(n_decay)),
                                                            list(range(n_decay, len(self.order)))))]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, full: dict) -> None:
        """Take this rank's share of a whole AdamW state (written by a sharded run or by one process)."""
        groups = full["param_groups"]
        state = {k: full["state"][i] for k, i in enumerate(self.local) if i in full["state"]}
        inner_groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": ids}
                        for g, ids in zip(groups, ([k for k, i in enumerate(self.local) if self.decay[i]],
                                                   [k for k, i in enumerate(self.local) if not self.decay[i]]))]
        self.inner.load_state_dict({"state": state, "param_groups": inner_groups})


# ----------------------------------------------------------------------------- FSDP2: PyTorch's sharding of everything

def rank_bytes(model: torch.nn.Module, optimizer) -> dict[str, int]:
    """What this process holds, in bytes: its weights, their gradients and the optimizer's state (AdamW's moments; the
    step counters aside). A sharded tensor (FSDP2's DTensor) counts its local shard only, ShardedAdamW the moments of
    the parameters this rank owns. Call it after a step, while the gradients exist."""
    def size(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(model.parameters())
    if isinstance(optimizer, ShardedAdamW):
        state = optimizer.state_bytes()
    else:
        state = sum(size(t) for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return {"weights": sum(size(p) for p in params),
            "gradients": sum(size(p.grad) for p in params if p.grad is not None), "optimizer": state}


def describe_bytes(per_rank: list[dict[str, int]], unit: str | None = None) -> str:
    """One line for the log: each rank's weights + gradients + optimizer state, in `unit` (default: MB, or kB for a
    tiny model)."""
    unit = unit or ("MB" if max(sum(b.values()) for b in per_rank) >= 1e6 else "kB")
    scale = {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    return "; ".join(f"rank {r}: weights {b['weights'] / scale:.2f} + gradients {b['gradients'] / scale:.2f} + "
                     f"optimizer {b['optimizer'] / scale:.2f} = {sum(b.values()) / scale:.2f} {unit}"
                     for r, b in enumerate(per_rank))


def shard_fsdp2(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's FSDP2 (`fully_shard`, ZeRO-3's idea): every Block's parameters, gradients and optimizer state split
    over the ranks, gathered for the Block's forward and backward and freed after; then the rest of the model (the
    tied embedding, the final norm). In place; the module keeps its class and its parameter names."""
    from torch.distributed.fsdp import fully_shard
    for block in model.h:
        fully_shard(block)
    fully_shard(model)
    return model


def adamw_names(model: torch.nn.Module) -> list[str]:
    """The parameter names in the order of GPT.configure_optimizer's AdamW: the matrices, then the rest."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]


class FullState:
    """The model's and the optimizer's state as one process holds them, read from and written into an FSDP2 model:
    what train.py saves and resumes from, so that an FSDP2 checkpoint loads in one process and the reverse. Every rank
    must call state_dict() and load_state_dict() (they communicate); the dicts are whole on every rank."""

    def __init__(self, model: torch.nn.Module, optimizer=None):
        from torch.distributed.checkpoint import state_dict as dcp
        self.model, self.optimizer, self.dcp = model, optimizer, dcp
        self.options = dcp.StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        self.names = adamw_names(model)

    def state_dict(self) -> dict:
        if self.optimizer is None:
            return {k: v.cpu() for k, v in self.dcp.get_model_state_dict(self.model, options=self.options).items()}
        full = self.dcp.get_optimizer_state_dict(self.model, self.optimizer, options=self.options)
        index = {n: i for i, n in enumerate(self.names)}                      # names -> AdamW's indices
        state = {index[n]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                 for n, s in full["state"].items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]}
                  for g in full["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        if self.optimizer is None:
            self.dcp.set_model_state_dict(self.model, sd, options=self.options)
            return
        state = {self.names[i]: s for i, s in sd["state"].items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [self.names[i] for i in g["params"]]}
                  for g in sd["param_groups"]]
        self.dcp.set_optimizer_state_dict(self.model, self.optimizer, {"state": state, "param_groups": groups},
                                          options=self.options)


# ----------------------------------------------------------------------------- tensor parallelism (Megatron-LM)
#
# Each rank holds a slice of every Block: a share of the attention heads (the rows of c_attn that make their q, k and
# v, the columns of c_proj that read them) and a share of the MLP's hidden units (rows of c_fc, columns of c_proj).
# The first matrix of each pair is split by its outputs ("column-parallel"): each rank computes its part from the whole
# input, no communication. The second is split by its inputs ("row-parallel"): each rank's product is a partial sum of
# the output, and one all-reduce adds them. So a Block communicates twice in the forward pass (after attention, after
# the MLP) and twice in the backward pass (the gradients of the Block's two inputs, which every rank used whole): the
# two autograd functions below are Megatron's f and g. Embeddings, norms and the second layers' biases are replicated.

class _CopyToShards(torch.autograd.Function):
    """f: the forward is the identity (every rank reads the whole input); the backward all-reduces the gradient (each
    rank's shard contributed a part of it)."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _SumShards(torch.autograd.Function):
    """g: the forward all-reduces the partial outputs of a row-parallel layer; the backward is the identity."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class TPAttention(torch.nn.Module):
    """This rank's heads of a CausalSelfAttention: c_attn column-parallel (its heads' q, k, v), c_proj row-parallel.
    For training: causal attention over the whole input, no KV cache."""

    def __init__(self, attn, rank: int, world: int):
        super().__init__()
        C, H, D = attn.c_attn.in_features, attn.n_head, attn.head_dim
        if H % world:
            raise ValueError(f"{H} heads do not split evenly over {world} ranks")
        self.n_head, self.head_dim, self.dropout = H // world, D, attn.dropout
        part = slice(rank * self.n_head * D, (rank + 1) * self.n_head * D)           # this rank's heads' dimensions
        rows = [torch.arange(C)[part] + k * C for k in range(3)]                     # in q, in k, in v
        w, b = attn.c_attn.weight.detach(), attn.c_attn.bias
        self.c_attn = _linear(torch.cat([w[r] for r in rows]), None if b is None else torch.cat([b[r] for r in rows]))
        # c_proj's columns for this rank's heads (partial sums), and its bias whole: added once, after the sum
        self.c_proj = _linear(attn.c_proj.weight.detach()[:, part], attn.c_proj.bias)
        self.resid_dropout = attn.resid_dropout
        # how each split tensor sits in the whole model's (TPState, tp_clip_grad_norm): name -> (the dimension it is
        # split along, the indices each rank holds along it); the names and their order are the whole model's
        heads = [slice(r * self.n_head * D, (r + 1) * self.n_head * D) for r in range(world)]
        qkv = [torch.cat([torch.arange(C)[h] + k * C for k in range(3)]) for h in heads]
        self.layout = {"c_attn.weight": (0, qkv), "c_attn.bias": (0, qkv),
                       "c_proj.weight": (1, [torch.arange(C)[h] for h in heads])}

    def forward(self, x, rope=None, cache=None, mask=None):
        from stage5_gpt.model import apply_rope
        x = _CopyToShards.apply(x)
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_head * self.head_dim, dim=2)           # 3 x (B, T, h*D)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))   # (B, h, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = _SumShards.apply(F.linear(y.transpose(1, 2).reshape(B, T, -1), self.c_proj.weight))   # (B, T, C)
        return self.resid_dropout(y if self.c_proj.bias is None else y + self.c_proj.bias)


class TPMLP(torch.nn.Module):
    """This rank's hidden units of an MLP: c_fc column-parallel (for SwiGLU, its share of the gate and of the up
    projection), c_proj row-parallel."""

    def __init__(self, mlp, rank: int, world: int):
        super().__init__()
        self.swiglu = mlp.swiglu
        hidden = mlp.c_proj.in_features
        if hidden % world:
            raise ValueError(f"{hidden} hidden units do not split evenly over {world} ranks")
        part = slice(rank * hidden // world, (rank + 1) * hidden // world)
        rows = [torch.arange(hidden)[part] + k * hidden for k in range(2 if self.swiglu else 1)]   # gate (and up)
        w, b = mlp.c_fc.weight.detach(), mlp.c_fc.bias
        self.c_fc = _linear(torch.cat([w[r] for r in rows]), None if b is None else torch.cat([b[r] for r in rows]))
        self.c_proj = _linear(mlp.c_proj.weight.detach()[:, part], mlp.c_proj.bias)   # the bias: added after the sum
        self.dropout = mlp.dropout
        units = [torch.arange(hidden)[r * hidden // world:(r + 1) * hidden // world] for r in range(world)]
        fc = [torch.cat([u + k * hidden for k in range(2 if self.swiglu else 1)]) for u in units]
        self.layout = {"c_fc.weight": (0, fc), "c_fc.bias": (0, fc), "c_proj.weight": (1, units)}

    def forward(self, x):
        h = self.c_fc(_CopyToShards.apply(x))
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        y = _SumShards.apply(F.linear(h, self.c_proj.weight))
        return self.dropout(y if self.c_proj.bias is None else y + self.c_proj.bias)


def tensor_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every Block's attention and MLP by this rank's slices (in place); the rest stays replicated."""
    rank, world = dist.get_rank(), dist.get_world_size()
    for block in model.h:
        block.attn, block.mlp = TPAttention(block.attn, rank, world), TPMLP(block.mlp, rank, world)
    return model


def tp_layout(model: torch.nn.Module) -> dict[str, tuple[int, list] | None]:
    """Every entry of a tensor-parallel model's state_dict (the whole model's names) -> (the dimension it is split
    along, each rank's indices along it), or None where every rank holds it whole."""
    layout = {}
    for name in model.state_dict():
        layout[name] = None
        for prefix, module in model.named_modules():
            if isinstance(module, (TPAttention, TPMLP)) and name.startswith(prefix + "."):
                layout[name] = module.layout.get(name.removeprefix(prefix + "."))
    return layout


def _gather(t: torch.Tensor, split: tuple[int, list] | None) -> torch.Tensor:
    """The whole tensor from every rank's share of it (all ranks call it)."""
    if split is None:
        return t.detach().cpu()
    dim, index = split
    shares = [torch.empty_like(t) for _ in index]
    dist.all_gather(shares, t.detach().contiguous())
    shape = list(t.shape)
    shape[dim] = sum(len(i) for i in index)
    whole = torch.empty(shape, dtype=t.dtype)
    for share, i in zip(shares, index):
        whole.index_copy_(dim, i, share.cpu())
    return whole


class TPState:
    """A tensor-parallel model's and its AdamW's state as one process holds them (FullState's counterpart for
    tensor_parallel): state_dict() gathers every rank's shares into the whole model's shapes, load_state_dict() takes
    this rank's shares of such a dict, whoever wrote it. The names, and the parameters' order (so AdamW's indices),
    are already the whole model's. Every rank must call both (they communicate)."""

    def __init__(self, model: torch.nn.Module, optimizer=None):
        self.model, self.optimizer, self.layout = model, optimizer, tp_layout(model)
        self.rank = dist.get_rank()
        names = {id(p): n for n, p in model.named_parameters()}
        self.param_names = [] if optimizer is None else \
            [names[id(p)] for g in optimizer.param_groups for p in g["params"]]   # AdamW's index -> name

    def state_dict(self) -> dict:
        if self.optimizer is None:
            return {n: _gather(t, self.layout[n]) for n, t in self.model.state_dict().items()}
        local = self.optimizer.state_dict()
        state = {i: {k: _gather(v, self.layout[self.param_names[i]]) if torch.is_tensor(v) and v.dim() else v
                     for k, v in s.items()} for i, s in local["state"].items()}
        return {"state": state, "param_groups": local["param_groups"]}

    def _share(self, whole: torch.Tensor, name: str) -> torch.Tensor:
        split = self.layout[name]
        return whole if split is None else whole.index_select(split[0], split[1][self.rank])

    def load_state_dict(self, sd: dict) -> None:
        if self.optimizer is None:
            self.model.load_state_dict({n: self._share(sd[n], n) for n in self.layout})
            return
        state = {i: {k: self._share(v, self.param_names[i]) if torch.is_tensor(v) and v.dim() else v
                     for k, v in s.items()} for i, s in sd["state"].items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def tp_clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ for a tensor-parallel model: a split weight's squared gradient norm is summed over the ranks,
    a replicated one counted once (it is the same everywhere)."""
    layout = tp_layout(model)
    device = next(model.parameters()).device                 # nccl reduces tensors on the GPU only
    sharded, replicated = torch.zeros((), device=device), torch.zeros((), device=device)
    for name, p in model.named_parameters():
        if p.grad is not None:
            square = p.grad.detach().float().pow(2).sum()
            if layout[name] is None:
                replicated += square
            else:
                sharded += square
    dist.all_reduce(sharded)
    total = (sharded + replicated).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(scale.to(p.grad.device))
    return total


# ----------------------------------------------------------------------------- pipeline parallelism (GPipe, 1F1B)
#
# The layers are cut into stages, one per rank: the first holds the embedding and the first Blocks, the last holds the
# last Blocks, the final norm and the output layer (a copy of the tied embedding: the two copies receive the sum of
# their gradients, so they stay equal). A batch is cut into m micro-batches that flow through the stages: activations
# are sent forward, their gradients backward. GPipe runs every micro-batch forward, then every one backward; 1F1B
# starts the backward passes as soon as the last stage can, which keeps fewer activations alive. Either way a stage
# waits while the pipeline fills and drains: the "bubble", (p - 1) / (m + p - 1) of the time for p stages.

class PipelineStage(torch.nn.Module):
    """The part of a GPT that rank `rank` of `world` runs: a contiguous share of the Blocks, plus the embedding
    (first stage) or the final norm and output layer (last stage)."""

    def __init__(self, model, rank: int, world: int):
        super().__init__()
        n = len(model.h)
        if n % world:
            raise ValueError(f"{n} Blocks do not split evenly into {world} stages")
        self.rank, self.world, self.cfg = rank, world, model.cfg
        self.first, self.last = rank == 0, rank == world - 1
        self.offset = rank * n // world                         # the whole model's index of this stage's first Block
        self.blocks = torch.nn.ModuleList(model.h[rank * n // world:(rank + 1) * n // world])
        self.rope = (model.rope_cos, model.rope_sin) if model.cfg.pos == "rope" else None
        if self.first:
            self.wte = model.wte
            self.wpe = getattr(model, "wpe", None)
        if self.last:
            self.ln_f = model.ln_f
            self.head = torch.nn.Parameter(model.wte.weight.detach().clone())   # the tied matrix, a copy here

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        """First stage: token ids (b, T) -> hidden (b, T, C); others: hidden in; the last returns the loss (or the
        logits (b, T, vocab) without targets)."""
        T = x.shape[1]
        if self.first:
            h = self.wte(x)
            if self.wpe is not None:
                h = h + self.wpe(torch.arange(T, device=x.device))
        else:
            h = x
        rope = None if self.rope is None else (self.rope[0][:T], self.rope[1][:T])
        for block in self.blocks:
            h = block(h, rope)
        if not self.last:
            return h
        logits = F.linear(self.ln_f(h), self.head)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def tied_parameter(self) -> torch.nn.Parameter | None:
        return self.wte.weight if self.first else self.head if self.last else None

    def whole_name(self, name: str) -> str:
        """This stage's parameter `name` as the whole GPT names it: blocks.0.attn... -> h.<offset>.attn..., and the
        output layer's copy of the tied matrix -> wte.weight."""
        if name.startswith("blocks."):
            index, rest = name.removeprefix("blocks.").split(".", 1)
            return f"h.{self.offset + int(index)}.{rest}"
        return "wte.weight" if name == "head" else name

    def configure_optimizer(self, weight_decay: float, lr: float, betas=(0.9, 0.95), device_type: str = "cpu"):
        """GPT.configure_optimizer's AdamW (decay on the matrices only) over this stage's parameters."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")


def sync_tied_gradients(stage: PipelineStage) -> None:
    """The embedding (first stage) and the output layer (last stage) are one matrix in the model: each copy gets the
    sum of both gradients, so the two copies take the same optimizer step."""
    if stage.world == 1:
        return
    p = stage.tied_parameter()
    device = next(stage.parameters()).device
    grad = p.grad if p is not None and p.grad is not None else \
        torch.zeros(stage.cfg.vocab_size, stage.cfg.n_embd, device=device)
    group = _tied_group(stage.world)            # a collective: every rank creates it, the two ends use it
    if stage.first or stage.last:
        dist.all_reduce(grad, group=group)
        if p is not None:
            p.grad = grad


def pp_clip_grad_norm(stage: PipelineStage, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ for a pipelined model: the stages' squared gradient norms summed over the ranks, the tied
    matrix counted once (its two copies hold the same summed gradient after sync_tied_gradients)."""
    square = torch.zeros((), device=next(stage.parameters()).device)   # nccl reduces tensors on the GPU only
    for name, p in stage.named_parameters():
        if p.grad is not None and not (name == "head" and stage.world > 1):
            square += p.grad.detach().float().pow(2).sum()
    dist.all_reduce(square)
    total = square.sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in stage.parameters():
        if p.grad is not None:
            p.grad.mul_(scale.to(p.grad.device))
    return total


@torch.no_grad()
def pipeline_loss(stage: PipelineStage, x: torch.Tensor, y: torch.Tensor) -> float:
    """The mean loss of a batch through the stages, forward only (evaluation): every rank gets it."""
    rank, world = stage.rank, stage.world
    if stage.first:
        inp = x
    else:
        inp = torch.empty(x.shape[0], x.shape[1], stage.cfg.n_embd, device=x.device)
        dist.recv(inp, src=rank - 1)
    out = stage(inp, y if stage.last else None)
    if not stage.last:
        dist.send(out, dst=rank + 1)
    loss = out.detach().reshape(()) if stage.last else torch.zeros((), device=x.device)
    dist.broadcast(loss, src=world - 1)
    return float(loss)


class PPState:
    """A pipelined model's and its AdamW's state as one process holds them: state_dict() collects every stage's
    parameters under the whole GPT's names (and AdamW's state under the whole model's GPT.configure_optimizer indices),
    load_state_dict() takes this stage's part of such a dict. Every rank must call both (they communicate)."""

    def __init__(self, stage: PipelineStage, optimizer=None):
        from stage5_gpt.model import GPT
        self.stage, self.optimizer = stage, optimizer
        with torch.device("meta"):                       # the whole model's names and order, no memory
            whole = [(n, p.dim()) for n, p in GPT(stage.cfg).named_parameters()]
        order = [n for n, d in whole if d >= 2] + [n for n, d in whole if d < 2]   # configure_optimizer's order
        self.index = {n: i for i, n in enumerate(order)}
        decayed = sum(d >= 2 for _, d in whole)
        self.groups = [list(range(decayed)), list(range(decayed, len(whole)))]   # its two groups' indices
        names = {id(p): n for n, p in stage.named_parameters()}
        self.local = [] if optimizer is None else [names[id(p)] for g in optimizer.param_groups for p in g["params"]]

    def _everyone(self, mine: dict) -> dict:
        parts = [None] * self.stage.world
        dist.all_gather_object(parts, mine)
        return {k: v for part in parts for k, v in part.items()}

    def state_dict(self) -> dict:
        skip = "head" if self.stage.world > 1 else None     # the tied copy: the first stage sends wte.weight
        if self.optimizer is None:
            whole = self._everyone({self.stage.whole_name(n): t.detach().cpu()
                                    for n, t in self.stage.state_dict().items() if n != skip})
            return whole | {"lm_head.weight": whole["wte.weight"]}
        local = self.optimizer.state_dict()
        state = self._everyone({self.index[self.stage.whole_name(self.local[i])]:
                                {k: v.cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                                for i, s in local["state"].items() if self.local[i] != skip})
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": params}
                  for g, params in zip(local["param_groups"], self.groups)]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        if self.optimizer is None:
            self.stage.load_state_dict({n: sd[self.stage.whole_name(n)] for n in self.stage.state_dict()})
            return
        state = {i: sd["state"][self.index[self.stage.whole_name(n)]] for i, n in enumerate(self.local)
                 if self.index[self.stage.whole_name(n)] in sd["state"]}
        mine = [len(g["params"]) for g in self.optimizer.param_groups]
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": list(range(sum(mine[:j]), sum(mine[:j + 1])))}
                  for j, g in enumerate(sd["param_groups"])]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})


_TIED: dict = {}


def _tied_group(world: int):
    if world not in _TIED:                       # every rank must take part in creating a group
        _TIED[world] = dist.new_group([0, world - 1])
    return _TIED[world]


def pipeline_step(stage: PipelineStage, x: torch.Tensor, y: torch.Tensor, micro: int,
                  schedule: str = "1f1b") -> tuple[float, dict]:
    """One training step's forward and backward passes over `micro` micro-batches, GPipe's or 1F1B's order. -> (the
    batch's mean loss, on every rank; {"busy": seconds computing, "wall": seconds in all}). The gradients are left
    in the parameters, summed as one process would (each micro-batch's loss is scaled by 1/micro)."""
    import time
    rank, world = stage.rank, stage.world
    xs, ys = x.chunk(micro), y.chunk(micro)
    b, T, C = xs[0].shape[0], x.shape[1], stage.cfg.n_embd
    inputs, outputs, losses, busy = {}, {}, [], 0.0
    sends = []                                  # isend: a stage never waits for its neighbour to take a tensor
    t0 = time.perf_counter()

    def forward(i):
        nonlocal busy
        if stage.first:
            inp = xs[i]
        else:
            inp = torch.empty(b, T, C, device=x.device)
            dist.recv(inp, src=rank - 1)
            inp.requires_grad_(True)
        t = time.perf_counter()
        out = stage(inp, ys[i] if stage.last else None)
        busy += time.perf_counter() - t
        inputs[i], outputs[i] = inp, out
        if stage.last:
            losses.append(out.detach())
        else:
            sends.append((dist.isend(out.detach(), dst=rank + 1), out))

    def backward(i):
        nonlocal busy
        out = outputs.pop(i)
        if stage.last:
            t = time.perf_counter()
            (out / micro).backward()
        else:
            grad = torch.empty(b, T, C, device=x.device)
            dist.recv(grad, src=rank + 1)
            t = time.perf_counter()
            out.backward(grad)
        busy += time.perf_counter() - t
        inp = inputs.pop(i)
        if not stage.first:
            sends.append((dist.isend(inp.grad, dst=rank - 1), inp))

    if schedule == "gpipe":
        for i in range(micro):
            forward(i)
        for i in range(micro):
            backward(i)
    else:                                       # 1F1B: warm up, then one forward and one backward in turn, cool down
        warmup = min(world - rank - 1, micro)
        for i in range(warmup):
            forward(i)
        for i in range(micro - warmup):
            forward(warmup + i)
            backward(i)
        for i in range(micro - warmup, micro):
            backward(i)
    for work, _ in sends:
        work.wait()
    sync_tied_gradients(stage)
    loss = torch.stack(losses).mean() if stage.last else torch.zeros((), device=x.device)
    dist.broadcast(loss, src=world - 1)
    return float(loss), {"busy": busy, "wall": time.perf_counter() - t0}
