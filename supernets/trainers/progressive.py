"""Once-for-All progressive shrinking (Cai et al., ICLR 2020), from the full-network teacher to every subnet.

The schedule follows the reference implementation: a full network (largest kernel, expand ratio and depth) is
trained first and becomes the distillation teacher; then the supernet is fine-tuned with the elastic kernel,
elastic depth (two phases) and elastic expand ratio (two phases, channels re-organised by importance at the
start of each). Every phase has its own epochs, learning rate, warm-up and number of subnets per step; one knob
(``schedule_scale``) shrinks all epochs in proportion so a small run keeps the shape of the schedule. The input
resolution is sampled per batch and shared by the teacher and every subnet of the step.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from nasforge.errors import CheckpointError
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.checkpoint import load_checkpoint
from nasforge.supernets.trainers.base import Phase, Trainer, register_trainer

__all__ = ["ProgressiveShrinkingTrainer", "PSPhaseSpec", "REFERENCE_SCHEDULE", "REFERENCE_BATCH"]

#: batch size (per GPU) that the reference learning rates are quoted for; lr scales linearly with the batch
REFERENCE_BATCH = 64


@dataclass(frozen=True)
class PSPhaseSpec:
    """One phase of the reference schedule, before scaling.

    ``elastic`` names the dimensions that are elastic in this phase and how many of their largest choices are
    open (``None``: all); the others stay at their largest choice.
    """

    name: str
    epochs: int
    lr: float
    warmup_epochs: int
    subnets_per_step: int
    elastic: tuple[tuple[str, int | None], ...]
    expand_stage: int | None = None
    distill: bool = True


#: The Once-for-All schedule for MobileNetV3 (epochs after warm-up; lr per 64 images). The full-network phase
#: uses the paper's setting (180 epochs, lr 2.6 at batch 2048); the others are the reference code's.
REFERENCE_SCHEDULE: tuple[PSPhaseSpec, ...] = (
    PSPhaseSpec("teacher", 180, 2.6 * REFERENCE_BATCH / 2048, 5, 1, (), distill=False),
    PSPhaseSpec("kernel", 120, 3e-2, 5, 1, (("ks", None),)),
    PSPhaseSpec("depth-1", 25, 2.5e-3, 0, 2, (("ks", None), ("d", 2))),
    PSPhaseSpec("depth-2", 120, 7.5e-3, 5, 2, (("ks", None), ("d", None))),
    PSPhaseSpec("expand-1", 25, 2.5e-3, 0, 4, (("ks", None), ("d", None), ("e", 2)), expand_stage=0),
    PSPhaseSpec("expand-2", 120, 7.5e-3, 5, 4, (("ks", None), ("d", None), ("e", None)), expand_stage=1),
)


def _choices(space: SearchSpace, elastic: tuple[tuple[str, int | None], ...]) -> dict[str, tuple[int, ...]]:
    open_ = dict(elastic)
    out: dict[str, tuple[int, ...]] = {}
    for name in ("ks", "e", "d"):
        if name not in space.names:
            continue
        choices = space.dim(name).choices
        if name in open_:
            n = open_[name]
            out[name] = choices if n is None else choices[-n:]
        else:
            out[name] = choices[-1:]
    return out


@register_trainer("ps")
class ProgressiveShrinkingTrainer(Trainer):
    """Progressive shrinking: teacher -> kernel -> depth-1 -> depth-2 -> expand-1 -> expand-2.

    Phase epochs are ``max(1, round(reference * schedule_scale))`` (warm-up ``round(5 * schedule_scale)``);
    learning rates are the reference's times ``batch_size / 64 * lr_scale``. After the teacher phase, the full
    network is frozen into a static copy that teaches every later phase (soft cross-entropy with weight
    ``kd_weight``, teacher in train mode under ``no_grad``, as in the reference). Needs a space with ``ks``,
    ``e`` and ``d`` dimensions (the elastic MobileNetV3 family).
    """

    shared_resolution = True

    def phases(self, space: SearchSpace) -> list[Phase]:
        cfg = self.config
        scale, lr_mult = cfg.schedule_scale, cfg.batch_size / REFERENCE_BATCH * cfg.lr_scale
        out = []
        for spec in REFERENCE_SCHEDULE:
            warm = round(spec.warmup_epochs * scale)
            main = max(1, round(spec.epochs * scale))
            out.append(Phase(spec.name, main + warm, spec.lr * lr_mult, warm, spec.subnets_per_step,
                             _choices(space, spec.elastic), spec.expand_stage, spec.distill))
        return out

    def step_archs(self, space: SearchSpace, rng: random.Random, phase: Phase) -> list[Architecture]:
        return [space.sample(rng) for _ in range(phase.subnets_per_step)]

    def start_phase(self, net: Supernet, index: int, phase: Phase, *, fresh: bool,
                    checkpoint_dir: Path | None) -> None:
        if phase.distill and self.teacher is None and index > 0:
            self.teacher = self._load_teacher(net, checkpoint_dir)
        if fresh and phase.expand_stage is not None:
            net.reorganize_channels(phase.expand_stage)

    def end_phase(self, net: Supernet, index: int, phase: Phase) -> None:
        if index == 0:
            self.teacher = _freeze(net)

    def _load_teacher(self, net: Supernet, checkpoint_dir: Path | None) -> nn.Module:
        path = checkpoint_dir / f"phase-1-{REFERENCE_SCHEDULE[0].name}.pt" if checkpoint_dir else None
        if path is None or not path.is_file():
            raise CheckpointError(f"resuming progressive shrinking needs the teacher checkpoint {path}; it is "
                                  "missing, so restart the run without --resume")
        state = load_checkpoint(path)
        copy_net = copy.deepcopy(net)
        try:
            copy_net.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"teacher checkpoint {path} does not fit this supernet: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        return _freeze(copy_net)


def _freeze(net: Supernet) -> nn.Module:
    """A static copy of the full network (largest subnet) with gradients off."""
    teacher = net.extract(net.space.largest())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.train()
