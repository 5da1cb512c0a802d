"""Once-for-All progressive shrinking (Cai et al., ICLR 2020), from the full-network teacher to every subnet.

The schedule follows the reference implementation: a full network (largest kernel, expand ratio and depth) is
trained first and becomes the distillation teacher; then the supernet is fine-tuned with the elastic kernel,
elastic depth (two phases) and elastic expand ratio (two phases, channels re-organised by importance at the
start of each). Every phase has its own epochs, learning rate, warm-up and number of subnets per step; one knob
(``schedule_scale``) shrinks all epochs in proportion so a small run keeps the shape of the schedule. The input
resolution is sampled per batch and shared by the teacher and every subnet of the step.

The ``phases`` option runs a subset of the schedule (``"kernel"``, ``"depth-1,depth-2"``, ``"2-6"``), usually from
weights loaded with :func:`nasforge.supernets.warm_start.load_initial_weights` (``--init``), as the reference runs
each of its tasks from the previous one's checkpoint. Without the teacher phase, the frozen teacher is the full
network of the weights the run starts from (or of the ``teacher`` file), written to ``teacher.pt`` so that a
resumed run distils from the same network. Per-phase checkpoints keep their number in the full schedule.
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nasforge.errors import CheckpointError, ConfigError
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.checkpoint import load_checkpoint, save_checkpoint
from nasforge.supernets.trainers._dropout import dropout_layers
from nasforge.supernets.trainers.base import Phase, Trainer, TrainerOptions, register_trainer
from nasforge.supernets.warm_start import load_initial_weights

__all__ = ["ProgressiveShrinkingTrainer", "PSOptions", "PSPhaseSpec", "REFERENCE_SCHEDULE", "REFERENCE_BATCH",
           "PHASE_NAMES", "TEACHER_FILE", "parse_phases"]

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


#: names of the phases of :data:`REFERENCE_SCHEDULE`, in order
PHASE_NAMES: tuple[str, ...] = tuple(spec.name for spec in REFERENCE_SCHEDULE)
#: where a run without the teacher phase keeps its frozen teacher (a supernet checkpoint)
TEACHER_FILE = "teacher.pt"


def parse_phases(text: str) -> tuple[int, ...]:
    """0-based indices into :data:`REFERENCE_SCHEDULE` of a ``phases`` option, in the reference order.

    ``text`` is ``"all"`` or a comma-separated list of phase names (``teacher``, ``kernel``, ``depth-1``, ...),
    1-based indices (``2``) and ranges of them (``2-6``); duplicates are dropped.

    Raises:
        ConfigError: an item is none of these (the message lists the valid names).
    """
    if text.strip().lower() == "all":
        return tuple(range(len(PHASE_NAMES)))
    chosen: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if item in PHASE_NAMES:
            chosen.add(PHASE_NAMES.index(item))
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        lo = int(match.group(1)) if match else 0
        hi = int(match.group(2) or lo) if match else 0
        if not 1 <= lo <= hi <= len(PHASE_NAMES):
            raise ConfigError(f"phase {item!r} in phases={text!r} is not a phase of progressive shrinking; use "
                              f"'all' or a comma-separated subset of {', '.join(PHASE_NAMES)} (or their numbers "
                              f"1-{len(PHASE_NAMES)}, ranges like 2-6)")
        chosen.update(range(lo - 1, hi))
    return tuple(sorted(chosen))


@dataclass(frozen=True)
class PSOptions(TrainerOptions):
    """Options of :class:`ProgressiveShrinkingTrainer`.

    Args:
        phases: the phases to run, in the reference order (see :func:`parse_phases`): ``"all"`` or e.g.
            ``"kernel"``, ``"depth-1,depth-2"``, ``"2-6"``.
        teacher: without the teacher phase, a file whose full network teaches (anything
            :func:`~nasforge.supernets.warm_start.load_initial_weights` reads, e.g. the reference's
            ``ofa_D4_E6_K7``, which its depth and expand tasks distil from); empty: the full network of the
            weights the run starts from.
    """

    phases: str = "all"
    teacher: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        selected = parse_phases(self.phases)  # a bad name fails when the trainer is created
        if self.teacher and 0 in selected:
            raise ConfigError(f"teacher={self.teacher!r} replaces the teacher phase, but phases={self.phases!r} "
                              "trains it; drop the teacher phase or the teacher option")

    @property
    def selected(self) -> tuple[int, ...]:
        """Indices into :data:`REFERENCE_SCHEDULE` of the phases to run."""
        return parse_phases(self.phases)


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
    learning rates are the reference's times ``batch_size / 64 * lr_scale`` (the reference's ``base_lr *
    num_gpus``), and a warm-up starts from one 64-image GPU's rate, ``lr * lr_scale`` (the reference's
    ``warmup_lr = base_lr``; capped at the peak for batches under 64). After the teacher phase, the full network
    is frozen into a static copy that teaches every later phase (soft cross-entropy with weight ``kd_weight``;
    dropout 0, train mode under ``no_grad``, as in the reference). :class:`PSOptions` selects phases. Needs a
    space with ``ks``, ``e`` and ``d`` dimensions (the elastic MobileNetV3 family).
    """

    Options = PSOptions
    options: PSOptions
    shared_resolution = True

    def phases(self, space: SearchSpace) -> list[Phase]:
        cfg = self.config
        scale, lr_mult = cfg.schedule_scale, cfg.batch_size / REFERENCE_BATCH * cfg.lr_scale
        out = []
        for spec in (REFERENCE_SCHEDULE[i] for i in self.options.selected):
            warm = round(spec.warmup_epochs * scale)
            main = max(1, round(spec.epochs * scale))
            peak = spec.lr * lr_mult
            out.append(Phase(spec.name, main + warm, peak, warm, spec.subnets_per_step,
                             _choices(space, spec.elastic), spec.expand_stage, spec.distill,
                             warmup_lr=min(spec.lr * cfg.lr_scale, peak) if warm else 0.0))
        return out

    def step_archs(self, space: SearchSpace, rng: random.Random, phase: Phase) -> list[Architecture]:
        return [space.sample(rng) for _ in range(phase.subnets_per_step)]

    def phase_checkpoint_name(self, index: int, phase: Phase, n_phases: int = 0) -> str:
        """``phase-<i>-<name>.pt`` with ``i`` the phase's number in the full schedule (1 = teacher), whichever
        phases run (and even when only one does)."""
        return _phase_file(phase.name)

    def start_phase(self, net: Supernet, index: int, phase: Phase, *, fresh: bool,
                    checkpoint_dir: Path | None) -> None:
        if phase.distill and self.teacher is None:
            self.teacher = self._teacher(net, index, fresh, checkpoint_dir)
        if fresh and phase.expand_stage is not None:
            net.reorganize_channels(phase.expand_stage)

    def end_phase(self, net: Supernet, index: int, phase: Phase) -> None:
        if phase.name == PHASE_NAMES[0]:
            self.teacher = _freeze(net)

    def _teacher(self, net: Supernet, index: int, fresh: bool, checkpoint_dir: Path | None) -> nn.Module:
        """The frozen teacher when the first distilling phase starts or a run resumes after it."""
        if 0 in self.options.selected:  # trained in this run; resuming after it: its phase checkpoint holds it
            name = _phase_file(PHASE_NAMES[0])
            return _load_teacher(net, checkpoint_dir / name if checkpoint_dir else None, "teacher checkpoint")
        path = checkpoint_dir / TEACHER_FILE if checkpoint_dir else None
        if not (index == 0 and fresh):  # resumed: the teacher of the run's start was saved then
            return _load_teacher(net, path, "distillation teacher (the full network the run started from)")
        source = net
        if self.options.teacher:
            source = copy.deepcopy(net)
            load_initial_weights(source, self.options.teacher)
        if path is not None and _is_main_process():
            save_checkpoint(path, source, getattr(net, "name", type(net).__name__), net.config_dict())
        return _freeze(source)


def _phase_file(name: str) -> str:
    return f"phase-{PHASE_NAMES.index(name) + 1}-{name}.pt"


def _load_teacher(net: Supernet, path: Path | None, what: str) -> nn.Module:
    """A frozen teacher from the supernet checkpoint ``path`` (CheckpointError if missing or foreign)."""
    if path is None or not path.is_file():
        raise CheckpointError(f"resuming progressive shrinking needs the {what} {path}; it is missing, so restart "
                              "the run without --resume")
    state = load_checkpoint(path)
    copy_net = copy.deepcopy(net)
    try:
        copy_net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"teacher checkpoint {path} does not fit this supernet: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    return _freeze(copy_net)


def _is_main_process() -> bool:
    """Whether this process writes shared files (rank 0, or the only process)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _freeze(net: Supernet) -> nn.Module:
    """A static copy of the full network (largest subnet) with gradients off and dropout 0, in train mode.

    The reference builds its teacher with ``dropout_rate=0`` and calls ``teacher_model.train()`` before every
    forward under ``no_grad`` (``train_ofa_net.py``, ``progressive_shrinking.train_one_epoch``): batch
    statistics in BN, no dropout.
    """
    teacher = net.extract(net.space.largest())
    for p in teacher.parameters():
        p.requires_grad_(False)
    for layer in dropout_layers(teacher):
        layer.p = 0.0  # type: ignore[assignment]
    return teacher.train()
