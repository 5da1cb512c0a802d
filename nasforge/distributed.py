"""Multi-process training with PyTorch's own DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node N -m nasforge train ...`` starts N processes with ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` set; :func:`init_distributed` joins them into one process group (``nccl`` on CUDA, ``gloo`` on
CPU). Every rank draws the same shuffled order of the training set and takes its contiguous share of each global
batch (a deterministic distributed sampler), so N processes at global batch B compute exactly what one process
computes when it accumulates the gradients of N micro-batches of B/N (``micro_batches=N``).
Only rank 0 validates and writes checkpoints; the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nasforge.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "resolve_device"]


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``"auto"``/``None`` -> this rank's GPU if CUDA is available, else CPU; ``"cuda"`` -> ``cuda:<local rank>``."""
    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no usable CUDA GPU; use --device cpu")
    return dev


@dataclass
class DistContext:
    """Where this process sits in a (possibly single-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` itself in one process; a DDP wrapper (unused parameters allowed: subnets skip layers)."""
        if not self.is_distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP

        # slices of elastic weights give gradients of other strides than DDP's buckets: a copy, not an error
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(net, device_ids=ids, find_unused_parameters=True)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[None] | None:
        """DDP's ``no_sync`` factory for gradient accumulation across a step's subnets (``None`` if not DDP)."""
        return model.no_sync if self.is_distributed and hasattr(model, "no_sync") else None  # type: ignore[return-value]

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (the batch size must divide by the world size)."""
        if not self.is_distributed:
            return x
        return x.chunk(self.world_size)[self.rank]

    def mean(self, value: float) -> float:
        """Average of a float over ranks."""
        if not self.is_distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks (in place; itself in one process)."""
        if self.is_distributed:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on rank 0 first (e.g. a cache), then on the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def init_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment, or a single-process context without it.

    The backend is ``nccl`` when training on CUDA and ``gloo`` on CPU. Safe to call when the group already exists.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)
