"""The shared training loop of weight-sharing trainers, their config, and the trainer registry.

A trainer only decides which subnets run in a step and what each one's loss is; the loop (optimizer, learning
rate schedule, checkpoints, resume, per-epoch validation of the corner subnets) is shared.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.errors import CheckpointError, ConfigError
from nasforge.registry import Registry
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.checkpoint import load_checkpoint, save_checkpoint
from nasforge.supernets.evaluate import evaluate_arch, resize
from nasforge.supernets.trainers.steps import build_optimizer

__all__ = ["TrainConfig", "TrainHyperparams", "Trainer", "register_trainer", "list_trainers", "get_trainer", "EpochCallback", "StepCallback"]

EpochCallback = Callable[[dict[str, Any]], None]
StepCallback = Callable[[int, int, int], None]  # (step in epoch, steps per epoch, epoch index)


@dataclass(frozen=True)
class TrainHyperparams:
    """Hyper-parameters of the shared training loop (everything but the seed); validated on creation."""

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

    def __post_init__(self) -> None:
        _check_types(self)
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "warmup_epochs": self.warmup_epochs >= 0, "num_random": self.num_random >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1, "calib_images": self.calib_images >= 1,
            "weight_decay": self.weight_decay >= 0, "kd_weight": self.kd_weight >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"bad training value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
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
    """Each field must have the type of its default (ints exclude bools; floats accept ints)."""
    wrong = []
    for f in fields(obj):
        value, kind = getattr(obj, f.name), type(f.default)
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) or not ok:
            wrong.append(f"{f.name}={value!r} (needs {'a number' if kind is float else kind.__name__})")
    if wrong:
        raise ConfigError(f"training value(s) of the wrong type: {', '.join(wrong)}")


@dataclass(frozen=True)
class TrainConfig(TrainHyperparams):
    """What :meth:`Trainer.fit` needs: the hyper-parameters plus the seed of data order, sampling and dropout."""

    seed: int = 0


class Trainer(ABC):
    """Base class: subclasses pick the subnets of a step (:meth:`step_archs`) and their losses."""

    name: ClassVar[str] = ""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def step_archs(self, space: SearchSpace, rng: random.Random, epoch: int) -> list[Architecture]:
        """Architectures to run in one step; the first one is the teacher for in-place distillation."""

    @abstractmethod
    def subnet_loss(self, index: int, logits: torch.Tensor, targets: torch.Tensor,
                    teacher: torch.Tensor | None) -> torch.Tensor:
        """Loss of the ``index``-th subnet of a step (``teacher`` = detached logits of subnet 0, if any)."""

    # -- the shared loop -------------------------------------------------------------------------------------
    def fit(
        self, net: Supernet, data: Any, *, supernet_name: str, supernet_options: dict[str, Any] | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False,
        on_epoch: EpochCallback | None = None, on_step: StepCallback | None = None,
    ) -> list[dict[str, Any]]:
        """Train ``net`` on ``data`` (a :class:`nasforge.data.DataSplits`); returns the per-epoch history.

        With ``checkpoint_dir``, an atomic ``last.pt`` is written after every epoch; with ``resume=True`` the
        loop continues after the last finished epoch of that checkpoint (same results as an uninterrupted run).
        """
        cfg = self.config
        opt = _optimizer(net, cfg)
        history: list[dict[str, Any]] = []
        start = 0
        ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
        if resume and ckpt is not None and ckpt.exists():
            start, history = self._restore(net, opt, ckpt)
        steps_per_epoch = max(1, len(data.train) // cfg.batch_size)
        total_steps = cfg.epochs * steps_per_epoch
        for epoch in range(start, cfg.epochs):
            net.train()
            epoch_seed = cfg.seed * 100_003 + epoch
            gen = torch.Generator().manual_seed(epoch_seed)
            rng = random.Random(epoch_seed)
            losses = []
            # Each epoch draws dropout noise from its own seed, so a resumed run repeats an uninterrupted one.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(epoch_seed)
                batches = data.train.batches(cfg.batch_size, shuffle=True, generator=gen, drop_last=True)
                for i, (x, y) in enumerate(batches):
                    step = epoch * steps_per_epoch + i
                    lr = _lr_at(step, total_steps, warmup_steps=cfg.warmup_epochs * steps_per_epoch, base=cfg.lr)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    losses.append(self._step(net, opt, x, y, rng, epoch))
                    if on_step:
                        on_step(i + 1, steps_per_epoch, epoch)
            record = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)), "lr": opt.param_groups[0]["lr"]}
            record.update(self.validate(net, data))
            history.append(record)
            if ckpt is not None:
                save_checkpoint(ckpt, net, supernet_name, supernet_options or {}, optimizer=opt.state_dict(),
                                epoch=epoch + 1, history=history, train_config=asdict(cfg), trainer=self.name)
            if on_epoch:
                on_epoch(record)
        net.set_active(net.space.largest())
        return history

    def _step(self, net: Supernet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              rng: random.Random, epoch: int) -> float:
        opt.zero_grad(set_to_none=True)
        teacher = None
        total = 0.0
        for i, arch in enumerate(self.step_archs(net.space, rng, epoch)):
            arch = net.set_active(arch)
            logits = net(resize(x, net.resolution(arch)))
            loss = self.subnet_loss(i, logits, y, teacher)
            loss.backward()
            total += float(loss.detach())
            if i == 0:
                teacher = logits.detach()
        opt.step()
        return total

    @torch.no_grad()
    def validate(self, net: Supernet, data: Any) -> dict[str, float]:
        """Validation accuracy of the largest and smallest subnets after BN recalibration."""
        calib = data.train.x[: self.config.calib_images]
        out = {}
        for tag, arch in (("val_acc_max", net.space.largest()), ("val_acc_min", net.space.smallest())):
            out[tag] = evaluate_arch(net, arch, calib, data.val.x, data.val.y, self.config.calib_images)[0]
        return out

    def _restore(self, net: Supernet, opt: torch.optim.Optimizer, path: Path) -> tuple[int, list[dict[str, Any]]]:
        state = load_checkpoint(path)
        if state.get("train_config", {}).get("seed") != self.config.seed:
            raise CheckpointError(f"checkpoint {path} was trained with another seed; resume with the same config")
        try:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            epoch, history = int(state["epoch"]), list(state.get("history", []))
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this supernet/config: {str(exc)[:200]}") from None
        return epoch, history


def _optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return build_optimizer(net, name=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


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
    from nasforge.supernets.trainers import sandwich  # noqa: F401  (registers the built-in trainers)

    return _TRAINERS.names()


def get_trainer(name: str, config: TrainConfig) -> Trainer:
    """An instance of the trainer called ``name``."""
    list_trainers()
    return _TRAINERS.get(name)(config)
