"""One training epoch of the shared loop: batches from the data stream, subnets from the trainer, one
:func:`distill_step` per batch, with mixed precision, throughput and data-wait accounting, and mid-epoch
checkpoints that a resumed run continues from with the same remaining batches."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nasforge.distributed import DistContext
from nasforge.supernets.arch import SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.trainers.config import Phase, StepInfo
from nasforge.supernets.trainers.steps import distill_step

if TYPE_CHECKING:
    from nasforge.supernets.trainers.base import Trainer

__all__ = ["EpochProgress", "EpochJob", "run_epoch", "batch_layout", "amp_dtype", "make_scaler"]

StepCallback = Callable[[int, int, int, dict[str, float]], None]
SaveCallback = Callable[[int, "EpochProgress"], None]


@dataclass
class EpochProgress:
    """What an epoch has done so far; saved in a mid-epoch checkpoint and continued after a resume."""

    losses: list[float] = field(default_factory=list)
    images: int = 0
    wait_s: float = 0.0
    elapsed_s: float = 0.0
    bad: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "images": self.images, "wait_s": self.wait_s,
                "elapsed_s": self.elapsed_s, "bad": list(self.bad)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EpochProgress:
        data = data or {}
        return cls([float(v) for v in data.get("losses", [])], int(data.get("images", 0)),
                   float(data.get("wait_s", 0.0)), float(data.get("elapsed_s", 0.0)), list(data.get("bad", [])))

    def mean_loss(self) -> float:
        """This process's mean training loss over the epoch so far (NaN before the first step)."""
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")

    def speed(self, world: int = 1) -> dict[str, float]:
        """Images per second over all processes and the fraction of the time spent waiting for data."""
        elapsed = max(self.elapsed_s, 1e-9)
        return {"images_per_s": self.images * world / elapsed, "data_wait": min(1.0, self.wait_s / elapsed)}


@dataclass
class EpochJob:
    """Where an epoch sits in the run: the phase, the epoch inside it and the step to start from."""

    net: Supernet
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: Any
    ctx: DistContext
    space: SearchSpace
    phase: Phase
    phase_index: int
    epoch: int
    steps_per_epoch: int
    global_epoch: int
    start_step: int = 0
    progress: EpochProgress = field(default_factory=EpochProgress)
    scaler: torch.amp.GradScaler | None = None


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``None`` for ``fp32``)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``fp16`` training (``None`` otherwise: bf16 has float32's range)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def batch_layout(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """``x`` (an image batch) in the layout that ``memory_format`` asks for (see :class:`TrainHyperparams`):
    ``auto`` and ``channels_last`` give channels-last (``auto`` only reaches here for families that opt in)."""
    if x.dim() != 4 or memory_format not in ("auto", "channels_last"):
        return x.contiguous() if memory_format == "contiguous" else x
    return x.contiguous(memory_format=torch.channels_last)


def resolution_picker(space: SearchSpace, epoch_seed: int) -> Callable[[int], int] | None:
    """One input resolution per global batch, drawn from the space's ``r`` choices with a seed made of the epoch
    and the batch index (Once-for-All's scheme: every process and loader worker agrees without talking)."""
    if "r" not in space.names:
        return None
    choices = space.dim("r").choices

    def pick(batch: int) -> int:
        return random.Random(epoch_seed * 1_000_033 + batch * 31 + 7).choice(choices)

    return pick


def run_epoch(trainer: Trainer, job: EpochJob, on_step: StepCallback | None = None,
              save: SaveCallback | None = None) -> dict[str, Any]:
    """Train one epoch (from ``job.start_step``); returns the epoch's history record (without validation)."""
    from nasforge.data import EpochPlan, StreamStats

    cfg, ctx, net = trainer.config, job.ctx, job.net
    net.train()
    epoch_seed = cfg.seed * 100_003 + job.phase_index * 1_009 + job.epoch
    teacher = trainer.teacher if job.phase.distill else None
    layout = cfg.memory_format if net.channels_last_training or cfg.memory_format != "auto" else "contiguous"
    picker = resolution_picker(job.space, epoch_seed) if trainer.shared_resolution else None
    plan = EpochPlan(len(job.data.train), cfg.batch_size, epoch_seed, ctx.rank, ctx.world_size, job.start_step,
                     picker)
    stats, progress = StreamStats(), job.progress
    passes = trainer._passes
    t0, seen = time.perf_counter(), [0, 0]
    with torch.random.fork_rng(devices=[]):
        for i, x, y in job.data.train.epoch_stream(plan, ctx.device, stats):
            step = job.epoch * job.steps_per_epoch + i
            lr = job.phase.lr_at(step, job.steps_per_epoch)
            for group in job.optimizer.param_groups:
                group["lr"] = lr
            rng = random.Random(epoch_seed * 100_000 + i)  # same subnets on every rank, and after a resume
            archs = trainer.step_archs(job.space, rng, job.phase)
            weights = trainer.subnet_weights(StepInfo(job.phase_index, job.phase, job.epoch, step,
                                                      job.steps_per_epoch, lr), archs)
            if picker is not None:
                archs = [a.replace(r=int(x.shape[-1])) for a in archs]
            loss = distill_step(
                net, job.optimizer, batch_layout(x, layout), y, archs, teacher, model=job.model,
                micro_batches=cfg.micro_batches, no_sync=ctx.no_sync(job.model), step_seed=epoch_seed * 100_000 + i,
                first_chunk=ctx.rank * cfg.micro_batches, loss_fn=trainer.subnet_loss,
                inplace_teacher=trainer.inplace_teacher,
                resolution_of=None if trainer.shared_resolution else net.resolution,
                weights=weights, aggregation=trainer.aggregation, amp_dtype=amp_dtype(cfg.precision),
                scaler=job.scaler, before_subnet=trainer.prepare_subnet,
            )
            progress.losses.append(loss)
            passes["subnet"] = passes.get("subnet", 0) + len(archs)  # cost in sub-model passes per global batch
            if teacher is not None:
                passes["teacher"] = passes.get("teacher", 0) + 1
            _account(progress, stats, t0, seen)
            t0 = time.perf_counter()
            if on_step is not None and ctx.is_main:
                on_step(i + 1, job.steps_per_epoch, job.global_epoch,
                        {**progress.speed(ctx.world_size), "loss": progress.mean_loss()})
            if save is not None and cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 \
                    and i + 1 < job.steps_per_epoch:
                save(i + 1, progress)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    _account(progress, stats, t0, seen)
    return _record(job, progress, passes)


def _account(progress: EpochProgress, stats: Any, t0: float, seen: list[int]) -> None:
    """Move what the stream did since ``t0`` into ``progress``; ``seen`` holds the stream's (cumulative) image
    and bad-image counts already moved."""
    progress.elapsed_s += time.perf_counter() - t0
    progress.wait_s += stats.wait_s
    stats.wait_s = 0.0
    progress.images += stats.images - seen[0]
    progress.bad.extend(stats.bad[seen[1]:])
    seen[:] = [stats.images, len(stats.bad)]


def _record(job: EpochJob, progress: EpochProgress, passes: dict[str, int]) -> dict[str, Any]:
    ctx = job.ctx
    loss = ctx.mean(sum(progress.losses) / max(1, len(progress.losses)))
    record = {"phase": job.phase.name, "phase_epoch": job.epoch + 1, "loss": loss,
              "lr": job.optimizer.param_groups[0]["lr"], "passes": dict(passes)}
    speed = progress.speed(ctx.world_size)
    record["images_per_s"] = round(speed["images_per_s"], 2)
    record["data_wait"] = round(ctx.mean(speed["data_wait"]), 4)
    bad = ctx.all_reduce_sum(torch.tensor([float(len(progress.bad))], device=ctx.device))
    if float(bad.item()) or progress.bad:
        record["bad_images"] = int(bad.item())
    return record

