"""One optimisation step over several subnets, shared by the trainers (and timed by ``benchmarks/ofa_step.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.supernets.arch import Architecture
from nasforge.supernets.base import Supernet
from nasforge.supernets.evaluate import resize

__all__ = ["soft_cross_entropy", "distill_loss", "distill_step", "build_optimizer"]


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's softmax (temperature 1), averaged over the batch."""
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1).mean()


def distill_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None,
                 label_smoothing: float, kd_weight: float) -> torch.Tensor:
    """``CE_ls(logits, targets) + kd_weight * soft-CE(logits, softmax(teacher))`` (no KD term without a teacher)."""
    loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is not None and kd_weight > 0:
        loss = loss + kd_weight * soft_cross_entropy(logits, teacher_logits)
    return loss


LossFn = Callable[[int, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def distill_step(
    net: Supernet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    archs: Sequence[Architecture], teacher: nn.Module | None = None, *, label_smoothing: float = 0.1,
    kd_weight: float = 1.0, model: nn.Module | None = None, micro_batches: int = 1,
    no_sync: Callable[[], ContextManager[None]] | None = None, step_seed: int | None = None, first_chunk: int = 0,
    loss_fn: LossFn | None = None, inplace_teacher: bool = False,
    resolution_of: Callable[[Architecture], int] | None = None, weights: Sequence[float] | None = None,
    aggregation: str = "sum", amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
    before_subnet: Callable[[int, Architecture], None] | None = None,
) -> float:
    """One weight-sharing step: the gradients of every subnet in ``archs`` accumulate, then one update.

    With a ``teacher`` network (progressive shrinking: the trained full net) it runs once per micro-batch in
    train mode under ``no_grad``, as in the Once-for-All reference. With ``inplace_teacher`` the detached logits
    of ``archs[0]`` teach the others (sandwich rule). ``x`` must be at the step's resolution unless
    ``resolution_of`` is given, in which case each subnet gets ``x`` resized to ``resolution_of(arch)``.

    Args:
        net: the supernet (its active subnet is switched for each architecture).
        model: what is called for the forward pass (``net`` itself, or a DDP wrapper around it).
        micro_batches: split the batch into this many chunks whose gradients accumulate (the loss of each chunk
            is scaled by its share of the batch), which is exactly what DDP computes over that many ranks.
        no_sync: context manager suppressing gradient all-reduce (DDP's ``no_sync``) for every backward
            except the last one of the step.
        step_seed: if given, the torch RNG (dropout) is re-seeded per micro-batch and subnet from it, so a run
            is reproducible however the batch is split across processes.
        first_chunk: global index of this process's first chunk (its rank when each rank holds one chunk).
        loss_fn: ``(index, logits, targets, teacher_logits) -> loss``; default :func:`distill_loss`.
        weights: per-subnet gradient weights ``beta_s`` (default 1): the step's gradient is
            ``sum_s beta_s * grad L_s``, i.e. each subnet's learning rate is ``beta_s`` times the step's.
        aggregation: ``sum`` (above), or ``mean``: every weight element's gradient is divided by the summed
            ``beta_s`` of the subnets that touched it (DεpS's ``avg``). Whether a subnet touched an element is
            read from its gradient being non-zero, so ``mean`` needs one process (not DDP).
        amp_dtype: run every forward pass (teacher included) and loss under ``torch.autocast`` to this dtype
            (``torch.bfloat16`` / ``torch.float16``); ``None``: float32.
        scaler: a gradient scaler (float16): losses are scaled before backward and the update goes through it.
        before_subnet: called as ``(index, arch)`` after the subnet is activated, before its forward pass
            (e.g. to set a subnet-specific dropout).

    Returns:
        The weighted sum of the subnets' losses (each a mean over the batch).
    """
    if aggregation not in ("sum", "mean"):
        raise ValueError(f"aggregation {aggregation!r} is not 'sum' or 'mean'")
    betas = [1.0] * len(archs) if weights is None else [float(w) for w in weights]
    if len(betas) != len(archs):
        raise ValueError(f"{len(betas)} weights for {len(archs)} subnets")
    if loss_fn is None:
        loss_fn = partial(_default_loss, label_smoothing=label_smoothing, kd_weight=kd_weight)
    run = _StepRun(net, model if model is not None else net, archs, betas, loss_fn, teacher, inplace_teacher,
                   no_sync, step_seed, first_chunk, resolution_of, amp_dtype, scaler, before_subnet,
                   [p for p in net.parameters() if p.requires_grad] if aggregation == "mean" else [])
    optimizer.zero_grad(set_to_none=True)
    total = run.accumulate(x, y, micro_batches)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total


def _default_loss(i: int, logits: torch.Tensor, t: torch.Tensor, tl: torch.Tensor | None, *,
                  label_smoothing: float, kd_weight: float) -> torch.Tensor:
    return distill_loss(logits, t, tl, label_smoothing, kd_weight)


@dataclass
class _StepRun:
    """The gradient accumulation of one :func:`distill_step` (its arguments, and the touched-element masks of
    the ``mean`` aggregation, whose ``params`` are empty for ``sum``)."""

    net: Supernet
    model: nn.Module
    archs: Sequence[Architecture]
    betas: list[float]
    loss_fn: LossFn
    teacher: nn.Module | None
    inplace_teacher: bool
    no_sync: Callable[[], ContextManager[None]] | None
    step_seed: int | None
    first_chunk: int
    resolution_of: Callable[[Architecture], int] | None
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    before_subnet: Callable[[int, Architecture], None] | None
    params: list[nn.Parameter]

    def amp(self, device_type: str) -> ContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.amp_dtype)

    def accumulate(self, x: torch.Tensor, y: torch.Tensor, micro_batches: int) -> float:
        """Backward every subnet on every micro-batch; returns the weighted sum of the subnets' losses."""
        before: list[torch.Tensor | None] = [None] * len(self.params)
        touched: list[list[torch.Tensor | None]] = [[None] * len(self.params) for _ in self.archs]
        chunks = list(zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True))
        total = 0.0
        n_backward = len(chunks) * len(self.archs)
        done = 0
        for c, (xc, yc) in enumerate(chunks):
            share = xc.shape[0] / x.shape[0]
            teacher_logits = self._teach(xc, c, x.device.type)
            for i, arch in enumerate(self.archs):
                done += 1
                loss, logits = self._backward(i, arch, c, xc, yc, teacher_logits, share, x.device.type,
                                              last=done >= n_backward)
                total += float(loss.detach()) * share * self.betas[i]
                if self.params:
                    _mark_touched(self.params, before, touched[i])
                if self.inplace_teacher and i == 0:
                    teacher_logits = logits.detach()
        if self.params:
            _average(self.params, touched, self.betas)
        return total

    def _teach(self, xc: torch.Tensor, c: int, device_type: str) -> torch.Tensor | None:
        """The teacher's logits of chunk ``c`` (train mode, no grad), or None without a teacher."""
        if self.teacher is None:
            return None
        if self.step_seed is not None:  # the teacher runs in train mode: its dropout draws from this seed
            torch.manual_seed(self.step_seed * 1_000_003 + (self.first_chunk + c) * 101 + 100)
        self.teacher.train()
        with torch.no_grad(), self.amp(device_type):
            return self.teacher(xc)

    def _backward(self, i: int, arch: Architecture, c: int, xc: torch.Tensor, yc: torch.Tensor,
                  teacher_logits: torch.Tensor | None, share: float, device_type: str, *, last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward subnet ``i`` on chunk ``c``; returns its (unscaled) loss and its logits."""
        if self.step_seed is not None:
            torch.manual_seed(self.step_seed * 1_000_003 + (self.first_chunk + c) * 101 + i)
        self.net.set_active(arch)
        if self.before_subnet is not None:
            self.before_subnet(i, arch)
        inp = resize(xc, self.resolution_of(arch)) if self.resolution_of is not None else xc
        ctx = self.no_sync() if (self.no_sync is not None and not last) else contextlib.nullcontext()
        with ctx:
            with self.amp(device_type):
                logits = self.model(inp)
                loss = self.loss_fn(i, logits, yc, teacher_logits)
            scaled = loss * (share * self.betas[i])
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss, logits


def _mark_touched(params: list[nn.Parameter], before: list[torch.Tensor | None],
                  touched: list[torch.Tensor | None]) -> None:
    """OR into ``touched`` the elements whose gradient changed since ``before``; then update ``before``."""
    for k, p in enumerate(params):
        if p.grad is None:
            continue
        prev = before[k]
        delta = p.grad != 0 if prev is None else p.grad != prev
        touched[k] = delta if touched[k] is None else touched[k] | delta  # type: ignore[operator]
        before[k] = p.grad.detach().clone()


def _average(params: list[nn.Parameter], touched: list[list[torch.Tensor | None]], betas: list[float]) -> None:
    """Divide each gradient element by the summed weights of the subnets that touched it."""
    for k, p in enumerate(params):
        if p.grad is None:
            continue
        norm = torch.zeros_like(p.grad)
        for s, beta in enumerate(betas):
            mask = touched[s][k]
            if mask is not None:
                norm += beta * mask
        p.grad.div_(torch.where(norm > 0, norm, torch.ones_like(norm)))


def build_optimizer(net: nn.Module, *, name: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
                    weight_decay: float = 3e-5) -> torch.optim.Optimizer:
    """SGD (Nesterov when ``momentum > 0``) or AdamW; no weight decay on BN parameters and biases (the 1-D
    parameters), as in the Once-for-All reference (whose kernel-transformation matrices do decay)."""
    decay, no_decay = [], []
    for p in net.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
