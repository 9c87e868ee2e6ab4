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
of one process (tests/test_stage5_parallel.py checks it, and against PyTorch's own ZeroRedundancyOptimizer).

Owners are whole parameters, balanced by size (the largest first, each to the rank with the least so far), so a
parameter is never split; the shards are then only as even as the tensors allow. `state_dict` gathers the shards
into the layout of a single process's torch.optim.AdamW (the same parameter order and groups as
GPT.configure_optimizer), so a checkpoint written by a sharded run resumes in one process, and the reverse.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


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
