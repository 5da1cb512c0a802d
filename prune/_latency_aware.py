"""Latency-aware channel allocation: remove the channels that buy the most measured latency per importance lost.

Global pruning removes the least important channels wherever they are, so it cuts MACs in layers whose latency
barely moves (small layers dominated by per-operator overhead, counts that fall off the backend's blocked
kernels). Here every channel group (a Torch-Pruning dependency group) is shrunk in chunks that keep its count a
multiple of ``snap``; each candidate chunk costs its channels' importance, made dearer as a group thins
(:func:`_costs`), and saves the latency a
:class:`~._layer_table.LayerLatencyTable` measured for the layers it touches (their in- and out-channels). A
greedy loop takes the candidate with the least importance per ms saved until the model's predicted measure
(latency: the measured model minus the layers' table sum plus their new sum; MACs: counted exactly) meets the
goal; then the real model is pruned and measured, and the predicted goal is corrected until the real one is met.
The idea is hardware-aware latency pruning (HALP, Shen et al. 2022) with measured tables instead of a model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError

from ._criteria import Criterion
from ._engine import OVERSHOOT, History, PruneError, PruneStep
from ._layer_table import LayerLatencyTable, LayerShape

__all__ = ["allocate_to", "latency_stepper"]

_KINDS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_MAX_RATIO = 0.95  # as the ratio search: keep at least 5% of every group


@dataclass
class _Group:
    """One prunable channel group: its root (to prune it by), its channels by rising importance, its layers."""

    root: str
    out: bool
    order: list[int]
    scores: list[float]
    outs: list[str]
    ins: list[str]
    removed: int = 0

    @property
    def size(self) -> int:
        return len(self.order)

    @property
    def layers(self) -> set[str]:
        return set(self.outs) | set(self.ins)


@dataclass
class _State:
    """Channel counts ``[in, out]`` per allocated layer and the shapes/latencies behind the prediction."""

    shapes: dict[str, LayerShape]
    widths: dict[str, list[int]]
    table: LayerLatencyTable | None
    excluded: dict[str, str] = field(default_factory=dict)

    def cost(self, name: str, cin: int, cout: int, kind: str) -> float:
        shape = self.shapes[name]
        if kind == "macs":
            return float(shape.macs(cin, cout))
        assert self.table is not None
        return self.table.latency(shape, cin, cout)

    def total(self, kind: str) -> float:
        return sum(self.cost(n, w[0], w[1], kind) for n, w in self.widths.items())


def _layer_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    """The :class:`LayerShape` of every conv1d/conv2d/linear layer that runs in a forward pass."""
    shapes: dict[str, LayerShape] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, _KINDS):
            def hook(m: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and inp and isinstance(inp[0], torch.Tensor):
                    shapes[name] = LayerShape.of(m, tuple(inp[0].shape[1:]), tuple(out.shape[1:]))
            handles.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return shapes


def _why_not(mod: nn.Module, names: dict[nn.Module, str], shapes: dict[str, LayerShape]) -> str | None:
    """Why a group member keeps its group out of the allocation (None: fine)."""
    if isinstance(mod, nn.MultiheadAttention):
        return "attention heads are pruned by the ratio search only"
    if isinstance(mod, nn.modules.conv._ConvNd) and not isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        return f"{type(mod).__name__} has no latency table entry kind"
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups > 1 and not shapes.get(names.get(mod, ""), None):
        return "a grouped conv that did not run"
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and 1 < mod.groups and not (
            mod.groups == mod.in_channels == mod.out_channels):
        return "grouped (not depthwise) convs are pruned by the ratio search only"
    return None


def _make_group(group: Any, dg: Any, names: dict[nn.Module, str], shapes: dict[str, LayerShape],
                scores: torch.Tensor) -> _Group | str:
    """A :class:`_Group` from a Torch-Pruning group, or the reason it stays out of the allocation."""
    outs: list[str] = []
    ins: list[str] = []
    for dep, _ in group:
        mod = dep.target.module
        reason = _why_not(mod, names, shapes)
        if reason is not None:
            return reason
        if isinstance(mod, _KINDS) and mod in names:
            if names[mod] not in shapes:
                return f"layer {names[mod]!r} does not run in the forward pass"
            (outs if dg.is_out_channel_pruning_fn(dep.handler) else ins).append(names[mod])
    root_dep = group[0].dep
    root = names.get(root_dep.target.module)
    if root is None or not outs:
        return "its root is not a named conv/linear layer"
    norm = scores.float() / scores.float().mean().clamp_min(1e-12)  # comparable across groups (as global pruning)
    order = torch.argsort(norm).tolist()
    return _Group(root, dg.is_out_channel_pruning_fn(root_dep.handler), order,
                  _costs(norm[order], len(outs) + len(ins)), outs, ins)


def _costs(ranked: torch.Tensor, layers: int) -> list[float]:
    """What removing each channel costs, for scores ``ranked`` in rising order in a group spanning ``layers`` layers.

    A channel's cost is its LAMP score (Lee et al. 2021: its squared score over the squared scores of the channels
    still left after it, times the group's size), squared, times the layers it is removed from (halved: a plain
    conv-to-conv group spans 2). With uniform scores the k-th of n channels costs ``(n / (n - k))**2``: thinning a
    group towards a bottleneck grows ever dearer, and a channel coupled through a residual stream costs as many
    layers as it leaves. (Plain group scores, which the mean normaliser puts at about 1 per channel in every group,
    let the latency saving alone decide: on ResNet-20 the whole full-resolution stage went to 4 channels and
    accuracy at equal latency fell below ratio pruning's; the measurements are in BENCHMARKS.md.)
    """
    sq = ranked.double() ** 2
    left = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0]).clamp_min(1e-12)
    return ((sq / left * len(ranked)) ** 2 * layers / 2).tolist()


def _groups(model: nn.Module, example: torch.Tensor, criterion: Criterion, ignored: Sequence[str],
            shapes: dict[str, LayerShape]) -> tuple[list[_Group], dict[str, str]]:
    """The allocatable groups of ``model`` (importance ranked) and the roots left out with the reason."""
    from ._engine import _graph  # the engine's one way to build Torch-Pruning's graph (eval mode)

    dg = _graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    table = dict(model.named_modules())
    imp = criterion.make()
    groups: list[_Group] = []
    left: dict[str, str] = {}
    for group in dg.get_all_groups(ignored_layers=[table[n] for n in ignored], root_module_types=_KINDS):
        with torch.no_grad():
            scores = imp(group)
        made = _make_group(group, dg, names, shapes, scores) if scores is not None else "the criterion gave no score"
        if isinstance(made, str):
            left[names.get(group[0].dep.target.module, "?")] = made
        else:
            groups.append(made)
    return groups, left


def _candidates(g: _Group, snap: int) -> list[int]:
    """Channel counts ``g`` may shrink to next: every multiple of ``snap`` below its count (a backend's blocked
    kernels make latency a staircase in the channel count: on AVX-512 onnxruntime a 32x32 3x3 conv measured the
    same at 20 to 32 channels and 3x faster at 16, so the jump to the next fast width must be in view)."""
    keep_min = max(1, math.ceil(g.size * (1 - _MAX_RATIO)))
    now = g.size - g.removed
    first = (now - 1) // snap * snap
    return [w for w in range(first, 0, -snap) if w >= keep_min]


def _shrunk(state: _State, g: _Group, k: int) -> dict[str, list[int]]:
    """New ``[in, out]`` of the layers ``g`` touches when it loses ``k`` more channels."""
    new = {n: list(state.widths[n]) for n in g.layers}
    for n in g.outs:
        new[n][1] -= k
        if state.shapes[n].depthwise:
            new[n][0] -= k
    for n in g.ins:
        if not state.shapes[n].depthwise:
            new[n][0] -= k
    return new


def _best_move(g: _Group, state: _State, snap: int, kind: str) -> tuple[float, int, float] | None:
    """``(importance lost per unit saved, channels to remove, saving)`` of ``g``'s best next chunk."""
    now = g.size - g.removed
    best: tuple[float, int, float] | None = None
    old = sum(state.cost(n, *state.widths[n], kind) for n in g.layers)
    for width in _candidates(g, snap):
        k = now - width
        new = _shrunk(state, g, k)
        saving = old - sum(state.cost(n, *new[n], kind) for n in g.layers)
        lost = sum(g.scores[g.removed: g.removed + k])
        score = lost / max(saving, 1e-9 * max(old, 1e-12))  # a chunk that saves nothing comes last
        if best is None or score < best[0]:
            best = (score, k, saving)
    return best


def _allocate(groups: list[_Group], state: _State, goal: float, snap: int, rank: str, stop: str,
              offset: float) -> float:
    """Greedily remove the chunk with the least importance per unit of ``rank`` saved until ``offset`` plus the
    layers' ``stop`` costs meets ``goal``; the predicted ``stop`` value reached."""
    for g in groups:
        g.removed = 0
    total = offset + state.total(stop)
    moves: dict[int, tuple[float, int, float] | None] = {}
    while total > goal:
        for i, g in enumerate(groups):
            if i not in moves:
                moves[i] = _best_move(g, state, snap, rank)
        live = [(m, i) for i, m in moves.items() if m is not None]
        if not live:
            break
        (_, k, _), i = min(live, key=lambda t: t[0][0])
        g = groups[i]
        saved = _saving(state, g, k, stop)
        if total - saved <= goal:  # the last move: of the moves that reach the goal, take the closest to it
            k, i, saved = _closest_finish(groups, state, snap, stop, total - goal, (k, i, saved))
            g = groups[i]
        new = _shrunk(state, g, k)
        total -= saved
        state.widths.update(new)
        g.removed += k
        for j, other in enumerate(groups):
            if j == i or other.layers & g.layers:
                moves.pop(j, None)
    return total


def _saving(state: _State, g: _Group, k: int, kind: str) -> float:
    """How much ``kind`` the layers of ``g`` lose when it loses ``k`` more channels."""
    new = _shrunk(state, g, k)
    return sum(state.cost(n, *state.widths[n], kind) - state.cost(n, *new[n], kind) for n in g.layers)


def _closest_finish(groups: list[_Group], state: _State, snap: int, stop: str, need: float,
                    chosen: tuple[int, int, float]) -> tuple[int, int, float]:
    """``(channels, group index, saving)`` of the move that saves at least ``need`` by the smallest margin (a
    coarse last chunk, e.g. of a residual stream at full resolution, would overshoot the goal)."""
    best = chosen
    for i, g in enumerate(groups):
        for width in _candidates(g, snap):
            k = g.size - g.removed - width
            saved = _saving(state, g, k, stop)
            if need <= saved < best[2]:
                best = (k, i, saved)
    return best


def _apply(model: nn.Module, example: torch.Tensor, groups: list[_Group]) -> tuple[nn.Module, History]:
    """Prune a copy of ``model`` by the allocation in ``groups``; the copy and its replayable history."""
    from ._engine import _graph

    pruned = copy.deepcopy(model)
    dg = _graph(pruned, example)
    table = dict(pruned.named_modules())
    history: History = []
    for g in groups:
        if not g.removed:
            continue
        idxs = sorted(g.order[: g.removed])
        pruner = dg.get_pruner_of_module(table[g.root])
        fn = pruner.prune_out_channels if g.out else pruner.prune_in_channels
        dg.get_pruning_group(table[g.root], fn, idxs=idxs).prune(record_history=False)
        history.append((g.root, g.out, [int(i) for i in idxs]))
    return pruned, history


def _fresh_state(model: nn.Module, example: torch.Tensor, table: LayerLatencyTable | None) -> _State:
    shapes = _layer_shapes(model, example)
    mods = dict(model.named_modules())
    widths = {}
    for n in shapes:
        m = mods[n]
        widths[n] = [m.in_features, m.out_features] if isinstance(m, nn.Linear) else [m.in_channels, m.out_channels]
    return _State(shapes, widths, table)


def allocate_to(model: nn.Module, example: torch.Tensor, criterion: Criterion, goal: float, kind: str,
                measure: Callable[[nn.Module], float], table: LayerLatencyTable | None, *,
                ignored: Sequence[str] = (), snap: int = 4, tolerance: float = 0.02, rounds: int = 5,
                base: float | None = None, loss_fn: Callable[[nn.Module], torch.Tensor] | None = None
                ) -> tuple[nn.Module, PruneStep, dict[str, Any]]:
    """Prune a copy of ``model`` until ``measure(copy) <= goal``, choosing channels by latency saved per importance.

    ``kind`` is the target's (``macs`` or ``latency_ms``). Chunks are ranked by importance per ms the ``table``
    says they save (per MAC without a table); the loop stops when the predicted value meets the goal: MACs are
    counted exactly, latency is the measured model (``base``) minus the layers' table sum plus their new sum.
    Up to ``rounds`` allocations, each correcting the predicted goal by how far the real model missed it.

    Returns:
        ``(pruned copy, step record, extras)``; extras hold the rounds and the groups left out (and why).

    Raises:
        ConfigError: a params target, or a latency target without a table.
        PruneError: even the smallest allocation misses the goal, or no group can be allocated (the message names
            the layers left out and why).
    """
    if kind not in ("macs", "latency_ms"):
        raise ConfigError(f"latency-aware pruning takes a macs or latency_ms target, not {kind}; use the ratio "
                          "search (allocation='ratio') for params")
    if kind == "latency_ms" and table is None:
        raise ConfigError("latency-aware pruning to a latency_ms target needs a layer latency table")
    if criterion.needs_grad:
        if loss_fn is None:
            raise ConfigError(f"criterion {criterion.name!r} needs gradients: pass loss_fn (the CLI passes --data)")
        model.zero_grad()
        loss_fn(model).backward()
    state = _fresh_state(model, example, table)
    groups, left = _groups(model, example, criterion, ignored, state.shapes)
    model.zero_grad(set_to_none=True)
    if not groups:
        named = ", ".join(f"{k!r} ({v})" for k, v in list(left.items())[:6]) or "none"
        raise PruneError(f"latency-aware pruning found no channel group it can allocate; left out: {named}")
    base = measure(model) if base is None else base
    rank = "latency_ms" if table is not None else "macs"
    offset = base - state.total(kind)  # what the allocated layers do not explain (other ops, overheads)
    pruned, step, tried = _rounds(model, example, groups, state, goal, kind, rank, measure, snap, tolerance,
                                  rounds, offset, left)
    return pruned, step, {"allocation": "latency" if table is not None else "macs", "rounds": tried,
                          "left_out": left, **({"layer_table": table.summary()} if table is not None else {})}


def _rounds(model: nn.Module, example: torch.Tensor, groups: list[_Group], start: _State, goal: float, kind: str,
            rank: str, measure: Callable[[nn.Module], float], snap: int, tolerance: float, rounds: int,
            offset: float, left: dict[str, str]) -> tuple[nn.Module, PruneStep, list[dict[str, float]]]:
    """Allocate, prune, measure; correct the predicted goal and repeat; the best real result that meets ``goal``."""
    internal = goal
    best: tuple[nn.Module, History, float] | None = None
    tried: list[dict[str, float]] = []
    for _ in range(rounds):
        state = _State(start.shapes, {n: list(w) for n, w in start.widths.items()}, start.table)
        predicted = _allocate(groups, state, internal, snap, rank, kind, offset)
        pruned, history = _apply(model, example, groups)
        real = measure(pruned)
        tried.append({"predicted_goal": internal, "predicted": predicted, "reached": real})
        if real <= goal and (best is None or real > best[2]):
            best = (pruned, history, real)
        if best is not None and (kind == "macs" or best[2] >= goal * (1 - tolerance)):
            break  # MACs are predicted exactly: another round cannot come closer
        if real > goal:  # aim lower than this allocation's prediction (an unchanged allocation would repeat)
            internal = min(internal, predicted) * goal / real * (1 - tolerance)
        else:
            internal *= 1 + (goal - real) / goal / 2
    if best is None:
        closest = min(t["reached"] for t in tried)
        named = ", ".join(list(left)[:6]) or "none"
        raise PruneError(f"latency-aware pruning could not reach {goal:.4g} (closest {closest:.4g}); relax the target "
                         f"or prune more layers (groups left out: {named})")
    pruned, history, real = best
    above = [t["reached"] for t in tried if t["reached"] > goal]
    step = PruneStep(0.0, goal, real, len(tried), history, overshoot=real < goal * (1 - OVERSHOOT),
                     above=min(above) if above else None)
    return pruned, step, tried


def latency_stepper(table: LayerLatencyTable | Callable[[nn.Module, tuple[int, ...]], float], kind: str,
                    extras: list[dict[str, Any]]) -> Callable[..., tuple[nn.Module, PruneStep]]:
    """A drop-in for the engine's ``prune_to`` that allocates by ``table`` (a :class:`LayerLatencyTable` or the
    layer measure to build one from); each step's extras are appended to ``extras``."""
    if not isinstance(table, LayerLatencyTable):
        if not callable(table):
            raise ConfigError(f"layer_latency={table!r}: pass a LayerLatencyTable or f(layer, input_shape) -> ms "
                              "(nasforge.export.layer_latency(DEVICE))")
        table = LayerLatencyTable(table)
    chosen = table

    def step(model: nn.Module, example: torch.Tensor, criterion: Criterion, goal: float,
             measure: Callable[[nn.Module], float], *, base: float | None = None, ignored: Sequence[str] = (),
             global_pruning: bool = True, loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
             round_to: int | None = None, tolerance: float = 0.02) -> tuple[nn.Module, PruneStep]:
        if not global_pruning:
            raise ConfigError("latency-aware allocation ranks channels across layers: drop global_pruning=False "
                              "(CLI: --per-layer) or layer_latency")
        pruned, record, extra = allocate_to(model, example, criterion, goal, kind, measure, chosen, ignored=ignored,
                                            snap=round_to or 1, tolerance=tolerance, base=base, loss_fn=loss_fn)
        extras.append(extra)
        return pruned, record

    return step
