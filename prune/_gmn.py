"""Graph-metanetwork pruning: meta-train a metanetwork that rewrites networks so that they prune well, and use it.

Meta-training (per step), as in the reference implementation (Yewei-Liu/MetaPruning): map a trained network of
the family to its graph, transform it with the metanetwork, map back (differentiably), and minimise the task
loss of the transformed network -- run with BatchNorm in eval mode on the network's own running statistics, so
that shrinking a channel's weights changes the output and is not free -- plus a group sparsity regulariser
(Torch-Pruning's GroupNormPruner form, ``gamma_c * w`` per weight) whose per-channel strengths are recomputed
every step from the current transformed weights, strongest on the least important channels of each group.
Checkpoints are chosen on a held-out validation network by its validation accuracy after metanetwork +
iterative pruning to a MACs target + a short finetune (never on test data).
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
_STAT_KEYS = ("running_mean", "running_var")


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


def apply_metanet(model: nn.Module, metanet: GraphMetanetwork | str | Path, example: torch.Tensor | None = None,
                  *, keep_running_stats: bool = True) -> dict[str, Any]:
    """Rewrite ``model``'s weights in place with one metanetwork forward pass; returns a summary.

    Args:
        keep_running_stats: keep the model's BN running statistics (as meta-training's task loss does, and the
            reference implementation) instead of the metanetwork's outputs for them, which no loss trains.

    Raises:
        ConfigError: the model is outside what the graph map supports (the message names the op).
    """
    info: dict[str, Any] = {}
    if not isinstance(metanet, nn.Module):
        metanet, info = load_metanet(metanet)
    graph = network_to_graph(model, example)
    with torch.no_grad():
        out = metanet.eval()(graph)
    stats = {k: v.detach().clone() for k, v in model.named_buffers() if k.endswith(_STAT_KEYS)}
    load_graph_(model, out)
    if keep_running_stats:
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for key, value in stats.items():
                buffers[key].copy_(value)
    change = (out.edge_feats - graph.edge_feats).norm() / graph.edge_feats.norm().clamp_min(1e-12)
    return {"relative_weight_change": float(change), "nodes": graph.num_nodes, "edges": graph.num_edges,
            **{k: v for k, v in info.items() if k in ("family", "data", "best_step")}}


class GroupSparsity:
    """Group sparsity on a network's coupled channel groups (Torch-Pruning dependency groups).

    The regulariser of Torch-Pruning's ``GroupNormPruner.regularize`` (what the reference meta-trains with):
    ``loss(params) = 1/2 * sum over channels c of gamma_c * ||w_c||^2``, where ``w_c`` is channel ``c``'s slice
    of every coupled weight of its group (conv/linear out- and in-channel weights, the BN scale; no biases), so
    its gradient is ``gamma_c * w``. Within a group ``gamma_c = alpha ** ((max - n_c) / (max - min))`` over the
    group norms ``n_c`` of ``params`` themselves (detached): the least important channel of the weights being
    regularised gets ``alpha``, the strongest 1, recomputed at every call. :attr:`scales` holds the ``gamma`` of
    the network it was built from.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, alpha: float = 16.0) -> None:
        from ._engine import _graph, output_layers

        dg = _graph(model, example)
        names = {m: n for n, m in model.named_modules()}
        ignored = [dict(model.named_modules())[n] for n in output_layers(model, example)]
        params = dict(model.named_parameters())
        self.alpha = float(alpha)
        self.groups: list[list[tuple[str, int, torch.Tensor]]] = []
        for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            members = self._members(group, names, dg, params)
            if members:
                self.groups.append(members)
        self.scales = self.scales_for(params)

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
            key = f"{names[mod]}.weight" if names[mod] else "weight"
            if key in params:
                members.append((key, 0 if out else 1, idx))
        return members

    @staticmethod
    def _squares(members: list[tuple[str, int, torch.Tensor]], params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared group norm of every channel of one group."""
        total = None
        for key, dim, idx in members:
            p = params[key]
            sq = p.pow(2).transpose(0, dim).reshape(p.shape[dim], -1).sum(1) if p.dim() > 1 else p.pow(2)
            part = sq.index_select(0, idx)
            total = part if total is None else total + part
        assert total is not None
        return total

    def scales_for(self, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``gamma`` of every group for the weights ``params`` (detached; no gradient flows through them)."""
        out = []
        with torch.no_grad():
            for members in self.groups:
                norms = (self._squares(members, params) + 1e-12).sqrt()
                span = (norms.max() - norms.min()).clamp_min(1e-12)
                out.append(self.alpha ** ((norms.max() - norms) / span))
        return out

    def loss(self, params: dict[str, torch.Tensor], scales: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The regulariser on ``params`` (e.g. from :func:`graph_to_params`), with ``gamma`` recomputed from
        ``params`` unless ``scales`` are given (e.g. :attr:`scales`)."""
        gammas = self.scales_for(params) if scales is None else scales
        terms = [(s * self._squares(g, params)).sum() for g, s in zip(self.groups, gammas, strict=True)]
        return 0.5 * torch.stack(terms).sum()


@dataclass
class MetaTrainConfig:
    """Meta-training settings (AdamW 1e-3 as in the paper; sizes scaled for CPU).

    The regulariser follows the reference (alpha 16, GroupNormPruner's ``reg`` 10 on a task gradient summed over
    100 batches, i.e. 0.1 per mean cross-entropy): ``loss = CE + sparsity * GroupSparsity(alpha)``. Checkpoints
    are validated by pruning to ``target`` with the ``gmn`` criterion in ``prune_steps`` iterative steps and
    finetuning ``val_finetune_batches`` batches (0: no finetune) at ``val_finetune_lr``.
    """

    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    sparsity: float = 0.1
    alpha: float = 16.0
    hidden: int = 64
    layers: int = 8
    validate_every: int = 25
    target: str = "macs=0.5"
    seed: int = 0
    prune_steps: int = 16
    val_finetune_batches: int = 32
    val_finetune_lr: float = 0.01
    round_to: int | None = None


@dataclass
class MetaTrainResult:
    """The chosen metanetwork and the validation record behind the choice.

    ``best_val_acc`` / ``baseline_val_acc``: the validation network's validation accuracy after pruning and the
    short finetune, with the chosen metanetwork (gmn path) / with plain one-shot group-L2.
    """

    metanet: GraphMetanetwork
    best_step: int
    best_val_acc: float
    baseline_val_acc: float
    history: list[dict[str, float]] = field(default_factory=list)


def _short_finetune(model: nn.Module, train: Split, batches: int, lr: float, batch_size: int, seed: int) -> None:
    """Finetune ``model`` on ``batches`` random training batches (one pass over a fixed random subset)."""
    from ._finetune import train_classifier

    if batches <= 0:
        return
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:batches * batch_size]
    train_classifier(model, Split(train.x[idx], train.y[idx]), epochs=1, lr=lr, batch_size=batch_size, seed=seed)


def _pruned_val_acc(net: nn.Module, metanet: GraphMetanetwork | None, example: torch.Tensor, cfg: MetaTrainConfig,
                    train: Split, val: Split) -> tuple[float, float]:
    """Validation accuracy ``(right after pruning, after the short finetune)`` of ``net`` pruned to the target.

    With a metanetwork: the ``gmn`` criterion (metanetwork, then group L2 with the max normaliser) in
    ``cfg.prune_steps`` steps; without: plain one-shot group-L2 (the baseline). BN is recalibrated on training
    images before the first accuracy.
    """
    from ._api import prune
    from ._finetune import evaluate_accuracy

    if metanet is None:
        pruned, _ = prune(net, example, target=cfg.target, criterion="l2", round_to=cfg.round_to)
    else:
        pruned, _ = prune(net, example, target=cfg.target, criterion="gmn", metanet=metanet, steps=cfg.prune_steps,
                          round_to=cfg.round_to)
    with torch.no_grad():
        recalibrate_bn(pruned, (x for x, _ in train.batches(128)), max_images=512)
    right_after = evaluate_accuracy(pruned, val)
    if cfg.val_finetune_batches <= 0:
        return right_after, right_after
    _short_finetune(pruned, train, cfg.val_finetune_batches, cfg.val_finetune_lr, cfg.batch_size, cfg.seed)
    return right_after, evaluate_accuracy(pruned, val)


def _task_loss(net: nn.Module, params: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``net`` run with the transformed ``params`` and BN in eval mode on ``stats`` (the
    network's own running statistics): a uniform scaling of a conv's weights before a BN changes the output."""
    net.eval()
    weights = {k: v for k, v in params.items() if not k.endswith(_STAT_KEYS)}
    return F.cross_entropy(torch.func.functional_call(net, {**stats, **weights}, (x,)), y)


def _check_config(cfg: MetaTrainConfig, networks: Sequence[nn.Module]) -> None:
    if not networks:
        raise ConfigError("meta-training needs at least one trained network")
    if cfg.prune_steps < 1 or cfg.val_finetune_batches < 0:
        raise ConfigError(f"prune_steps={cfg.prune_steps} must be >= 1 and val_finetune_batches="
                          f"{cfg.val_finetune_batches} >= 0")


def meta_train(networks: Sequence[nn.Module], validation_network: nn.Module, train: Split, val: Split,
               config: MetaTrainConfig | None = None,
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> MetaTrainResult:
    """Meta-train a :class:`GraphMetanetwork` on trained ``networks`` of one family.

    Every ``validate_every`` steps the current metanetwork rewrites ``validation_network``, which is pruned to
    ``config.target`` and briefly finetuned (see :class:`MetaTrainConfig`); the step with the best validation
    accuracy is kept (step 0 = the near-identity initialisation). Records carry ``val_acc`` (after the
    finetune, the choice) and ``val_acc_pruned`` (right after pruning).

    Raises:
        ConfigError: no networks, a bad setting, or a network the graph map does not support.
    """
    cfg = config or MetaTrainConfig()
    _check_config(cfg, networks)
    torch.manual_seed(cfg.seed)
    example = train.x[:2]
    graphs = [network_to_graph(n.eval(), example) for n in networks]
    stats = [{k: v.detach().clone() for k, v in n.named_buffers()} for n in networks]
    regs = [GroupSparsity(n, example, cfg.alpha) for n in networks]
    metanet = GraphMetanetwork(node_dim=graphs[0].node_feats.shape[1], edge_dim=graphs[0].edge_feats.shape[1],
                               hidden=cfg.hidden, layers=cfg.layers)
    opt = torch.optim.AdamW(metanet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    baseline = _pruned_val_acc(validation_network, None, example, cfg, train, val)[1]
    pruned0, best_acc = _pruned_val_acc(validation_network, metanet, example, cfg, train, val)
    best_state, best_step = copy.deepcopy(metanet.state_dict()), 0
    history: list[dict[str, float]] = [{"step": 0, "val_acc": best_acc, "val_acc_pruned": pruned0}]
    for step in range(1, cfg.steps + 1):
        i = (step - 1) % len(networks)
        idx = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
        params = graph_to_params(metanet.train()(graphs[i]))
        task = _task_loss(networks[i], params, stats[i], train.x[idx], train.y[idx])
        sparse = regs[i].loss(params)  # gamma from the current transformed weights
        opt.zero_grad(set_to_none=True)
        (task + cfg.sparsity * sparse).backward()
        opt.step()
        record = {"step": step, "task_loss": task.item(), "sparsity": sparse.item()}
        if step % cfg.validate_every == 0 or step == cfg.steps:
            record["val_acc_pruned"], record["val_acc"] = _pruned_val_acc(validation_network, metanet.eval(),
                                                                          example, cfg, train, val)
            if record["val_acc"] > best_acc:
                best_acc, best_step, best_state = record["val_acc"], step, copy.deepcopy(metanet.state_dict())
        history.append(record)
        if on_step is not None:
            on_step(step, record)
    for n in networks:
        n.eval()
    metanet.load_state_dict(best_state)
    return MetaTrainResult(metanet.eval(), best_step, best_acc, baseline, history)
