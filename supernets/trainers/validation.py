"""Validation during training, split over the processes of a job: BN recalibration and accuracy are computed on
each process's share of the images and summed, so every process ends with the same figures and no process reads
the whole validation set (nor copies it to its GPU).

``data`` is a :class:`nasforge.data.DataSplits`; its splits provide ``eval_batches(batch_size, resolution, rank=,
world=, limit=, device=, augment_seed=)`` (in-memory tensors or image files decoded on demand).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nasforge.distributed import DistContext
from nasforge.supernets.arch import Architecture, SearchSpace
from nasforge.supernets.base import Supernet
from nasforge.supernets.bn_calib import recalibrate_bn

__all__ = ["CALIBRATION_SEED", "subnet_accuracy", "validate_corners"]

#: seed of the training transforms of the BN-calibration images (fixed: the same images for every subnet)
CALIBRATION_SEED = 20_191_020
CALIBRATION_BATCH = 200
EVAL_BATCH = 256


@torch.no_grad()
def subnet_accuracy(net: Supernet, arch: Architecture | Mapping[str, Any], data: Any, ctx: DistContext | None = None,
                    calib_images: int = 2000) -> float:
    """Top-1 validation accuracy of the static subnet ``arch`` after BN recalibration on ``calib_images``
    training images (Once-for-All's protocol), computed jointly by every process of ``ctx``."""
    ctx = ctx or DistContext()
    arch = net.space.canonical(arch)
    r = net.resolution(arch)
    sub = net.extract(arch).to(ctx.device)
    calib = data.train.eval_batches(CALIBRATION_BATCH, r, rank=ctx.rank, world=ctx.world_size, limit=calib_images,
                                    device=ctx.device, augment_seed=CALIBRATION_SEED)
    recalibrate_bn(sub, calib, max_images=calib_images, reduce=ctx.all_reduce_sum if ctx.is_distributed else None)
    sub.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for x, y in data.val.eval_batches(EVAL_BATCH, r, rank=ctx.rank, world=ctx.world_size, device=ctx.device):
        counts[0] += (sub(x).argmax(1) == y).sum()
        counts[1] += len(y)
    ctx.all_reduce_sum(counts)
    return float(counts[0] / counts[1].clamp(min=1))


def validate_corners(net: Supernet, data: Any, space: SearchSpace | None = None, ctx: DistContext | None = None,
                     calib_images: int = 500) -> dict[str, float]:
    """``val_acc_max`` / ``val_acc_min``: validation accuracy of the largest and smallest subnets of ``space``
    (default: the whole space)."""
    space = space or net.space
    return {tag: subnet_accuracy(net, arch, data, ctx, calib_images)
            for tag, arch in (("val_acc_max", space.largest()), ("val_acc_min", space.smallest()))}
