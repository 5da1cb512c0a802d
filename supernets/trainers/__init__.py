"""Weight-sharing supernet trainers behind one interface (registry: :func:`list_trainers`)."""

from nasforge.supernets.trainers.base import (
    TrainConfig,
    Trainer,
    TrainHyperparams,
    get_trainer,
    list_trainers,
    register_trainer,
)
from nasforge.supernets.trainers.sandwich import SandwichTrainer, soft_cross_entropy

__all__ = [
    "SandwichTrainer",
    "TrainConfig",
    "TrainHyperparams",
    "Trainer",
    "get_trainer",
    "list_trainers",
    "register_trainer",
    "soft_cross_entropy",
]
