"""Graph-metanetwork pruning: meta-train a metanetwork that rewrites networks so that they prune well, and use it.

Meta-training (per step): map a trained network of the family to its graph, transform it with the metanetwork,
map back (differentiably), and minimise the task loss of the transformed network plus a group-norm sparsity
regulariser that pushes hardest on the least important channel groups. Checkpoints are chosen on a held-out
validation network by its accuracy after pruning to a MACs target (never on test data).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.data import Split
from nasforge.errors import CheckpointError, ConfigError
from nasforge.io import atomic_torch_save, load_torch_file
from nasforge.supernets.bn_calib import recalibrate_bn

from ._graph import graph_to_params, load_graph_, network_to_graph
from ._metanet import GraphMetanetwork

__all__ = ["METANET_FORMAT", "save_metanet", "load_metanet", "apply_metanet", "GroupSparsity", "MetaTrainConfig",
           "meta_train"]

METANET_FORMAT = "nasforge-graph-metanetwork/1"


def save_metanet(path: str | Path, metanet: GraphMetanetwork, **info: Any) -> Path:
    """Atomically write ``metanet`` (its constructor arguments and weights) plus JSON-able ``info``."""
    state = {"format": METANET_FORMAT, "config": metanet.config(), "state_dict": metanet.state_dict(), "info": info}
    return atomic_torch_save(path, state)


def load_metanet(path: str | Path) -> tuple[GraphMetanetwork, dict[str, Any]]:
    """Rebuild a metanetwork saved by :func:`save_metanet`; returns ``(metanet in eval mode, info)``."""
    from nasforge.io import TORCH_LOAD_ERRORS

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"metanetwork {path} does not exist; `nasforge prune meta-train` writes one")
    try:
        state = load_torch_file(path)
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"{path} is corrupt or not a metanetwork ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != METANET_FORMAT:
        raise CheckpointError(f"{path} is not a nasforge graph metanetwork (expected format {METANET_FORMAT})")
    try:
        net = GraphMetanetwork(**state["config"])
        net.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is damaged: {str(exc).splitlines()[0][:200]}") from None
    return net.eval(), dict(state.get("info") or {})


def apply_metanet(model: nn.Module, metanet: GraphMetanetwork | str | Path, example: torch.Tensor | None = None
                  ) -> dict[str, Any]:
    """Rewrite ``model``'s weights in place with one metanetwork forward pass; returns a summary.

    Raises:
        ConfigError: the model is outside what the graph map supports (the message names the op).
    """
    info: dict[str, Any] = {}
    if not isinstance(metanet, nn.Module):
        metanet, info = load_metanet(metanet)
    graph = network_to_graph(model, example)
    with torch.no_grad():
        out = metanet.eval()(graph)
    load_graph_(model, out)
    change = (out.edge_feats - graph.edge_feats).norm() / graph.edge_feats.norm().clamp_min(1e-12)
    return {"relative_weight_change": float(change), "nodes": graph.num_nodes, "edges": graph.num_edges,
            **{k: v for k, v in info.items() if k in ("family", "data", "best_step")}}


class GroupSparsity:
    """Group-norm sparsity on a network's coupled channel groups (Torch-Pruning dependency groups).

    ``loss(params)`` = mean over channels of ``scale * ||group slice||_2``, where within each group the least
    important channels (smallest norm in the untransformed network) get the largest scale, up to ``alpha``
    (``alpha ** ((max - norm) / (max - min))``, as in DepGraph's growing group regulariser).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, alpha: float = 4.0) -> None:
        from ._engine import _graph, output_layers

        dg = _graph(model, example)
        names = {m: n for n, m in model.named_modules()}
        ignored = [dict(model.named_modules())[n] for n in output_layers(model, example)]
        params = dict(model.named_parameters())
        self.groups: list[list[tuple[str, int, torch.Tensor]]] = []
        for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            members = self._members(group, names, dg, params)
            if members:
                self.groups.append(members)
        self.scales = [self._scale(g, params, alpha) for g in self.groups]

    @staticmethod
    def _members(group: Any, names: dict[nn.Module, str], dg: Any, params: dict[str, torch.Tensor]
                 ) -> list[tuple[str, int, torch.Tensor]]:
        members = []
        for dep, idxs in group:
            mod = dep.target.module
            if mod not in names or not isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                continue
            idx = torch.as_tensor(list(idxs), dtype=torch.long)
            out = dg.is_out_channel_pruning_fn(dep.handler) or isinstance(mod, nn.BatchNorm2d)
            for pname in ("weight", "bias"):
                key = f"{names[mod]}.{pname}" if names[mod] else pname
                if key in params and (out or pname == "weight"):
                    members.append((key, 0 if out else 1, idx))
        return members

    @staticmethod
    def _norms(members: list[tuple[str, int, torch.Tensor]], params: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for key, dim, idx in members:
            p = params[key]
            sq = p.pow(2).transpose(0, dim).reshape(p.shape[dim], -1).sum(1) if p.dim() > 1 else p.pow(2)
            part = sq.index_select(0, idx)
            total = part if total is None else total + part
        assert total is not None
        return (total + 1e-12).sqrt()

    def _scale(self, members: list[tuple[str, int, torch.Tensor]], params: dict[str, torch.Tensor],
               alpha: float) -> torch.Tensor:
        with torch.no_grad():
            norms = self._norms(members, params)
            span = (norms.max() - norms.min()).clamp_min(1e-12)
            return alpha ** ((norms.max() - norms) / span)

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The regulariser evaluated on ``params`` (e.g. from :func:`graph_to_params`)."""
        terms = [(s * self._norms(g, params)).sum() for g, s in zip(self.groups, self.scales, strict=True)]
        return torch.stack(terms).sum() / sum(len(s) for s in self.scales)


@dataclass
class MetaTrainConfig:
    """Meta-training settings (AdamW 1e-3 as in the paper; sizes scaled for CPU)."""

    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    sparsity: float = 0.5
    alpha: float = 4.0
    hidden: int = 64
    layers: int = 8
    validate_every: int = 25
    target: str = "macs=0.5"
    seed: int = 0


@dataclass
class MetaTrainResult:
    """The chosen metanetwork and the validation record behind the choice."""

    metanet: GraphMetanetwork
    best_step: int
    best_val_acc: float
    baseline_val_acc: float
    history: list[dict[str, float]] = field(default_factory=list)


def _pruned_val_acc(net: nn.Module, metanet: GraphMetanetwork | None, example: torch.Tensor, target: str,
                    train: Split, val: Split) -> float:
    """Validation accuracy after (metanetwork +) group-L2 pruning to ``target`` and BN recalibration."""
    from ._api import prune
    from ._finetune import evaluate_accuracy

    work = copy.deepcopy(net)
    if metanet is not None:
        apply_metanet(work, metanet, example)
    pruned, _ = prune(work, example, target=target, criterion="l2")
    with torch.no_grad():
        recalibrate_bn(pruned, (x for x, _ in train.batches(128)), max_images=512)
    return evaluate_accuracy(pruned, val)


def meta_train(networks: Sequence[nn.Module], validation_network: nn.Module, train: Split, val: Split,
               config: MetaTrainConfig | None = None,
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> MetaTrainResult:
    """Meta-train a :class:`GraphMetanetwork` on trained ``networks`` of one family.

    Every ``validate_every`` steps the current metanetwork rewrites ``validation_network``, which is pruned to
    ``config.target`` with group-L2; the step with the best validation accuracy is kept (step 0 = the
    near-identity initialisation).

    Raises:
        ConfigError: no networks, or a network the graph map does not support.
    """
    cfg = config or MetaTrainConfig()
    if not networks:
        raise ConfigError("meta-training needs at least one trained network")
    torch.manual_seed(cfg.seed)
    example = train.x[:2]
    graphs = [network_to_graph(n.eval(), example) for n in networks]
    regs = [GroupSparsity(n, example, cfg.alpha) for n in networks]
    edge_dim = graphs[0].edge_feats.shape[1]
    metanet = GraphMetanetwork(node_dim=graphs[0].node_feats.shape[1], edge_dim=edge_dim, hidden=cfg.hidden,
                               layers=cfg.layers)
    opt = torch.optim.AdamW(metanet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    baseline = _pruned_val_acc(validation_network, None, example, cfg.target, train, val)
    best_acc = _pruned_val_acc(validation_network, metanet, example, cfg.target, train, val)
    best_state, best_step = copy.deepcopy(metanet.state_dict()), 0
    history: list[dict[str, float]] = [{"step": 0, "val_acc": best_acc}]
    for step in range(1, cfg.steps + 1):
        i = (step - 1) % len(networks)
        idx = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
        metanet.train()
        params = graph_to_params(metanet(graphs[i]))
        # train-mode BN normalises with batch statistics and updates running ones in place: give it copies
        stats = {k: v.detach().clone() for k, v in networks[i].named_buffers()}
        weights = {k: v for k, v in params.items() if not k.endswith(("running_mean", "running_var"))}
        networks[i].train()
        logits = torch.func.functional_call(networks[i], {**stats, **weights}, (train.x[idx],))
        task = F.cross_entropy(logits, train.y[idx])
        sparse = regs[i].loss(params)
        loss = task + cfg.sparsity * sparse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record = {"step": step, "task_loss": task.item(), "sparsity": sparse.item()}
        if step % cfg.validate_every == 0 or step == cfg.steps:
            metanet.eval()
            record["val_acc"] = _pruned_val_acc(validation_network, metanet, example, cfg.target, train, val)
            if record["val_acc"] > best_acc:
                best_acc, best_step, best_state = record["val_acc"], step, copy.deepcopy(metanet.state_dict())
        history.append(record)
        if on_step is not None:
            on_step(step, record)
    for n in networks:
        n.eval()
    metanet.load_state_dict(best_state)
    return MetaTrainResult(metanet.eval(), best_step, best_acc, baseline, history)
