"""Weight-sharing supernet trainers behind one interface (registry: :func:`list_trainers`).

Built-ins: ``ps`` (Once-for-All progressive shrinking), ``deps`` (delayed ε-shrinking), ``sorted`` (SortedNet),
``sandwich`` (BigNAS sandwich rule with in-place distillation) and ``full`` (one architecture trained alone).
"""

from nasforge.supernets.trainers.base import (
    Phase,
    StepInfo,
    TrainConfig,
    Trainer,
    TrainerOptions,
    TrainHyperparams,
    get_trainer,
    list_trainers,
    register_trainer,
    trainer_class,
)
from nasforge.supernets.trainers.deps import DepsOptions, DepsTrainer
from nasforge.supernets.trainers.full import FullOptions, FullTrainer
from nasforge.supernets.trainers.progressive import REFERENCE_SCHEDULE, ProgressiveShrinkingTrainer, PSOptions
from nasforge.supernets.trainers.sandwich import SandwichTrainer, soft_cross_entropy
from nasforge.supernets.trainers.sorted import DISTRIBUTIONS, SortedOptions, SortedTrainer, parse_sampling

__all__ = [
    "DISTRIBUTIONS",
    "DepsOptions",
    "DepsTrainer",
    "FullOptions",
    "FullTrainer",
    "Phase",
    "ProgressiveShrinkingTrainer",
    "PSOptions",
    "REFERENCE_SCHEDULE",
    "SandwichTrainer",
    "SortedOptions",
    "SortedTrainer",
    "StepInfo",
    "TrainConfig",
    "TrainHyperparams",
    "Trainer",
    "TrainerOptions",
    "get_trainer",
    "list_trainers",
    "parse_sampling",
    "register_trainer",
    "soft_cross_entropy",
    "trainer_class",
]
