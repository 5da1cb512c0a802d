"""SortedNet training (Valipour et al., 2023): many nested sub-models at once, no search at inference.

Every step samples ``g_acc`` sub-models, each dimension independently (uniform by default; see
:data:`DISTRIBUTIONS`), runs forward and backward for each and accumulates their gradients before one update;
the loss is the mean of their cross-entropies (each sub-model's gradient weight is ``1 / g_acc``). With
``kd=True`` each sub-model also distils (``kd_weight`` x soft cross-entropy) from the full model's logits on the
same batch, computed once per step without gradients. Works on any supernet; on a nested ("sorted") space, where
every dimension keeps the first k units, the trained sub-models are sorted and
:func:`nasforge.supernets.sorted.select` picks one for a budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.supernets.arch import Architecture, Dimension, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.trainers.base import Phase, StepInfo, Trainer, TrainerOptions, register_trainer

__all__ = ["DISTRIBUTIONS", "SortedOptions", "SortedTrainer", "parse_sampling"]

#: per-dimension sampling distributions: ``n`` choices (ascending) -> unnormalised weights
DISTRIBUTIONS: dict[str, Callable[[int], list[float]]] = {
    "uniform": lambda n: [1.0] * n,
    "large": lambda n: [float(i + 1) for i in range(n)],   # p ~ rank: favours the larger choices
    "small": lambda n: [float(n - i) for i in range(n)],   # p ~ reverse rank: favours the smaller choices
    "max": lambda n: [1.0] * (n - 1) + [float(n)],          # the largest choice half the time
}


def parse_sampling(spec: str, space: SearchSpace) -> dict[str, str]:
    """``"uniform"`` or ``"large,d:uniform"`` (a default, then ``DIM:DIST`` overrides) -> distribution per dim."""
    default, per_dim = "uniform", {}
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if ":" in token:
            dim, dist = (x.strip() for x in token.split(":", 1))
            if dim not in space.names:
                raise ConfigError(f"sampling {spec!r}: space {space.name!r} has no dimension {dim!r}; it has "
                                  f"{list(space.names)}")
            per_dim[dim] = dist
        else:
            default = token
    out = {d: per_dim.get(d, default) for d in space.names}
    bad = sorted({v for v in out.values() if v not in DISTRIBUTIONS})
    if bad:
        raise ConfigError(f"sampling {spec!r}: unknown distribution(s) {bad}; choose from {sorted(DISTRIBUTIONS)}")
    return out


@dataclass(frozen=True)
class SortedOptions(TrainerOptions):
    """Options of :class:`SortedTrainer`.

    Args:
        g_acc: sub-models sampled per step (their gradients accumulate before one update).
        sampling: per-dimension distribution, e.g. ``uniform`` or ``large,d:uniform`` (:data:`DISTRIBUTIONS`).
        kd: also distil every sub-model from the full model's logits.
    """

    g_acc: int = 4
    sampling: str = "uniform"
    kd: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.g_acc < 1:
            raise ConfigError(f"g_acc {self.g_acc} must be >= 1")


class _FullModel(nn.Module):
    """Calls a supernet with its largest sub-model active (a teacher that is the model being trained)."""

    def __init__(self, net: Supernet) -> None:
        super().__init__()
        object.__setattr__(self, "_net", net)  # not a submodule: no second copy in state dicts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net: Supernet = object.__getattribute__(self, "_net")
        net.set_active(net.space.largest())
        return net(x)


@register_trainer("sorted")
class SortedTrainer(Trainer):
    """SortedNet: ``g_acc`` sub-models per step, per-dimension sampling, mean loss, optional KD."""

    Options = SortedOptions
    options: SortedOptions

    def phases(self, space: SearchSpace) -> list[Phase]:
        self._dists = parse_sampling(self.options.sampling, space)
        cfg = self.config
        return [Phase("sorted", cfg.epochs, cfg.lr, min(cfg.warmup_epochs, cfg.epochs), self.options.g_acc,
                      distill=self.options.kd)]

    def sample(self, space: SearchSpace, rng: random.Random) -> Architecture:
        """One sub-model, every position of every dimension drawn from its distribution."""
        dists = getattr(self, "_dists", None) or parse_sampling(self.options.sampling, space)
        genes: dict[str, int | list[int]] = {}
        for d in space.dims:
            draws = [_draw(d, dists[d.name], rng) for _ in range(d.positions)]
            genes[d.name] = draws[0] if d.is_scalar else draws
        return space.canonical(genes)

    def step_archs(self, space: SearchSpace, rng: random.Random, phase: Phase) -> list[Architecture]:
        return [self.sample(space, rng) for _ in range(self.options.g_acc)]

    def subnet_weights(self, step: StepInfo, archs: list[Architecture]) -> list[float] | None:
        return [1.0 / len(archs)] * len(archs)

    def start_phase(self, net: Supernet, index: int, phase: Phase, *, fresh: bool, checkpoint_dir: object) -> None:
        self.teacher = _FullModel(net) if self.options.kd else None


def _draw(d: Dimension, dist: str, rng: random.Random) -> int:
    return rng.choices(d.choices, weights=DISTRIBUTIONS[dist](len(d.choices)))[0]
