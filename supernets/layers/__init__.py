"""Elastic (dynamic) layers: each runs a sub-shape of its largest weights and exports a static copy."""

from nasforge.supernets.layers._utils import make_activation, make_divisible
from nasforge.supernets.layers.conv import DynamicConv2d
from nasforge.supernets.layers.depth import ElasticDepth
from nasforge.supernets.layers.linear import DynamicLinear
from nasforge.supernets.layers.mbconv import DynamicMBConv, MBConv, mid_channels
from nasforge.supernets.layers.norm import DynamicBatchNorm2d
from nasforge.supernets.layers.se import DynamicSqueezeExcite, SqueezeExcite, se_hidden

__all__ = [
    "DynamicBatchNorm2d",
    "DynamicConv2d",
    "DynamicLinear",
    "DynamicMBConv",
    "DynamicSqueezeExcite",
    "ElasticDepth",
    "MBConv",
    "SqueezeExcite",
    "make_activation",
    "make_divisible",
    "mid_channels",
    "se_hidden",
]
