"""DεpS, Delayed ε-Shrinking (Khare et al., ECCV 2024): train the full model first, shrink late, ramp subnets in.

One warm-up + cosine learning-rate curve spans all ``epochs`` (T). The schedule is cut into two phases:

1. ``full`` (epochs ``0 .. T_w - S``): only the full model trains, with label-smoothed cross-entropy.
2. ``shrink`` (epochs ``T_w - S .. T``): at its start the channels are re-organised once by importance (as in
   Once-for-All). Every step runs a sandwich of ``sandwich_size`` subnets: the full model (label loss), the
   smallest and random ones, which learn only from the full model's current, detached logits (soft
   cross-entropy, temperature 1; no frozen teacher). Gradients are summed, ``g = sum_s beta_s grad L_s`` with
   ``beta_full = 1``.

As in the reference, one optimizer runs through both phases: its momentum crosses the shrink point, and the
channel re-organisation permutes the weights but not their momentum buffers (the reference reassigns each
weight's ``.data``, which leaves the optimizer state as it was). Dropout acts on the full model only (the
reference's ``forward(x, max=False)`` skips the classifier's dropout for every other subnet).

The ε ramp: for the ``S = ramp_epochs`` epochs before the shrink point ``T_w = round(shrink_point * T)``, a
subnet's learning rate rises linearly per iteration from 0 to the full model's learning rate at ``T_w``:
``beta_t = (t / (S * steps_per_epoch)) * lr(T_w) / lr(t)``, ``t`` counting iterations from ``T_w - S`` (the first
one is 1); from ``T_w`` on, ``beta = 1``. With ``ramp_epochs = 0`` the subnets join at ``T_w`` at full rate.
These follow the reference implementation (gatech-sysml/DepS), including its re-organisation call, which sorts
the middle channels in bands cut at the second-largest expand ratio (Once-for-All's last expand stage).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.trainers._dropout import DropoutSwitch
from nasforge.supernets.trainers.base import Phase, StepInfo, TrainConfig, TrainerOptions, register_trainer
from nasforge.supernets.trainers.sandwich import SandwichTrainer

__all__ = ["DepsOptions", "DepsTrainer"]


@dataclass(frozen=True)
class DepsOptions(TrainerOptions):
    """Options of :class:`DepsTrainer` (the paper's defaults; the others are its ablations).

    Args:
        shrink_point: ``T_w / T``, where subnets reach the full learning rate (paper: 0.5; 0.25 and 0.75 worse).
        ramp_epochs: ``S``, epochs of the ε ramp before ``T_w`` (paper: 5; 0 disables it).
        sandwich_size: subnets per shrinking step: full, smallest and ``sandwich_size - 2`` random ones.
        aggregation: ``sum`` (paper) or ``mean`` (each gradient element divided by the summed ``beta`` of the
            subnets that touched it, the reference's ``avg``; one process only).
        reorganize: re-organise channels by importance when shrinking starts.
    """

    shrink_point: float = 0.5
    ramp_epochs: int = 5
    sandwich_size: int = 4
    aggregation: str = "sum"
    reorganize: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.shrink_point <= 1:
            raise ConfigError(f"shrink_point {self.shrink_point} must be in [0, 1] (a fraction of the epochs)")
        if self.ramp_epochs < 0:
            raise ConfigError(f"ramp_epochs {self.ramp_epochs} must be >= 0 (0 disables the ε ramp)")
        if self.sandwich_size < 2:
            raise ConfigError(f"sandwich_size {self.sandwich_size} must be >= 2 (the full and the smallest subnet)")
        if self.aggregation not in ("sum", "mean"):
            raise ConfigError(f"aggregation {self.aggregation!r} must be 'sum' or 'mean'")


@register_trainer("deps")
class DepsTrainer(SandwichTrainer):
    """Delayed ε-shrinking: full-model warm-up to the shrink point, then the sandwich rule with the ε ramp.

    Uses ``epochs``, ``lr`` and ``warmup_epochs`` of the config for the one learning-rate curve, and
    :class:`DepsOptions` (``TrainConfig.trainer_options``) for the schedule.
    """

    Options = DepsOptions
    options: DepsOptions
    keep_optimizer = True

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self._dropout: DropoutSwitch | None = None

    # -- schedule ---------------------------------------------------------------------------------------------
    def shrink_epochs(self) -> tuple[int, int]:
        """``(T_w - S, T_w)``: the epoch where subnets start (the ramp begins) and where the ramp ends."""
        total = self.config.epochs
        t_w = round(self.options.shrink_point * total)
        return max(0, t_w - self.options.ramp_epochs), t_w

    def phases(self, space: SearchSpace) -> list[Phase]:
        cfg = self.config
        start, _ = self.shrink_epochs()
        warm = min(cfg.warmup_epochs, cfg.epochs)
        out = []
        if start > 0:
            out.append(Phase("full", start, cfg.lr, warm, 1, distill=False, lr_total_epochs=cfg.epochs))
        if start < cfg.epochs:
            out.append(Phase("shrink", cfg.epochs - start, cfg.lr, warm, self.options.sandwich_size, distill=False,
                             lr_offset_epochs=start, lr_total_epochs=cfg.epochs))
        return out

    def step_archs(self, space: SearchSpace, rng: random.Random, phase: Phase) -> list[Architecture]:
        if phase.name == "full":
            return [space.largest()]
        extra = [space.sample(rng) for _ in range(self.options.sandwich_size - 2)]
        return [space.largest(), space.smallest(), *extra]

    def ramp_beta(self, step: StepInfo) -> float:
        """``beta`` of the non-full subnets at ``step`` of the shrink phase (see the module docstring)."""
        start, t_w = self.shrink_epochs()
        ramp_steps = (t_w - start) * step.steps_per_epoch
        if step.step >= ramp_steps:
            return 1.0
        if step.lr <= 0:
            return 0.0
        target = step.lr_at(ramp_steps)  # the full model's learning rate at T_w
        return (step.step + 1) / ramp_steps * target / step.lr

    def subnet_weights(self, step: StepInfo, archs: list[Architecture]) -> list[float] | None:
        if step.phase.name != "shrink":
            return None
        beta = self.ramp_beta(step)
        return [1.0] + [beta] * (len(archs) - 1)

    @property
    def aggregation(self) -> str:
        return self.options.aggregation

    def prepare_subnet(self, index: int, arch: Architecture) -> None:
        """Dropout at its configured rate for the full model (the first subnet of a step), 0 for the others."""
        if self._dropout is not None:
            self._dropout.enable(index == 0)

    def start_phase(self, net: Supernet, index: int, phase: Phase, *, fresh: bool,
                    checkpoint_dir: Path | None) -> None:
        if self._dropout is None or self._dropout.module is not net:
            self._dropout = DropoutSwitch(net)  # remembers the configured rates
        if fresh and phase.name == "shrink" and self.options.reorganize:
            stage = max(0, len(net.space.dim("e").choices) - 2) if "e" in net.space.names else 0
            net.reorganize_channels(stage)

    def end_phase(self, net: Supernet, index: int, phase: Phase) -> None:
        if self._dropout is not None:
            self._dropout.enable(True)  # the trained supernet keeps its configured dropout
