"""Dynamic batch norm: the active channels use the leading slice of the parameters and running statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicBatchNorm2d"]


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the first ``C`` channels, where ``C`` is the input's channel count.

    In training mode the running statistics of the active slice are updated in place; the other channels'
    statistics are left alone. Subnets must be BN-recalibrated before evaluation (see
    :func:`nasforge.supernets.recalibrate_bn`), since shared statistics mix many widths.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c] if self.weight is not None else None,
            self.bias[:c] if self.bias is not None else None,
            use_batch,
            factor,
            self.eps,
        )

    def to_static(self, channels: int) -> nn.BatchNorm2d:
        """A plain ``nn.BatchNorm2d`` with a copy of the first ``channels`` parameters and statistics."""
        bn = nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum, affine=self.affine)
        with torch.no_grad():
            if self.affine:
                bn.weight.copy_(self.weight[:channels])
                bn.bias.copy_(self.bias[:channels])
            if self.running_mean is not None:
                bn.running_mean.copy_(self.running_mean[:channels])
                bn.running_var.copy_(self.running_var[:channels])
                bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn
