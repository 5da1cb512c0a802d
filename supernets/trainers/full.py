"""Plain training of one architecture of a supernet (the full model by default): the baseline that weight-sharing
trainers are compared with, or a first step that other tools can start from."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.trainers.base import Phase, Trainer, TrainerOptions, register_trainer

__all__ = ["FullOptions", "FullTrainer"]


@dataclass(frozen=True)
class FullOptions(TrainerOptions):
    """``arch``: the architecture to train, as JSON (empty: the largest of the space)."""

    arch: str = ""


@register_trainer("full")
class FullTrainer(Trainer):
    """Trains one architecture with label-smoothed cross-entropy, nothing else: a normally trained model."""

    Options = FullOptions
    options: FullOptions

    def phases(self, space: SearchSpace) -> list[Phase]:
        if self.options.arch:
            space.canonical(self.options.arch)  # a bad architecture fails before training starts
        return super().phases(space)

    def step_archs(self, space: SearchSpace, rng: random.Random, phase: Phase) -> list[Architecture]:
        return [space.canonical(self.options.arch) if self.options.arch else space.largest()]

    def subnet_loss(self, index: int, logits: torch.Tensor, targets: torch.Tensor,
                    teacher: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
