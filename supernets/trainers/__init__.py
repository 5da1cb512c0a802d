"""Weight-sharing supernet trainers behind one interface (registry: :func:`list_trainers`)."""

from nasforge.supernets.trainers.base import (
    Phase,
    TrainConfig,
    Trainer,
    TrainHyperparams,
    get_trainer,
    list_trainers,
    register_trainer,
)
from nasforge.supernets.trainers.progressive import REFERENCE_SCHEDULE, ProgressiveShrinkingTrainer
from nasforge.supernets.trainers.sandwich import SandwichTrainer, soft_cross_entropy

__all__ = [
    "Phase",
    "ProgressiveShrinkingTrainer",
    "REFERENCE_SCHEDULE",
    "SandwichTrainer",
    "TrainConfig",
    "TrainHyperparams",
    "Trainer",
    "get_trainer",
    "list_trainers",
    "register_trainer",
    "soft_cross_entropy",
]
