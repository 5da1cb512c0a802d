"""The shared training loop of weight-sharing trainers, their config, and the trainer registry.

A trainer only decides which subnets run in a step and what each one's loss is; the loop (optimizer, learning
rate schedule, checkpoints, resume, per-epoch validation of the corner subnets) is shared.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.distributed import DistContext
from nasforge.errors import ConfigError
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.checkpoint import save_checkpoint
from nasforge.supernets.trainers.config import (
    Phase,
    StepInfo,
    TrainConfig,
    TrainerOptions,
    TrainHyperparams,
)
from nasforge.supernets.trainers.epoch import EpochJob, EpochProgress, batch_layout, make_scaler, run_epoch
from nasforge.supernets.trainers.resume import ResumePoint, restore
from nasforge.supernets.trainers.steps import build_optimizer, distill_loss
from nasforge.supernets.trainers.validation import validate_corners

__all__ = ["Phase", "StepInfo", "TrainConfig", "TrainHyperparams", "Trainer", "TrainerOptions", "register_trainer",
           "list_trainers", "get_trainer", "trainer_class", "EpochCallback", "StepCallback", "batch_layout"]

EpochCallback = Callable[[dict[str, Any]], None]
#: (step in epoch, steps per epoch, global epoch index from 0, {"images_per_s": ..., "data_wait": ..., "loss": the
#: epoch's mean loss so far on this process}), called on rank 0 after every step
StepCallback = Callable[[int, int, int, dict[str, float]], None]


class Trainer(ABC):
    """Base class: subclasses define their phases (:meth:`phases`), the subnets of a step
    (:meth:`step_archs`) and their losses (:meth:`subnet_loss`); the loop is shared.
    """

    name: ClassVar[str] = ""
    #: the detached logits of ``step_archs()[0]`` teach the other subnets of the step (sandwich rule)
    inplace_teacher: ClassVar[bool] = False
    #: all subnets of a step share one input resolution, sampled per batch (Once-for-All); otherwise each
    #: subnet runs at its own ``r``
    shared_resolution: ClassVar[bool] = False
    #: the trainer's own options (``TrainConfig.trainer_options``); none by default
    Options: ClassVar[type[TrainerOptions]] = TrainerOptions
    #: one optimizer (and its momentum) carried across phases instead of a fresh one per phase
    keep_optimizer: ClassVar[bool] = False

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.options = self.Options.from_dict(config.trainer_options, self.name)
        self.teacher: nn.Module | None = None
        self._passes: dict[str, int] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None

    # -- what subclasses define -------------------------------------------------------------------------------
    def phases(self, space: SearchSpace) -> list[Phase]:
        """The schedule; by default one phase from the config's ``epochs``, ``lr`` and ``warmup_epochs``."""
        cfg = self.config
        return [Phase("train", cfg.epochs, cfg.lr, min(cfg.warmup_epochs, cfg.epochs))]

    @abstractmethod
    def step_archs(self, space: SearchSpace, rng: random.Random, phase: Phase) -> list[Architecture]:
        """Architectures to run in one step of ``phase`` (``space`` is already restricted to the phase)."""

    def subnet_loss(self, index: int, logits: torch.Tensor, targets: torch.Tensor,
                    teacher: torch.Tensor | None) -> torch.Tensor:
        """Loss of the ``index``-th subnet of a step (``teacher``: detached teacher logits, if any)."""
        cfg = self.config
        return distill_loss(logits, targets, teacher, cfg.label_smoothing, cfg.kd_weight)

    def subnet_weights(self, step: StepInfo, archs: list[Architecture]) -> list[float] | None:
        """Gradient weight of each subnet of a step (``None``: all 1). The summed gradient is
        ``sum_s w_s * grad L_s``, so a weight is the subnet's learning rate relative to the step's."""
        return None

    @property
    def aggregation(self) -> str:
        """How the weighted subnet gradients combine: ``sum``, or ``mean`` (per weight element, divided by the
        summed weights of the subnets that use it)."""
        return "sum"

    def prepare_subnet(self, index: int, arch: Architecture) -> None:  # noqa: B027
        """Hook run before the forward pass of the ``index``-th subnet of a step (it is already active)."""

    def start_phase(self, net: Supernet, index: int, phase: Phase, *, fresh: bool,  # noqa: B027
                    checkpoint_dir: Path | None) -> None:
        """Hook run before the first epoch of a phase (``fresh``) or when resuming inside it."""

    def end_phase(self, net: Supernet, index: int, phase: Phase) -> None:  # noqa: B027
        """Hook run after the last epoch of a phase."""

    def phase_checkpoint_name(self, index: int, phase: Phase, n_phases: int) -> str | None:
        """File name of the checkpoint written when phase ``index`` ends (``None``: none)."""
        return f"phase-{index + 1}-{phase.name}.pt" if n_phases > 1 else None

    def total_epochs(self, space: SearchSpace) -> int:
        """Epochs over all phases."""
        return sum(p.epochs for p in self.phases(space))

    # -- the shared loop -------------------------------------------------------------------------------------
    def fit(
        self, net: Supernet, data: Any, *, supernet_name: str, supernet_options: dict[str, Any] | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False,
        on_epoch: EpochCallback | None = None, on_step: StepCallback | None = None,
        on_resume: EpochCallback | None = None, dist: DistContext | None = None,
    ) -> list[dict[str, Any]]:
        """Train ``net`` on ``data`` (a :class:`nasforge.data.DataSplits`); returns the per-epoch history.

        With ``checkpoint_dir``, an atomic ``last.pt`` is written after every epoch and every
        ``checkpoint_every`` steps (and, with several phases, ``phase-<i>-<name>.pt`` after each); with
        ``resume=True`` the loop continues where ``last.pt`` stopped, inside its phase and epoch (same results as
        an uninterrupted run), and ``on_resume`` hears where: ``{"phase", "phase_index", "phase_epochs", "epoch",
        "step", "steps_per_epoch", "global_epoch", "epochs"}`` (finished epochs of the phase, finished steps of the
        next epoch). ``dist`` places the job on a device and, under ``torchrun``, on several processes
        (see :mod:`nasforge.distributed`); ``batch_size`` is the global batch. Every process validates its share.
        """
        cfg = self.config
        ctx = dist or DistContext()
        self._check_fit(net, ctx)
        net.to(ctx.device)
        model = ctx.wrap(net)
        phases = self.phases(net.space)
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
        at, history = ResumePoint(), []
        if resume and ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
            at, history = restore(self, net, ckpt_dir / "last.pt", phases)
        saver = _Saver(self, net, supernet_name, supernet_options or {}, ckpt_dir, history, ctx, len(phases))
        steps_per_epoch = max(1, len(data.train) // cfg.batch_size)
        global_epoch = sum(p.epochs for p in phases[: at.phase]) + at.epoch
        if on_resume is not None and resume and (at.phase or at.epoch or at.step):
            on_resume(_resume_info(at, phases, steps_per_epoch, global_epoch))
        self._restore_loop_state(at, history, ctx)
        for p in range(at.phase, len(phases)):
            phase, here = phases[p], p == at.phase
            first = at.epoch if here else 0
            self.start_phase(net, p, phase, fresh=first == 0 and not (here and at.step), checkpoint_dir=ckpt_dir)
            self._phase_optimizer(net, phase, at if here and (first > 0 or at.step > 0 or self.keep_optimizer)
                                  else None)
            for epoch in range(first, phase.epochs):
                resumed = here and epoch == first
                job = EpochJob(net, model, self.optimizer, data, ctx, phase.space(net.space), phase, p, epoch,
                               steps_per_epoch, global_epoch, at.step if resumed else 0,
                               EpochProgress.from_dict(at.progress if resumed and at.step else None), self.scaler)
                record = run_epoch(self, job, on_step, saver.mid_epoch(p, epoch) if ckpt_dir else None)
                global_epoch += 1
                record["epoch"] = global_epoch
                if epoch + 1 == phase.epochs or (cfg.eval_every and global_epoch % cfg.eval_every == 0):
                    record.update(self.validate(net, data, job.space, ctx.device, ctx=ctx))
                if ctx.is_main:
                    history.append(record)
                    saver.epoch_end(p, phase, epoch + 1)
                    if on_epoch:
                        on_epoch(record)
                ctx.barrier()
            self.end_phase(net, p, phase)
        net.set_active(net.space.largest())
        return history

    def _restore_loop_state(self, at: ResumePoint, history: list[dict[str, Any]], ctx: DistContext) -> None:
        """Subnet pass counts and the gradient scaler from the resume point; no optimizer yet."""
        self._passes = dict(at.passes or (history[-1].get("passes", {}) if history else {}))
        self.scaler = make_scaler(self.config.precision, ctx.device)
        if self.scaler is not None and at.scaler_state:
            self.scaler.load_state_dict(at.scaler_state)
        self.optimizer = None

    def _phase_optimizer(self, net: Supernet, phase: Phase, at: ResumePoint | None) -> None:
        """A fresh optimizer for ``phase`` (unless one is kept across phases), loaded from ``at`` if given."""
        cfg = self.config
        if self.optimizer is None or not self.keep_optimizer:
            self.optimizer = build_optimizer(net, name=cfg.optimizer, lr=phase.lr, momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay)
        if at is not None and at.optimizer is not None:
            self.optimizer.load_state_dict(at.optimizer)

    def _check_fit(self, net: Supernet, ctx: DistContext) -> None:
        cfg = self.config
        if cfg.memory_format == "channels_last" and not net.channels_last_training and ctx.device.type == "cpu":
            raise ConfigError(f"memory_format 'channels_last' is not safe for {type(net).__name__} on CPU (PyTorch's "
                              "strided 1x1 convolution backward corrupts memory there); use 'auto' or 'contiguous'")
        if self.aggregation == "mean" and ctx.world_size > 1:
            raise ConfigError("the 'mean' gradient aggregation needs each subnet's own gradient, which DDP "
                              "all-reduces away; use aggregation 'sum' under torchrun")
        per_rank = ctx.world_size * cfg.micro_batches
        if cfg.batch_size % per_rank:
            raise ConfigError(f"batch_size {cfg.batch_size} must divide by processes x micro_batches = {per_rank}")
        if cfg.precision == "fp16" and ctx.device.type == "cpu":
            raise ConfigError("precision 'fp16' needs a GPU (CPU autocast is bfloat16); use --precision bf16 on CPU")

    @torch.no_grad()
    def validate(self, net: Supernet, data: Any, space: SearchSpace | None = None,
                 device: torch.device | None = None, *, ctx: DistContext | None = None) -> dict[str, float]:
        """Validation accuracy of the largest and smallest subnets of ``space`` (default: the whole space) after
        BN recalibration, computed jointly by the processes of ``ctx`` (every one of them must call it)."""
        ctx = ctx or DistContext(device=device or torch.device("cpu"))
        return validate_corners(net, data, space, ctx, self.config.calib_images)


def _resume_info(at: ResumePoint, phases: list[Phase], steps_per_epoch: int, global_epoch: int) -> dict[str, Any]:
    """What ``on_resume`` hears: where in the schedule a resumed fit continues."""
    here = phases[min(at.phase, len(phases) - 1)]
    return {"phase": here.name, "phase_index": at.phase, "phase_epochs": here.epochs, "epoch": at.epoch,
            "step": at.step, "steps_per_epoch": steps_per_epoch, "global_epoch": global_epoch,
            "epochs": sum(p.epochs for p in phases)}


class _Saver:
    """Writes ``last.pt`` (rank 0 only) at epoch ends, every ``checkpoint_every`` steps, and per phase."""

    def __init__(self, trainer: Trainer, net: Supernet, name: str, options: dict[str, Any], ckpt_dir: Path | None,
                 history: list[dict[str, Any]], ctx: DistContext, n_phases: int) -> None:
        self.trainer, self.net, self.name, self.options = trainer, net, name, options
        self.dir, self.history, self.ctx, self.n_phases = ckpt_dir, history, ctx, n_phases

    def _write(self, path: Path, phase: int, epoch: int, step: int = 0, progress: EpochProgress | None = None) -> None:
        t = self.trainer
        save_checkpoint(path, self.net, self.name, self.options, optimizer=t.optimizer.state_dict(),  # type: ignore[union-attr]
                        phase=phase, epoch=epoch, step=step, progress=progress.to_dict() if progress else None,
                        passes=dict(t._passes), scaler=t.scaler.state_dict() if t.scaler is not None else None,
                        history=self.history, train_config=asdict(t.config), trainer=t.name)

    def mid_epoch(self, phase: int, epoch: int) -> Callable[[int, EpochProgress], None]:
        def save(step: int, progress: EpochProgress) -> None:
            if self.ctx.is_main and self.dir is not None:
                self._write(self.dir / "last.pt", phase, epoch, step, progress)
        return save

    def epoch_end(self, phase_index: int, phase: Phase, epochs_done: int) -> None:
        if self.dir is None:
            return
        self._write(self.dir / "last.pt", phase_index, epochs_done)
        name = self.trainer.phase_checkpoint_name(phase_index, phase, self.n_phases)
        if epochs_done == phase.epochs and name is not None:
            self._write(self.dir / name, phase_index, epochs_done)


_TRAINERS: Registry[type[Trainer]] = Registry("trainer")


def register_trainer(name: str) -> Callable[[type[Trainer]], type[Trainer]]:
    """Class decorator registering a :class:`Trainer` under ``name`` (duplicates raise)."""

    def deco(cls: type[Trainer]) -> type[Trainer]:
        cls.name = name
        return _TRAINERS.add(name, cls)

    return deco


def list_trainers() -> list[str]:
    """Names of the registered trainers."""
    from nasforge.supernets.trainers import deps, full, progressive, sandwich, sorted  # noqa: F401  (built-ins)

    return _TRAINERS.names()


def trainer_class(name: str) -> type[Trainer]:
    """The trainer class registered as ``name`` (ConfigError listing the known names otherwise)."""
    list_trainers()
    return _TRAINERS.get(name)


def get_trainer(name: str, config: TrainConfig) -> Trainer:
    """An instance of the trainer called ``name`` (its options are checked here)."""
    return trainer_class(name)(config)
