"""The sandwich rule with in-place distillation (BigNAS / slimmable-network style)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.trainers.base import Phase, Trainer, register_trainer
from nasforge.supernets.trainers.steps import soft_cross_entropy

__all__ = ["SandwichTrainer", "soft_cross_entropy"]


@register_trainer("sandwich")
class SandwichTrainer(Trainer):
    """Each step: the largest subnet (label loss), the smallest and ``num_random`` random subnets (distilled
    from the largest subnet's current, detached logits). Gradients of all subnets are summed before one step.
    """

    inplace_teacher = True

    def step_archs(self, space: SearchSpace, rng: random.Random, phase: Phase) -> list[Architecture]:
        return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(self.config.num_random)]

    def subnet_loss(self, index: int, logits: torch.Tensor, targets: torch.Tensor,
                    teacher: torch.Tensor | None) -> torch.Tensor:
        if index == 0 or teacher is None or self.config.kd_weight == 0:
            return F.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
        return self.config.kd_weight * soft_cross_entropy(logits, teacher)
