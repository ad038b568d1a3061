"""Data-parallel training on torch.distributed: process-group setup, DDP and FSDP2 wrapping, collectives.

The trainer runs unchanged in one process; launched by `torchrun`, it reads RANK, LOCAL_RANK and
WORLD_SIZE from the environment, joins a process group (NCCL on CUDA, gloo on CPU), and wraps the model
either in DistributedDataParallel (every rank holds the whole model; gradients are all-reduced, the tied
embedding/head parameter once, because `parameters()` yields it once) or in FSDP2 (`fully_shard`). FSDP2
shards each transformer Block as its own group and then the root module, which keeps `transformer.wte`
and `lm_head` (one shared Parameter) in the same group: torch >= 2.13 refuses a tied parameter split
across groups, and a shared matrix in two groups would be gathered and reduced twice.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class DistContext:
    """Where this process sits in the job: rank, local rank, world size (1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # True when init_distributed created the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints."""
        return self.rank == 0

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over all ranks (the tensor itself in one process)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's obj, in rank order (a one-item list in one process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process job (torchrun sets these variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str = "auto", use_cuda: bool = False) -> DistContext:
    """Join the process group torchrun describes; a single-process context when not launched by it."""
    if not launched_by_torchrun():
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    owns = not dist.is_initialized()
    if owns:
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, owns_group=owns)


def wrap_ddp(model: nn.Module, device: torch.device) -> DDP:
    """DistributedDataParallel over model; the tied parameter is one Parameter, so it is reduced once."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def shard_fsdp(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """FSDP2: fully_shard every Block, then the root (which holds the tied wte/lm_head); returns model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # GPT.forward returns cropped logits, a view; FSDP2 warns that an in-place op on such a view would skip
    # its pre-backward hook. The trainer never modifies the outputs in place, so the warning is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world_size,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip (False) or perform (True) the gradient all-reduce / reduce-scatter of the next backward.

    Gradient accumulation only needs the reduction on its last micro-batch; the others skip it.
    """
    if isinstance(model, DDP):
        model.require_backward_grad_sync = enabled
    elif hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(enabled)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that owns the parameters: torch.compile's and DDP's wrappers removed (FSDP2 has none)."""
    while True:
        if isinstance(model, DDP):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def free_port() -> int:
    """A TCP port on localhost that is free right now (for tests that start process groups)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
