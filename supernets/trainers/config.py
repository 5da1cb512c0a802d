"""The configuration of the shared training loop: hyper-parameters, trainer options and schedule phases."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from nasforge.errors import ConfigError
from nasforge.supernets.arch import SearchSpace

__all__ = ["TrainHyperparams", "TrainConfig", "TrainerOptions", "StepInfo", "Phase", "PRECISIONS"]

#: training precisions: float32, or autocast to bfloat16 / float16 (float16 with a gradient scaler)
PRECISIONS = ("fp32", "bf16", "fp16")
_LAYOUTS = {"auto", "channels_last", "contiguous"}


@dataclass(frozen=True)
class TrainHyperparams:
    """Hyper-parameters of the shared training loop (everything but the seed); validated on creation.

    ``batch_size`` is the global batch (over all processes). ``micro_batches`` splits it into chunks whose
    gradients accumulate (less memory; the same arithmetic as that many DDP processes). Multi-phase trainers
    (progressive shrinking) take their epochs and learning rates from their reference schedule, multiplied by
    ``schedule_scale`` and ``lr_scale``; single-phase trainers use ``epochs``, ``lr`` and ``warmup_epochs``.
    ``memory_format`` is the batch layout: ``auto`` = channels-last for supernet families that opt in
    (MobileNetV3: about 1.5x faster training steps in oneDNN on CPU, float32 sums in another order:
    ``benchmarks/ofa_step.py``; 1.25x on an H200 in issue 16's measurement; see
    :attr:`Supernet.channels_last_training`), as given elsewhere; or ``channels_last`` / ``contiguous`` always. ``eval_every`` validates the corner subnets every that many epochs (the last epoch
    of every phase always; 0 = only those). ``precision`` is ``fp32``, or ``bf16`` / ``fp16`` autocast of every
    forward pass (teacher included; ``fp16`` with a gradient scaler). ``checkpoint_every`` also writes
    ``last.pt`` every that many steps inside an epoch (0: at epoch ends only), so a long epoch resumes mid-way
    with the same remaining batches.
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
    precision: str = "fp32"
    checkpoint_every: int = 1000

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
            "checkpoint_every": self.checkpoint_every >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"bad training value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.memory_format not in _LAYOUTS:
            raise ConfigError(f"memory_format {self.memory_format!r} is not one of {sorted(_LAYOUTS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {list(PRECISIONS)}")
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
        warmup_lr: the learning rate the linear warm-up starts from (Once-for-All: one GPU's base rate).
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
    warmup_lr: float = 0.0

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
                      self.lr, self.warmup_lr)

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


def _lr_at(step: float, total: int, warmup_steps: int, base: float, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` (reaching ``base`` at the end of the warm-up), then cosine decay to zero,
    per iteration."""
    if step < warmup_steps:
        return start + (base - start) * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, progress)))
