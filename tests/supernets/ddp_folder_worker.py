"""Run by ``test_stream_training.py`` under torchrun (or directly for the 1-process reference) on an image folder
streamed by loader workers.

1. Every rank reads its share of one epoch of the numbered folder (solid-colour PNGs whose colour encodes their
   number) and writes the numbers it saw to ``<out>.seen<rank>``.
2. Every rank trains two short progressive-shrinking phases on the same folder with the default augmentation
   and saves its parameters to ``<out>.rank<rank>``.

Arguments: folder, output prefix, micro-batches per process, expected world size.
"""

from __future__ import annotations

import json
import sys

import torch
from ddp_worker import ShortPS  # the sibling script: the same two short phases

from nasforge.data import EpochPlan, LoaderOptions, load_data
from nasforge.distributed import init_distributed
from nasforge.supernets import create_supernet
from nasforge.supernets.trainers import TrainConfig

OPTIONS = {"num_classes": 3, "in_channels": 3, "resolutions": [12, 16]}


def numbers(data, x: torch.Tensor) -> list[int]:  # type: ignore[no-untyped-def]
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    pixels = ((x * std + mean) * 255).round()[:, :2, 0, 0]
    return [int(r) + 256 * int(g) for r, g in pixels.tolist()]


def run(folder: str, out: str, micro_batches: int, world_expected: int) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    assert ctx.world_size == world_expected, (ctx.world_size, world_expected)
    plain = load_data(f"folder:{folder}", image_size=16, seed=0, augment={"preset": "none"},
                      loading=LoaderOptions(workers=2))
    plan = EpochPlan(len(plain.train), 8, seed=11, rank=ctx.rank, world=ctx.world_size)
    seen = [n for _, x, _ in plain.train.epoch_stream(plan) for n in numbers(plain, x)]
    with open(f"{out}.seen{ctx.rank}", "w") as fh:
        json.dump(seen, fh)
    data = load_data(f"folder:{folder}", image_size=16, seed=0, loading=LoaderOptions(workers=2))
    torch.manual_seed(0)
    net = create_supernet("mbv3-small", **OPTIONS)
    cfg = TrainConfig(batch_size=8, micro_batches=micro_batches, seed=0, calib_images=16)
    history = ShortPS(cfg).fit(net, data, supernet_name="mbv3-small", supernet_options=OPTIONS, dist=ctx)
    torch.save({k: v.detach().clone() for k, v in net.named_parameters()}, f"{out}.rank{ctx.rank}")
    if ctx.is_main:
        with open(f"{out}.history", "w") as fh:
            json.dump(history, fh)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
