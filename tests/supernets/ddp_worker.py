"""Run by ``test_distributed.py`` under torchrun (or directly for the 1-process reference): a few PS steps on a
small slice of digits; every rank saves its trained parameters to ``<argv[1]>.rank<r>``.

Arguments: output prefix, micro-batches per process, expected world size[, trainer: ps (default) or deps]."""

from __future__ import annotations

import dataclasses
import sys

import torch

from nasforge.data import Split, load_data
from nasforge.distributed import init_distributed
from nasforge.supernets import create_supernet
from nasforge.supernets.trainers import TrainConfig, get_trainer
from nasforge.supernets.trainers.progressive import ProgressiveShrinkingTrainer

OPTIONS = {"num_classes": 10, "in_channels": 1, "resolutions": [12, 16]}


class ShortPS(ProgressiveShrinkingTrainer):
    """Progressive shrinking cut to two short phases: the teacher, then the expand phase with 4 subnets."""

    def phases(self, space):  # type: ignore[no-untyped-def]
        full = super().phases(space)
        return [dataclasses.replace(full[0], epochs=1, warmup_epochs=0),
                dataclasses.replace(full[-1], epochs=1, warmup_epochs=0, expand_stage=None)]


def run(out: str, micro_batches: int, world_expected: int, trainer: str = "ps") -> None:
    torch.set_num_threads(1)
    data = load_data("digits", image_size=16, seed=0)
    data = dataclasses.replace(data, train=Split(data.train.x[:96], data.train.y[:96]),
                               val=Split(data.val.x[:32], data.val.y[:32]))
    ctx = init_distributed("cpu")
    assert ctx.world_size == world_expected, (ctx.world_size, world_expected)
    torch.manual_seed(0)
    net = create_supernet("mbv3-small", **OPTIONS)
    if trainer == "deps":  # 2 epochs of 3 steps: the full model, then 3 sandwich steps with ramp weights < 1
        cfg = TrainConfig(batch_size=32, micro_batches=micro_batches, seed=0, calib_images=32, epochs=2,
                          warmup_epochs=0, trainer_options={"ramp_epochs": 1, "shrink_point": 1.0})
        get_trainer("deps", cfg).fit(net, data, supernet_name="mbv3-small", supernet_options=OPTIONS, dist=ctx)
    else:
        cfg = TrainConfig(batch_size=32, micro_batches=micro_batches, seed=0, calib_images=32)
        ShortPS(cfg).fit(net, data, supernet_name="mbv3-small", supernet_options=OPTIONS, dist=ctx)
    torch.save({k: v.detach().clone() for k, v in net.named_parameters()}, f"{out}.rank{ctx.rank}")


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
