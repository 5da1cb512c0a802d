"""SortedNet-style nested models: many sub-models sharing parameters, each a prefix of the next.

Typical use::

    from nasforge.supernets import create_supernet
    from nasforge.supernets.sorted import select, sub_models

    net = create_supernet("sorted-mlp")          # 160 nested MLPs (widths 4..128 x depths 1..5)
    arch = select(net, budget=5_000)             # largest sub-model with at most 5k MACs
    # or by measured latency, with a timer from the export layer (e.g. nasforge.export.torch_cpu_latency):
    # arch = select(net, 0.2, "latency_ms", latency_fn=torch_cpu_latency)
    static = net.extract(arch)                   # plain nn.Sequential with copied weights

Build your own :class:`SortedNetwork` from the blocks (see :mod:`nasforge.supernets.sorted.network`).
"""

from nasforge.supernets.sorted.blocks import (
    ElasticSize,
    GlobalAvgPool2d,
    PatchEmbedding,
    Residual,
    SelfAttention,
    SortedBasicBlock,
    SortedConvBN,
    SortedEncoderBlock,
    SortedLinear,
    SortedResidual,
    SortedSelfAttention,
    SortedSequential,
    TokenMeanPool,
    attend,
    percent_of,
)
from nasforge.supernets.sorted.models import (
    SortedMLPConfig,
    SortedResNetConfig,
    SortedTransformerConfig,
    build_sorted_mlp,
    build_sorted_resnet,
    build_sorted_transformer,
)
from nasforge.supernets.sorted.network import SortedModule, SortedNetwork
from nasforge.supernets.sorted.selection import METRICS, LatencyFn, select, sub_models

__all__ = [
    "METRICS",
    "ElasticSize",
    "GlobalAvgPool2d",
    "LatencyFn",
    "PatchEmbedding",
    "Residual",
    "SelfAttention",
    "SortedBasicBlock",
    "SortedConvBN",
    "SortedEncoderBlock",
    "SortedLinear",
    "SortedMLPConfig",
    "SortedModule",
    "SortedNetwork",
    "SortedResNetConfig",
    "SortedResidual",
    "SortedSelfAttention",
    "SortedSequential",
    "SortedTransformerConfig",
    "TokenMeanPool",
    "attend",
    "build_sorted_mlp",
    "build_sorted_resnet",
    "build_sorted_transformer",
    "percent_of",
    "select",
    "sub_models",
]
