"""Contract of the trainer family: every registered trainer builds from its config, trains a tiny supernet for a
couple of steps per phase with a finite loss, and its checkpoint and optimizer state round-trip."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from nasforge.data import DataSplits, Split, load_data
from nasforge.supernets import create_supernet
from nasforge.supernets.checkpoint import load_supernet
from nasforge.supernets.trainers import TrainConfig, Trainer, get_trainer, list_trainers
from nasforge.supernets.trainers.steps import build_optimizer

#: a tiny mbv3 supernet (a few tens of thousands of weights), as in the supernets tests
TINY: dict[str, Any] = {
    "stem_width": 8, "first_block_width": 8, "stages": ((16, 2, "relu", False), (24, 2, "hswish", True)),
    "kernel_sizes": (3, 5), "expand_ratios": (2, 4), "depths": (1, 2), "resolutions": (12, 16),
    "final_expand_width": 48, "feature_width": 64,
}
#: one short epoch (2 steps of 32 images) per phase; the multi-phase schedule (ps) shrinks to 1 epoch a phase
CONFIG: dict[str, Any] = {"epochs": 1, "warmup_epochs": 0, "lr": 0.05, "batch_size": 32, "calib_images": 32,
                          "schedule_scale": 1e-4, "eval_every": 0, "seed": 0}


@pytest.fixture(scope="module")
def tiny_data() -> DataSplits:
    digits = load_data("digits", image_size=16, seed=0)
    return dataclasses.replace(digits, train=Split(digits.train.x[:64].clone(), digits.train.y[:64].clone()),
                               val=Split(digits.val.x[:32].clone(), digits.val.y[:32].clone()))


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_the_family_has_its_builtins() -> None:
    assert {"ps", "deps", "sorted", "sandwich", "full"} <= set(list_trainers())


@pytest.mark.parametrize("name", list_trainers())
def test_trainer_trains_and_its_state_round_trips(name: str, tiny_data: DataSplits, tmp_path: Path) -> None:
    trainer = get_trainer(name, TrainConfig(**CONFIG))
    assert isinstance(trainer, Trainer) and trainer.name == name
    net = create_supernet("mbv3-small", **TINY)
    phases = trainer.phases(net.space)
    assert phases and trainer.total_epochs(net.space) == sum(p.epochs for p in phases)

    history = trainer.fit(net, tiny_data, supernet_name="mbv3-small", supernet_options=TINY, checkpoint_dir=tmp_path)

    assert len(history) == trainer.total_epochs(net.space)
    assert all(math.isfinite(record["loss"]) for record in history)
    loaded, state = load_supernet(tmp_path / "last.pt")
    assert state["trainer"] == name
    mine, theirs = net.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert trainer.optimizer is not None
    optimizer = build_optimizer(loaded, name=trainer.config.optimizer, lr=trainer.config.lr)
    optimizer.load_state_dict(state["optimizer"])
    assert optimizer.state_dict()["param_groups"][0]["lr"] == trainer.optimizer.state_dict()["param_groups"][0]["lr"]
