"""Elastic layers, weight-sharing supernets and their search spaces.

Typical use::

    from nasforge.supernets import create_supernet
    net = create_supernet("mbv3-small")
    arch = net.sample_active(0)          # plain data: nasforge.supernets.Architecture
    static = net.extract(arch)           # nn.Module with copied weights
    net.macs(arch), net.params(arch)     # exact, analytic
"""

from nasforge.supernets.arch import Architecture, DepthGate, Dimension, SearchSpace
from nasforge.supernets.base import (
    Supernet,
    SupernetEntry,
    create_supernet,
    get_supernet_entry,
    list_supernets,
    register_supernet,
)
from nasforge.supernets.bn_calib import recalibrate_bn
from nasforge.supernets.mbv3 import ElasticMobileNetV3, MBV3Config, MobileNetV3Subnet, Stage, mbv3_cost
from nasforge.supernets.ofa_compat import (
    load_ofa_checkpoint,
    nasforge_to_ofa_state_dict,
    ofa_to_nasforge_state_dict,
)
from nasforge.supernets.profile import count_macs, count_params
from nasforge.supernets.reorganize import reorganize_channels
from nasforge.supernets.sorted import SortedModule, SortedNetwork  # more in nasforge.supernets.sorted
from nasforge.supernets.warm_start import load_initial_weights

__all__ = [
    "Architecture",
    "DepthGate",
    "Dimension",
    "ElasticMobileNetV3",
    "MBV3Config",
    "MobileNetV3Subnet",
    "SearchSpace",
    "SortedModule",
    "SortedNetwork",
    "Stage",
    "Supernet",
    "SupernetEntry",
    "count_macs",
    "count_params",
    "create_supernet",
    "get_supernet_entry",
    "list_supernets",
    "load_initial_weights",
    "load_ofa_checkpoint",
    "mbv3_cost",
    "nasforge_to_ofa_state_dict",
    "ofa_to_nasforge_state_dict",
    "recalibrate_bn",
    "register_supernet",
    "reorganize_channels",
]
