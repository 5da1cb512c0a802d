"""The shared training loop of weight-sharing trainers, their config, and the trainer registry.

A trainer only decides which subnets run in a step and what each one's loss is; the loop (optimizer, learning
rate schedule, checkpoints, resume, per-epoch validation of the corner subnets) is shared.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.distributed import DistContext
from nasforge.errors import CheckpointError, ConfigError
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.checkpoint import load_checkpoint, save_checkpoint
from nasforge.supernets.evaluate import evaluate_arch, resize
from nasforge.supernets.trainers.steps import build_optimizer, distill_loss, distill_step

__all__ = ["Phase", "StepInfo", "TrainConfig", "TrainHyperparams", "Trainer", "TrainerOptions", "register_trainer",
           "list_trainers", "get_trainer", "trainer_class", "EpochCallback", "StepCallback"]

EpochCallback = Callable[[dict[str, Any]], None]
StepCallback = Callable[[int, int, int], None]  # (step in epoch, steps per epoch, epoch index)


@dataclass(frozen=True)
class TrainHyperparams:
    """Hyper-parameters of the shared training loop (everything but the seed); validated on creation.

    ``batch_size`` is the global batch (over all processes). ``micro_batches`` splits it into chunks whose
    gradients accumulate (less memory; the same arithmetic as that many DDP processes). Multi-phase trainers
    (progressive shrinking) take their epochs and learning rates from their reference schedule, multiplied by
    ``schedule_scale`` and ``lr_scale``; single-phase trainers use ``epochs``, ``lr`` and ``warmup_epochs``.
    ``memory_format`` is the batch layout: ``auto`` = channels-last on CPU for supernet families that opt in
    (MobileNetV3: about 1.5x faster training steps in oneDNN, float32 sums in another order:
    ``benchmarks/ofa_step.py``; see :attr:`Supernet.channels_last_training`), as given elsewhere; or
    ``channels_last`` / ``contiguous`` always. ``eval_every`` validates the corner subnets every that many epochs (the last epoch
    of every phase always; 0 = only those).
    """

    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    num_random: int = 2
    kd_weight: float = 1.0
    calib_images: int = 500
    micro_batches: int = 1
    schedule_scale: float = 1.0
    lr_scale: float = 1.0
    memory_format: str = "auto"
    eval_every: int = 1

    def __post_init__(self) -> None:
        _check_types(self)
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "warmup_epochs": self.warmup_epochs >= 0, "num_random": self.num_random >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1, "calib_images": self.calib_images >= 1,
            "weight_decay": self.weight_decay >= 0, "kd_weight": self.kd_weight >= 0,
            "micro_batches": self.micro_batches >= 1, "schedule_scale": self.schedule_scale > 0,
            "lr_scale": self.lr_scale > 0, "eval_every": self.eval_every >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"bad training value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.memory_format not in _LAYOUTS:
            raise ConfigError(f"memory_format {self.memory_format!r} is not one of {sorted(_LAYOUTS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"training optimizer {self.optimizer!r} is not supported; choose 'sgd' or 'adamw'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from a mapping; unknown keys raise :class:`ConfigError` listing the allowed ones."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)


def _check_types(obj: Any) -> None:
    """Each field must have the type of its default (numbers exclude bools; floats accept ints)."""
    wrong = []
    for f in fields(obj):
        if f.default is MISSING:  # container fields (trainer options) are checked by their owner
            continue
        value, kind = getattr(obj, f.name), type(f.default)
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if kind is not bool and isinstance(value, bool):
            ok = False
        if not ok:
            wrong.append(f"{f.name}={value!r} (needs {'a number' if kind is float else kind.__name__})")
    if wrong:
        raise ConfigError(f"training value(s) of the wrong type: {', '.join(wrong)}")


@dataclass(frozen=True)
class TrainConfig(TrainHyperparams):
    """What :meth:`Trainer.fit` needs: the hyper-parameters, the seed of data order, sampling and dropout, and
    the options of the chosen trainer (``trainer_options``, checked by its :attr:`Trainer.Options`)."""

    seed: int = 0
    trainer_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.trainer_options, Mapping):
            raise ConfigError(f"trainer_options must be a mapping, got {type(self.trainer_options).__name__}")
        object.__setattr__(self, "trainer_options", dict(self.trainer_options))


@dataclass(frozen=True)
class TrainerOptions:
    """Base of a trainer's own options (a frozen dataclass per trainer, validated on creation)."""

    def __post_init__(self) -> None:
        _check_types(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], trainer: str = "") -> Any:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming the allowed ones."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            who = f"trainer {trainer!r}" if trainer else "this trainer"
            raise ConfigError(f"unknown option(s) {unknown} for {who}; allowed: {sorted(allowed) or 'none'}")
        return cls(**data)


@dataclass(frozen=True)
class StepInfo:
    """Where a training step is: phase, epoch and step inside the phase, and the learning-rate schedule."""

    phase_index: int
    phase: Phase
    epoch: int
    step: int
    steps_per_epoch: int
    lr: float

    def lr_at(self, phase_step: float) -> float:
        """The schedule's learning rate at step ``phase_step`` of this phase (may be fractional or beyond it)."""
        return self.phase.lr_at(phase_step, self.steps_per_epoch)

    @property
    def epochs_done(self) -> float:
        """Fractional epochs of this phase finished before this step."""
        return self.step / self.steps_per_epoch


@dataclass(frozen=True)
class Phase:
    """One stage of a training schedule.

    Args:
        name: short name (``"kernel"``, ``"depth-1"``, ...), used in logs and per-phase checkpoint files.
        epochs: epochs of the phase, warm-up included.
        lr: peak learning rate (after the linear warm-up; cosine decay to zero per iteration afterwards).
        warmup_epochs: linear warm-up epochs at the start of the phase.
        subnets_per_step: subnets whose gradients accumulate in one optimizer step.
        choices: restriction of the search space during this phase, e.g. ``{"ks": (7,), "e": (6,)}``.
        expand_stage: if set, channels are re-organised by importance at the start of the phase (the
            Once-for-All expand phases; 0 for the first, 1 for the second).
        distill: whether subnets distil from the trainer's teacher (if it has one).
        lr_offset_epochs / lr_total_epochs: the phase is a slice of a longer schedule: its first epoch is epoch
            ``lr_offset_epochs`` of one warm-up + cosine curve spanning ``lr_total_epochs`` epochs (default: the
            phase alone). Used when one schedule is cut into phases (DεpS's full-model and shrinking parts).
    """

    name: str
    epochs: int
    lr: float
    warmup_epochs: int = 0
    subnets_per_step: int = 1
    choices: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    expand_stage: int | None = None
    distill: bool = True
    lr_offset_epochs: int = 0
    lr_total_epochs: int | None = None

    def __post_init__(self) -> None:
        span = self.span_epochs
        if self.epochs < 1 or self.warmup_epochs < 0 or self.warmup_epochs > span or self.lr <= 0:
            raise ConfigError(f"bad phase {self.name!r}: epochs={self.epochs}, warmup={self.warmup_epochs}, "
                              f"lr={self.lr} (need epochs >= 1, 0 <= warmup <= epochs, lr > 0)")
        if self.lr_offset_epochs < 0 or self.lr_offset_epochs + self.epochs > span:
            raise ConfigError(f"bad phase {self.name!r}: epochs {self.lr_offset_epochs}..{self.lr_offset_epochs + self.epochs}"
                              f" do not fit in its {span}-epoch schedule")
        if self.subnets_per_step < 1:
            raise ConfigError(f"phase {self.name!r} needs at least one subnet per step")

    @property
    def span_epochs(self) -> int:
        """Epochs of the learning-rate curve this phase is part of."""
        return self.epochs if self.lr_total_epochs is None else self.lr_total_epochs

    def lr_at(self, step: float, steps_per_epoch: int) -> float:
        """Learning rate at step ``step`` of this phase (linear warm-up, then cosine to zero, per iteration)."""
        offset = self.lr_offset_epochs * steps_per_epoch
        return _lr_at(offset + step, self.span_epochs * steps_per_epoch, self.warmup_epochs * steps_per_epoch,
                      self.lr)

    def space(self, full: SearchSpace) -> SearchSpace:
        """``full`` restricted to this phase's choices (unknown dimensions or values raise ConfigError)."""
        if not self.choices:
            return full
        dims = []
        for d in full.dims:
            if d.name in self.choices:
                wanted = tuple(sorted(int(v) for v in self.choices[d.name]))
                bad = [v for v in wanted if v not in d.choices]
                if bad or not wanted:
                    raise ConfigError(f"phase {self.name!r}: {d.name} choices {wanted} are not a non-empty subset "
                                      f"of the space's {d.choices}")
                default = d.default if d.default in wanted else (wanted[-1] if d.default is not None else None)
                d = replace(d, choices=wanted, default=default)
            dims.append(d)
        unknown = sorted(set(self.choices) - set(full.names))
        if unknown:
            raise ConfigError(f"phase {self.name!r} restricts unknown dimension(s) {unknown}; space has {full.names}")
        return SearchSpace(full.name, tuple(dims), full.gates)


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

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.options = self.Options.from_dict(config.trainer_options, self.name)
        self.teacher: nn.Module | None = None
        self._passes: dict[str, int] = {}

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

    def start_phase(self, net: Supernet, index: int, phase: Phase, *, fresh: bool,  # noqa: B027
                    checkpoint_dir: Path | None) -> None:
        """Hook run before the first epoch of a phase (``fresh``) or when resuming inside it."""

    def end_phase(self, net: Supernet, index: int, phase: Phase) -> None:  # noqa: B027
        """Hook run after the last epoch of a phase."""

    def total_epochs(self, space: SearchSpace) -> int:
        """Epochs over all phases."""
        return sum(p.epochs for p in self.phases(space))

    # -- the shared loop -------------------------------------------------------------------------------------
    def fit(
        self, net: Supernet, data: Any, *, supernet_name: str, supernet_options: dict[str, Any] | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False,
        on_epoch: EpochCallback | None = None, on_step: StepCallback | None = None,
        dist: DistContext | None = None,
    ) -> list[dict[str, Any]]:
        """Train ``net`` on ``data`` (a :class:`nasforge.data.DataSplits`); returns the per-epoch history.

        With ``checkpoint_dir``, an atomic ``last.pt`` is written after every epoch (and, with several phases,
        ``phase-<i>-<name>.pt`` after each); with ``resume=True`` the loop continues after the last finished epoch of ``last.pt``,
        inside its phase (same results as an uninterrupted run). ``dist`` places the job on a device and, under
        ``torchrun``, on several processes (see :mod:`nasforge.distributed`); ``batch_size`` is the global batch.
        """
        cfg = self.config
        ctx = dist or DistContext()
        if cfg.memory_format == "channels_last" and not net.channels_last_training and ctx.device.type == "cpu":
            raise ConfigError(f"memory_format 'channels_last' is not safe for {type(net).__name__} on CPU (PyTorch's "
                              "strided 1x1 convolution backward corrupts memory there); use 'auto' or 'contiguous'")
        if self.aggregation == "mean" and ctx.world_size > 1:
            raise ConfigError("the 'mean' gradient aggregation needs each subnet's own gradient, which DDP "
                              "all-reduces away; use aggregation 'sum' under torchrun")
        per_rank = ctx.world_size * cfg.micro_batches
        if cfg.batch_size % per_rank:
            raise ConfigError(f"batch_size {cfg.batch_size} must divide by processes x micro_batches = {per_rank}")
        net.to(ctx.device)
        model = ctx.wrap(net)
        phases = self.phases(net.space)
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
        ckpt = ckpt_dir / "last.pt" if ckpt_dir else None
        history: list[dict[str, Any]] = []
        start_phase, start_epoch, opt_state = 0, 0, None
        if resume and ckpt is not None and ckpt.exists():
            start_phase, start_epoch, opt_state, history = self._restore(net, ckpt, phases)
        steps_per_epoch = max(1, len(data.train) // cfg.batch_size)
        global_epoch = sum(p.epochs for p in phases[:start_phase]) + start_epoch
        self._passes = dict(history[-1].get("passes", {})) if history else {}
        for p in range(start_phase, len(phases)):
            phase = phases[p]
            pspace = phase.space(net.space)
            first = start_epoch if p == start_phase else 0
            self.start_phase(net, p, phase, fresh=first == 0, checkpoint_dir=ckpt_dir)
            opt = build_optimizer(net, name=cfg.optimizer, lr=phase.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
            if opt_state is not None and first > 0:
                opt.load_state_dict(opt_state)
            opt_state = None
            for epoch in range(first, phase.epochs):
                record = self._epoch(net, model, opt, data, ctx, pspace, phase, p, epoch, steps_per_epoch,
                                     global_epoch, on_step)
                global_epoch += 1
                record["epoch"] = global_epoch
                if ctx.is_main:
                    last = epoch + 1 == phase.epochs
                    if last or (cfg.eval_every and global_epoch % cfg.eval_every == 0):
                        record.update(self.validate(net, data, pspace, ctx.device))
                    history.append(record)
                    if ckpt is not None:
                        self._save(ckpt, net, supernet_name, supernet_options, opt, p, epoch + 1, history)
                        if epoch + 1 == phase.epochs and len(phases) > 1:
                            self._save(ckpt_dir / f"phase-{p + 1}-{phase.name}.pt", net, supernet_name,  # type: ignore[operator]
                                       supernet_options, opt, p, epoch + 1, history)
                    if on_epoch:
                        on_epoch(record)
                ctx.barrier()
            self.end_phase(net, p, phase)
        net.set_active(net.space.largest())
        return history

    def _epoch(self, net: Supernet, model: nn.Module, opt: torch.optim.Optimizer, data: Any, ctx: DistContext,
               space: SearchSpace, phase: Phase, p: int, epoch: int, steps_per_epoch: int,
               global_epoch: int, on_step: StepCallback | None) -> dict[str, Any]:
        cfg = self.config
        net.train()
        epoch_seed = cfg.seed * 100_003 + p * 1_009 + epoch
        gen = torch.Generator().manual_seed(epoch_seed)
        teacher = self.teacher if phase.distill else None
        layout = cfg.memory_format if net.channels_last_training or cfg.memory_format != "auto" else "contiguous"
        losses = []
        passes = self._passes
        with torch.random.fork_rng(devices=[]):
            batches = data.train.batches(cfg.batch_size, shuffle=True, generator=gen, drop_last=True)
            for i, (x, y) in enumerate(batches):
                step = epoch * steps_per_epoch + i
                lr = phase.lr_at(step, steps_per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                rng = random.Random(epoch_seed * 100_000 + i)  # same subnets on every rank, and after a resume
                archs = self.step_archs(space, rng, phase)
                weights = self.subnet_weights(StepInfo(p, phase, epoch, step, steps_per_epoch, lr), archs)
                x = ctx.shard(x).to(ctx.device, non_blocking=True)
                y = ctx.shard(y).to(ctx.device, non_blocking=True)
                if self.shared_resolution:
                    r = rng.choice(space.dim("r").choices) if "r" in space.names else None
                    if r is not None:
                        archs = [a.replace(r=r) for a in archs]
                        x = resize(x, r)
                x = batch_layout(x, layout)
                losses.append(distill_step(
                    net, opt, x, y, archs, teacher, model=model, micro_batches=cfg.micro_batches,
                    no_sync=ctx.no_sync(model), step_seed=epoch_seed * 100_000 + i,
                    first_chunk=ctx.rank * cfg.micro_batches, loss_fn=self.subnet_loss,
                    inplace_teacher=self.inplace_teacher,
                    resolution_of=None if self.shared_resolution else net.resolution,
                    weights=weights, aggregation=self.aggregation,
                ))
                # cost in sub-model passes over one global batch (forward + backward; teacher: forward only)
                passes["subnet"] = passes.get("subnet", 0) + len(archs)
                if teacher is not None:
                    passes["teacher"] = passes.get("teacher", 0) + 1
                if on_step and ctx.is_main:
                    on_step(i + 1, steps_per_epoch, global_epoch)
        loss = ctx.mean(sum(losses) / max(1, len(losses)))
        return {"phase": phase.name, "phase_epoch": epoch + 1, "loss": loss, "lr": opt.param_groups[0]["lr"],
                "passes": dict(passes)}

    def _save(self, path: Path, net: Supernet, supernet_name: str, supernet_options: dict[str, Any] | None,
              opt: torch.optim.Optimizer, phase: int, epoch: int, history: list[dict[str, Any]]) -> None:
        save_checkpoint(path, net, supernet_name, supernet_options or {}, optimizer=opt.state_dict(),
                        phase=phase, epoch=epoch, history=history, train_config=asdict(self.config),
                        trainer=self.name)

    @torch.no_grad()
    def validate(self, net: Supernet, data: Any, space: SearchSpace | None = None,
                 device: torch.device | None = None) -> dict[str, float]:
        """Validation accuracy of the largest and smallest subnets of ``space`` (default: the whole space)
        after BN recalibration."""
        space = space or net.space
        dev = device or torch.device("cpu")
        n = self.config.calib_images
        calib, vx, vy = data.train.x[:n].to(dev), data.val.x.to(dev), data.val.y.to(dev)
        out = {}
        for tag, arch in (("val_acc_max", space.largest()), ("val_acc_min", space.smallest())):
            out[tag] = evaluate_arch(net, arch, calib, vx, vy, n)[0]
        return out

    def _restore(self, net: Supernet, path: Path,
                 phases: list[Phase]) -> tuple[int, int, dict[str, Any], list[dict[str, Any]]]:
        state = load_checkpoint(path)
        saved, now = state.get("train_config", {}), asdict(self.config)
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k in saved and saved[k] != v]
        if changed or "seed" not in saved:
            raise CheckpointError(f"checkpoint {path} was trained with other settings ({'; '.join(changed) or 'no seed'}"
                                  "); resume with the same config")
        if state.get("trainer", self.name) != self.name:
            raise CheckpointError(f"checkpoint {path} was written by trainer {state.get('trainer')!r}, not "
                                  f"{self.name!r}; resume with the same trainer")
        try:
            net.load_state_dict(state["model"])
            phase, epoch, history = int(state.get("phase", 0)), int(state["epoch"]), list(state.get("history", []))
            opt_state = state["optimizer"]
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this supernet/config: {str(exc)[:200]}") from None
        if phase >= len(phases) or epoch > phases[phase].epochs:
            raise CheckpointError(f"checkpoint {path} is at phase {phase + 1} epoch {epoch}, beyond this schedule; "
                                  "resume with the same config")
        if epoch == phases[phase].epochs:  # that phase finished: start the next one
            self.end_phase(net, phase, phases[phase])
            phase, epoch = phase + 1, 0
        return phase, epoch, opt_state, history


_LAYOUTS = {"auto", "channels_last", "contiguous"}


def batch_layout(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """``x`` (an image batch) in the layout that ``memory_format`` asks for (see :class:`TrainHyperparams`)."""
    if x.dim() != 4 or memory_format not in ("auto", "channels_last"):
        return x.contiguous() if memory_format == "contiguous" else x
    if memory_format == "auto" and x.device.type != "cpu":
        return x
    return x.contiguous(memory_format=torch.channels_last)


def _lr_at(step: int, total: int, warmup_steps: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero, per iteration."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, progress)))


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
