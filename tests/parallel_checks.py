"""Run under torchrun by tests/test_stage5_parallel.py (not a test module itself): tensor parallelism from scratch
against one process and against PyTorch's torch.distributed.tensor.parallel, on the same weights.

    torchrun --standalone --nproc_per_node=2 tests/parallel_checks.py tensor
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from stage5_gpt.model import GPT, GPTConfig  # noqa: E402
from stage5_gpt.parallel import describe_bytes, rank_bytes, tensor_parallel, tp_clip_grad_norm  # noqa: E402


def print_bytes(scheme: str, model: torch.nn.Module, optimizer, whole: torch.nn.Module, whole_optimizer) -> None:
    """Rank 0 prints every rank's weights + gradients + optimizer state beside one process's (the whole model)."""
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, rank_bytes(model, optimizer))
    if dist.get_rank() == 0:
        print(f"{scheme}, held per process: {describe_bytes(per_rank, 'kB')} | one process: "
              f"{describe_bytes([rank_bytes(whole, whole_optimizer)], 'kB').removeprefix('rank 0: ')}")


def check_tensor(mlp: str) -> None:
    """20 AdamW steps, clipped, of a tiny GPT: tensor-parallel over the ranks, and whole in this process."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, pos="rope", mlp=mlp)
    whole = GPT(cfg)
    sharded = tensor_parallel(copy.deepcopy(whole))
    opts = [m.configure_optimizer(0.1, 3e-3, (0.9, 0.99)) for m in (whole, sharded)]
    g = torch.Generator().manual_seed(1)                   # the same batches on every rank: TP ranks share the data
    worst = 0.0
    for step in range(20):
        x = torch.randint(0, 50, (4, 16), generator=g)
        y = torch.randint(0, 50, (4, 16), generator=g)
        losses = []
        for model, opt, clip in ((whole, opts[0], torch.nn.utils.clip_grad_norm_), (sharded, opts[1], tp_clip_grad_norm)):
            opt.zero_grad()
            _, loss = model(x, y)
            loss.backward()
            clip(model.parameters() if clip is torch.nn.utils.clip_grad_norm_ else model, 0.5)
            opt.step()
            losses.append(loss.item())
        worst = max(worst, abs(losses[0] - losses[1]) / losses[0])
    assert worst <= 1e-5, f"tensor parallel ({mlp}): relative loss difference {worst}"
    print_bytes(f"tensor parallel ({mlp})", sharded, opts[1], whole, opts[0])
    print(f"rank {dist.get_rank()}: tensor parallel ({mlp}) = one process over 20 steps (worst {worst:.1e})")


def check_against_pytorch() -> None:
    """The MLP's column- then row-parallel split, ours against torch.distributed.tensor.parallel's on the same
    weights (a GELU MLP: its c_fc rows are the hidden units, which both split contiguously)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from stage5_gpt.model import MLP
    from stage5_gpt.parallel import TPMLP
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=32, mlp="gelu"))
    ours = TPMLP(copy.deepcopy(mlp), dist.get_rank(), dist.get_world_size())
    theirs = parallelize_module(copy.deepcopy(mlp), init_device_mesh("cpu", (dist.get_world_size(),)),
                                {"c_fc": ColwiseParallel(), "c_proj": RowwiseParallel()})
    x = torch.randn(3, 5, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = ours(x), theirs(x2)
    assert torch.allclose(a, b, atol=1e-5), "forward differs from torch.distributed.tensor.parallel"
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5), "input gradient differs from torch.distributed.tensor.parallel"
    print(f"rank {dist.get_rank()}: TPMLP = torch.distributed.tensor.parallel (forward and input gradient)")


def check_pipeline(schedule: str, micro: int = 4) -> None:
    """20 clipped AdamW steps of a tiny GPT cut into one stage per rank, micro-batched, against the whole model."""
    from stage5_gpt.parallel import PipelineStage, pipeline_step, pp_clip_grad_norm
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=4, n_head=2, n_embd=32, pos="rope", mlp="swiglu")
    whole = GPT(cfg)
    stage = PipelineStage(copy.deepcopy(whole), dist.get_rank(), dist.get_world_size())
    opts = [m.configure_optimizer(0.1, 3e-3, (0.9, 0.99)) for m in (whole, stage)]
    g = torch.Generator().manual_seed(1)
    worst, busy, wall = 0.0, 0.0, 0.0
    for step in range(20):
        x = torch.randint(0, 50, (8, 16), generator=g)
        y = torch.randint(0, 50, (8, 16), generator=g)
        opts[0].zero_grad()
        _, loss = whole(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(whole.parameters(), 0.5)
        opts[0].step()
        opts[1].zero_grad()
        piped, times = pipeline_step(stage, x, y, micro, schedule)
        pp_clip_grad_norm(stage, 0.5)
        opts[1].step()
        worst = max(worst, abs(loss.item() - piped) / loss.item())
        busy, wall = busy + times["busy"], wall + times["wall"]
    assert worst <= 1e-5, f"pipeline ({schedule}): relative loss difference {worst}"
    print_bytes(f"pipeline ({schedule})", stage, opts[1], whole, opts[0])
    p_, m = dist.get_world_size(), micro
    print(f"rank {dist.get_rank()}: pipeline ({schedule}) = one process over 20 steps (worst {worst:.1e}); idle "
          f"{1 - busy / wall:.2f} of the time (GPipe's bubble alone: {(p_ - 1) / (m + p_ - 1):.2f})")


def check_pipeline_against_pytorch(micro: int = 4) -> None:
    """Our 1F1B step against torch.distributed.pipelining's Schedule1F1B running the same stage modules on the same
    batch: the same loss and the same gradients in every parameter of every stage."""
    import torch.nn.functional as F
    from torch.distributed.pipelining import PipelineStage as TorchStage, Schedule1F1B

    from stage5_gpt.parallel import PipelineStage, pipeline_step, sync_tied_gradients
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    whole = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=4, n_head=2, n_embd=32, pos="rope", mlp="swiglu"))
    ours, theirs = PipelineStage(copy.deepcopy(whole), rank, world), PipelineStage(copy.deepcopy(whole), rank, world)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 50, (8, 16), generator=g), torch.randint(0, 50, (8, 16), generator=g)
    loss, _ = pipeline_step(ours, x, y, micro, "1f1b")

    def loss_fn(logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    schedule = Schedule1F1B(TorchStage(theirs, rank, world, torch.device("cpu")), n_microbatches=micro,
                            loss_fn=loss_fn)   # it scales each micro-batch's gradients by 1/micro, as ours does
    losses = []
    if theirs.first:
        schedule.step(x)
    else:
        schedule.step(target=y, losses=losses)
    sync_tied_gradients(theirs)               # PyTorch does not know the two ends hold one matrix
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), f"{name}: gradients differ from torch.distributed.pipelining"
    if theirs.last:
        assert abs(torch.stack(losses).mean().item() - loss) < 1e-6, "loss differs from torch.distributed.pipelining"
    print(f"rank {rank}: pipeline (1f1b) = torch.distributed.pipelining Schedule1F1B (loss and gradients)")


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        if sys.argv[1] == "tensor":
            check_tensor("gelu")
            check_tensor("swiglu")
            check_against_pytorch()
        elif sys.argv[1] == "pipeline":
            check_pipeline("gpipe")
            check_pipeline("1f1b")
            check_pipeline_against_pytorch()
    finally:
        dist.destroy_process_group()
