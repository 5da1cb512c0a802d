"""Train, finetune and evaluate plain classifiers on in-memory splits (the pruning pipeline's training loop)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.data import Split
from nasforge.errors import ConfigError

__all__ = ["train_classifier", "evaluate_accuracy", "make_loss_fn"]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_classifier(
    model: nn.Module,
    train: Split,
    *,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    augment: bool = True,
) -> list[float]:
    """SGD (momentum 0.9, Nesterov) with a per-step cosine schedule; no weight decay on BN and biases.

    Args:
        augment: random horizontal flips and 2-pixel shifts on image batches (images >= 16 px).
        on_epoch: called with ``(epoch, mean training loss)`` after each epoch.

    Returns:
        The mean training loss of every epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs={epochs!r} must be a non-negative integer")
    if not lr > 0:
        raise ConfigError(f"lr={lr!r} must be > 0")
    if epochs == 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(_param_groups(model, weight_decay), lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = max(1, len(train) // batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    losses: list[float] = []
    model.train()
    for epoch in range(epochs):
        running, count = 0.0, 0
        for x, y in train.batches(batch_size, shuffle=True, generator=gen, drop_last=len(train) > batch_size):
            if augment and x.shape[-1] >= 16:
                x = _augment(x, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(y)
            count += len(y)
        losses.append(running / max(1, count))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    model.eval()
    return losses


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``split``; the model's mode is restored."""
    was = model.training
    model.eval()
    correct = 0
    try:
        for x, y in split.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    finally:
        model.train(was)
    return correct / max(1, len(split))


def make_loss_fn(train: Split, batches: int = 4, batch_size: int = 64, seed: int = 0
                 ) -> Callable[[nn.Module], torch.Tensor]:
    """``loss_fn(model)``: mean cross-entropy over a fixed set of training batches (for gradient criteria)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=gen)[: batches * batch_size]
    x, y = train.x[idx], train.y[idx]

    def loss_fn(model: nn.Module) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            return F.cross_entropy(model(x), y)
        finally:
            model.train(was)

    return loss_fn
