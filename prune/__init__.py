"""Structured pruning that keeps dependencies consistent, and the graph-metanetwork pruner.

Every public name of ``nasforge.prune`` is listed here; the implementation lives in private modules.

Pruning: :func:`prune` removes whole channel groups (coupled through residual adds, concat, split, grouped and
depthwise convs, attention heads) from a copy of a model until a MACs, params or measured-latency target is met,
ranking groups by a registered criterion (:func:`list_criteria`: ``l1``, ``l2``, ``taylor``, ``bn-scale``,
``lamp``, ``random``; with ``include_metanet=True`` also ``gmn``, which rewrites the weights with the graph
metanetwork first and needs one). A latency is measured by the callable passed as ``latency`` (for a
device: :func:`nasforge.export.device_latency`). With ``layer_latency`` (a :class:`LayerLatencyTable` of one
device's measured conv/linear layers; :func:`nasforge.export.layer_latency` measures them) the channels are
allocated by latency saved per importance lost, with counts kept multiples of ``round_to``, instead of one global
ratio. It is built on Torch-Pruning's dependency graph;
patterns Torch-Pruning mishandles are found by probing and left alone (or refused). :func:`save_pruned` /
:func:`load_pruned` store a pruned model as plain data (base model, pruning history, tensors).

Zoo: :func:`create_model` builds reference models (CIFAR ResNet-8..56, a MobileNetV2-style net).

Training helpers: :func:`train_classifier`, :func:`evaluate_accuracy`, :func:`make_loss_fn`.
"""

from __future__ import annotations

from ._api import PruneReport, layer_widths, prune
from ._criteria import Criterion, get_criterion, list_criteria, register_criterion
from ._engine import PruneError, find_unsupported, output_layers, replay_history
from ._finetune import evaluate_accuracy, make_loss_fn, train_classifier
from ._gmn import MetaTrainConfig, meta_train, save_metanet
from ._io import PRUNED_FORMAT, build_base, load_pruned, read_pruned, save_pruned
from ._layer_table import LayerLatencyTable, LayerMeasure, LayerShape
from ._target import Target, model_macs, model_params, parse_target
from ._zoo import create_model, list_models, register_model

__all__ = [
    "prune",
    "PruneReport",
    "PruneError",
    "layer_widths",
    "Criterion",
    "register_criterion",
    "list_criteria",
    "get_criterion",
    "LayerLatencyTable",
    "LayerMeasure",
    "LayerShape",
    "find_unsupported",
    "output_layers",
    "replay_history",
    "Target",
    "parse_target",
    "model_macs",
    "model_params",
    "save_pruned",
    "load_pruned",
    "read_pruned",
    "build_base",
    "PRUNED_FORMAT",
    "create_model",
    "list_models",
    "register_model",
    "train_classifier",
    "evaluate_accuracy",
    "make_loss_fn",
    "MetaTrainConfig",
    "meta_train",
    "save_metanet",
]
