"""Dependency-aware structured pruning on Torch-Pruning, behind nasforge's own interface.

Torch-Pruning builds the dependency graph (residual adds, concat, split, grouped/depthwise convs, attention) and
removes coupled channels together. nasforge adds what it lacks: a probe that finds the groups it mishandles (a
concat into a grouped conv, chunk/split followed by an add, hard-coded split sizes) and leaves them alone or
refuses them, a search for the pruning ratio that meets a MACs/params/latency target, and replayable history.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError, NasforgeError
from nasforge.onnx_io import first_line

from ._criteria import Criterion

__all__ = ["PruneError", "TargetOutOfReach", "output_layers", "resolve_ignored", "find_unsupported", "prune_to",
           "replay_history", "PruneStep", "LAYER_TYPES", "OVERSHOOT"]

History = list[tuple[str, bool, list[int]]]
_GRID = (0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.78, 0.85, 0.9, 0.95)
_RISKY_OPS = ("CONCAT", "SPLIT", "RESHAPE", "UNBIND", "SLICE", "EXPAND")
#: The layers whose out-channels pruning shrinks and reports (transposed convs too: decoders, upsampling heads).
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
#: A result this far (relative) below its goal is an overshoot worth telling the user about.
OVERSHOOT = 0.1


class PruneError(NasforgeError, RuntimeError):
    """Pruning cannot be done as asked (an unsupported pattern, an unreachable target, a broken forward)."""


class TargetOutOfReach(PruneError):
    """Even the largest pruning ratio leaves the model above the goal.

    Attributes:
        smallest: the smallest measure any ratio reached.
        goal: the measure asked for.
        pruned_any: whether any ratio removed a channel at all (False: no layer can be pruned).
    """

    def __init__(self, smallest: float, goal: float, pruned_any: bool) -> None:
        super().__init__(f"the target is out of reach: the smallest model pruning can reach here measures "
                         f"{smallest:.4g} > {goal:.4g}; relax the target, lower round_to, or prune fewer layers "
                         "with ignore=")
        self.smallest, self.goal, self.pruned_any = smallest, goal, pruned_any


def _tp() -> Any:
    import torch_pruning

    return torch_pruning


def _names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def _forward(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model returns {type(out).__name__}; nasforge prunes models that return one tensor")
    return out


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the conv/linear layers whose output is the model's output (their out-channels are the logits).

    Falls back to the last conv/linear called when the output passes through other ops first.
    """
    produced: dict[int, str] = {}
    order: list[str] = []
    names = _names(model)

    def hook(m: nn.Module, inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            produced[id(out)] = names[m]
            order.append(names[m])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LAYER_TYPES)]
    try:
        out = _forward(model, example)
    finally:
        for h in handles:
            h.remove()
    if id(out) in produced:
        return [produced[id(out)]]
    return order[-1:]


def resolve_ignored(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Module names matching any of the fnmatch ``patterns`` (a pattern that matches nothing is an error)."""
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            sample = ", ".join(names[:8])
            raise ConfigError(f"ignore pattern {pat!r} matches no module; module names look like: {sample}, ...")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _modules(model: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    table = dict(model.named_modules())
    return [table[n] for n in names]


def _heads(model: nn.Module) -> dict[nn.Module, int]:
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def _graph(model: nn.Module, example: torch.Tensor) -> Any:
    tp = _tp()
    was = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        model.train(was)


def _group_ops(group: Any) -> set[str]:
    kinds: set[str] = set()
    for dep, _ in group:
        for node in (dep.source, dep.target):
            kinds.add(node.type.name)
            mod = node.module
            if isinstance(mod, nn.Conv2d) and 1 < mod.groups < mod.in_channels:  # grouped, not depthwise
                kinds.add("GROUPED_CONV")
    return kinds


def _mask_group(model: nn.Module, group: Any, names: dict[nn.Module, str], dg: Any) -> bool:
    """Zero, in ``model`` (a copy with the same module names), every slice ``group`` would remove.

    Returns False when the group touches a layer whose removal is not equivalent to zeroing (e.g. LayerNorm).
    """
    table = dict(model.named_modules())
    with torch.no_grad():
        for dep, idxs in group:
            src = dep.target.module
            kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)
            if src not in names or not isinstance(src, kinds):
                if src in names:
                    return False
                continue
            mod, idx = table[names[src]], torch.as_tensor(list(idxs), dtype=torch.long)
            out = dg.is_out_channel_pruning_fn(dep.handler)
            if isinstance(mod, nn.ConvTranspose2d):  # weight (in, out / groups, kH, kW)
                if mod.groups > 1:
                    return False
                _zero_transposed(mod, idx, out)
                continue
            depthwise = isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels and mod.groups > 1
            if out or isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)) or depthwise:
                mod.weight[idx] = 0
                if mod.bias is not None:
                    mod.bias[idx] = 0
            elif isinstance(mod, nn.Conv2d) and mod.groups > 1:
                return False
            else:
                mod.weight[:, idx] = 0
    return True


def _zero_transposed(mod: nn.ConvTranspose2d, idx: torch.Tensor, out: bool) -> None:
    if out:
        mod.weight[:, idx] = 0
        if mod.bias is not None:
            mod.bias[idx] = 0
    else:
        mod.weight[idx] = 0


def _probe_group(model: nn.Module, example: torch.Tensor, root: str, out_fn: bool, ref_shape: torch.Size
                 ) -> str | None:
    """Remove one channel of the group rooted at ``root`` in a copy; the reason it fails, or None."""
    pruned = copy.deepcopy(model)
    try:
        dg = _graph(pruned, example)
        names = _names(pruned)
        layer = dict(pruned.named_modules())[root]
        fn = dg.get_pruner_of_module(layer).prune_out_channels if out_fn else dg.get_pruner_of_module(
            layer).prune_in_channels
        group = dg.get_pruning_group(layer, fn, idxs=[0])
        masked = copy.deepcopy(model)
        equivalent = _mask_group(masked, group, names, dg)
        group.prune()
        out = _forward(pruned, example)
    except Exception as exc:  # Torch-Pruning or the model's own forward: any failure means "unsupported"
        return f"removing a channel breaks it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if out.shape != ref_shape:
        return f"removing a channel changes the output shape to {tuple(out.shape)}"
    if equivalent:
        diff = (out - _forward(masked, example)).abs().max().item()
        scale = max(1.0, out.abs().max().item())
        if diff > 1e-4 * scale:
            return f"the coupled channels are inconsistent (pruned vs zeroed output differ by {diff:.2g})"
    return None


def find_unsupported(model: nn.Module, example: torch.Tensor, ignored: Sequence[str] | None = None,
                     root_types: tuple[type, ...] = LAYER_TYPES, *,
                     probe_all: bool = False) -> dict[str, str]:
    """Layers whose channel group Torch-Pruning would mishandle, with the reason.

    Only groups that pass through a concat, split/chunk, reshape, slice or a grouped conv are probed (plain
    chains and residual adds are handled reliably): one channel is removed in a copy, which must still run,
    keep its output shape, and compute what the original computes with those channels zeroed.
    ``probe_all`` probes every group (a slower self-check of the dependency handling). ``ignored`` defaults to
    the output layers.
    """
    if ignored is None:
        ignored = output_layers(model, example)
    dg = _graph(model, example)
    names = _names(model)
    ref = _forward(model, example).shape
    bad: dict[str, str] = {}
    for group in dg.get_all_groups(ignored_layers=_modules(model, ignored), root_module_types=root_types):
        ops = _group_ops(group)
        if (not probe_all and not ops & {*_RISKY_OPS, "GROUPED_CONV"}) or "MHA" in ops:
            continue  # attention groups go through Torch-Pruning's head-aware pruning (num_heads), not 1-channel probes
        root_dep = group[0].dep
        root = names.get(root_dep.target.module)
        if root is None:
            continue
        reason = _probe_group(model, example, root, dg.is_out_channel_pruning_fn(root_dep.handler), ref)
        if reason is not None:
            for dep, _ in group:
                mod = dep.target.module
                if isinstance(mod, root_types) and mod in names and dg.is_out_channel_pruning_fn(dep.handler):
                    bad.setdefault(names[mod], reason)
            bad.setdefault(root, reason)
    return bad


@dataclass
class PruneStep:
    """One pruning step: the global channel ratio found and what it reached.

    ``overshoot`` is set when the best result lies more than :data:`OVERSHOOT` below the goal (the channel
    granularity, e.g. ``round_to``, allowed nothing closer); ``above`` is then the nearest result found above the
    goal (the unpruned measure when no ratio tried stayed above it).
    """

    ratio: float
    goal: float
    reached: float
    attempts: int
    history: History = field(default_factory=list)
    round_to_dropped: bool = False
    overshoot: bool = False
    above: float | None = None


def _prune_copy(model: nn.Module, example: torch.Tensor, criterion: Criterion, ratio: float,
                ignored: Sequence[str], global_pruning: bool, loss_fn: Callable[[nn.Module], torch.Tensor] | None,
                round_to: int | None) -> tuple[nn.Module, History]:
    tp = _tp()
    pruned = copy.deepcopy(model)
    if criterion.needs_grad:
        if loss_fn is None:
            raise ConfigError(f"criterion {criterion.name!r} needs gradients: pass loss_fn (the CLI passes --data)")
        pruned.zero_grad()
        loss_fn(pruned).backward()
    pruner = tp.pruner.BasePruner(
        pruned, example, importance=criterion.make(), pruning_ratio=ratio, global_pruning=global_pruning,
        ignored_layers=_modules(pruned, ignored), num_heads=_heads(pruned), round_to=round_to,
        max_pruning_ratio=0.95)
    was = pruned.training
    pruned.eval()
    try:
        pruner.step()
    finally:
        pruned.train(was)
    pruned.zero_grad(set_to_none=True)
    _check_runs(pruned, example)
    return pruned, [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in pruner.pruning_history()]


def _check_runs(pruned: nn.Module, example: torch.Tensor) -> None:
    """Raise a one-line :class:`PruneError` when the pruned copy no longer runs on ``example`` (a group tied to a
    tensor Torch-Pruning cannot shrink, e.g. raw inputs added straight into a Transformer's residual stream)."""
    was = pruned.training
    pruned.eval()
    try:
        with torch.no_grad():
            pruned(example)
    except (RuntimeError, ValueError, IndexError) as exc:
        attention = [n for n, m in pruned.named_modules() if isinstance(m, nn.MultiheadAttention)]
        where = (f"; the attention layers {', '.join(repr(n) for n in attention[:3])} share a residual stream that "
                 "starts at the model's input, whose width cannot shrink: add an input layer (an embedding or Linear) "
                 "before it") if attention else ""
        raise PruneError(f"the pruned model no longer runs on its example input ({type(exc).__name__}: "
                         f"{first_line(exc)}): a "
                         f"channel group is tied to a tensor that cannot be pruned{where}, or leave the layers of "
                         "that group alone with ignore=[...] (CLI: --ignore PATTERN)") from exc
    finally:
        pruned.train(was)


_Attempt = tuple[nn.Module, History, float]


@dataclass
class _Tries:
    """Prunes copies at given ratios and keeps the best result at or below ``goal`` and the nearest above it."""

    run: Callable[[float], _Attempt]
    goal: float
    count: int = 0
    best: _Attempt | None = None
    best_ratio: float = 0.0
    above: _Attempt | None = None
    above_ratio: float = 0.0
    smallest: float = math.inf
    pruned_any: bool = False

    def __call__(self, ratio: float) -> _Attempt:
        result = self.run(ratio)
        self.count += 1
        value = result[2]
        self.smallest, self.pruned_any = min(self.smallest, value), self.pruned_any or bool(result[1])
        if value <= self.goal and (self.best is None or value > self.best[2]):
            self.best, self.best_ratio = result, ratio
        elif value > self.goal and (self.above is None or value < self.above[2]):
            self.above, self.above_ratio = result, ratio
        return result

    def close_enough(self, tolerance: float) -> bool:
        return self.best is not None and self.best[2] >= self.goal * (1 - tolerance)


def _search(tries: _Tries, tolerance: float, refine: int) -> None:
    """Walk up the coarse grid until the goal is met, then bisect between the last two grid points (``refine``
    tries at most) for a result within ``tolerance`` below the goal."""
    lo = 0.0
    for ratio in _GRID:
        if tries(ratio)[2] <= tries.goal:
            break
        lo = ratio
    if tries.best is None:
        return
    hi = tries.best_ratio
    for _ in range(refine):
        if tries.close_enough(tolerance):
            break
        mid = (lo + hi) / 2
        if tries(mid)[2] <= tries.goal:
            hi = mid
        else:
            lo = mid


def _second_pass(tries: _Tries, options: dict[str, Any]) -> tuple[_Attempt, float, float | None] | None:
    """Prune the nearest result above the goal a little further (channel counts that one global ratio cannot
    give, e.g. an attention width kept while the MLPs shrink); ``(result, ratio, nearest above)`` when it gets
    closer to the goal than the best so far, else None."""
    assert tries.above is not None and tries.best is not None
    model, hist, value = tries.above
    try:
        pruned, step = prune_to(model, goal=tries.goal, base=value, _nested=True, **options)
    except PruneError:
        return None
    tries.count += step.attempts
    if not tries.best[2] < step.reached <= tries.goal:
        return None
    ratio = 1 - (1 - tries.above_ratio) * (1 - step.ratio)
    return (pruned, hist + step.history, step.reached), ratio, step.above


def prune_to(model: nn.Module, example: torch.Tensor, criterion: Criterion, goal: float,
             measure: Callable[[nn.Module], float], *, ignored: Sequence[str] = (), global_pruning: bool = True,
             loss_fn: Callable[[nn.Module], torch.Tensor] | None = None, round_to: int | None = None,
             tolerance: float = 0.02, refine: int = 8, base: float | None = None,
             _nested: bool = False) -> tuple[nn.Module, PruneStep]:
    """Prune a copy of ``model`` until ``measure(copy) <= goal`` (ideally within ``tolerance`` below it); ``model``
    itself is not changed.

    The global channel ratio is found by walking up a coarse grid until the goal is met, then bisecting between
    the last two grid points (``refine`` more tries). The walk makes no monotonicity assumption beyond the
    bracket, which matters for attention layers whose head-aware pruning jumps. When the best result is still
    more than ``tolerance`` below the goal (a jump: heads, ``round_to`` alignment), the nearest result above the
    goal is pruned further in a second pass, which keeps the alignment; a result still more than
    :data:`OVERSHOOT` below the goal is flagged ``overshoot``.

    ``base`` is ``measure(model)`` when the caller already has it (a latency measurement is not cheap).

    Raises:
        TargetOutOfReach: the goal is out of reach even at the largest ratio (95% of each group), also without
            ``round_to``.
    """
    base = measure(model) if base is None else base
    if base <= goal:
        return copy.deepcopy(model), PruneStep(0.0, goal, base, 0)
    options = {"example": example, "criterion": criterion, "measure": measure, "ignored": ignored,
               "global_pruning": global_pruning, "loss_fn": loss_fn, "round_to": round_to, "tolerance": tolerance,
               "refine": refine}

    def run(ratio: float) -> _Attempt:
        pruned, hist = _prune_copy(model, example, criterion, ratio, ignored, global_pruning, loss_fn, round_to)
        return pruned, hist, measure(pruned)

    tries = _Tries(run, goal)
    _search(tries, tolerance, refine)
    if tries.best is None and round_to and not _nested:
        # channel alignment can make the smallest reachable model too big; try again without it (reported)
        pruned, step = prune_to(model, goal=goal, base=base, **{**options, "round_to": None})
        step.attempts += tries.count
        step.round_to_dropped = True
        return pruned, step
    if tries.best is None:
        raise TargetOutOfReach(tries.smallest, goal, tries.pruned_any)
    best, ratio, above = tries.best, tries.best_ratio, base if tries.above is None else tries.above[2]
    if not _nested and not tries.close_enough(tolerance) and tries.above is not None:
        second = _second_pass(tries, options)
        if second is not None:
            best, ratio, nearer = second
            above = above if nearer is None else min(above, nearer)
    pruned, hist, value = best
    return pruned, PruneStep(ratio, goal, value, tries.count, hist, overshoot=value < goal * (1 - OVERSHOOT),
                             above=above)


def replay_history(model: nn.Module, example: torch.Tensor, history: Sequence[Sequence[Any]]) -> nn.Module:
    """Apply a recorded pruning history to an unpruned ``model`` in place (structure only) and return it.

    Raises:
        PruneError: the history names a layer the model lacks or indices out of range.
    """
    table = dict(model.named_modules())
    for entry in history:
        if len(entry) != 3 or entry[0] not in table:
            raise PruneError(f"pruning history entry {list(entry)[:2]} names no layer of this model; the file "
                             "belongs to another model")
    dg = _graph(model, example)
    for name, is_out, idxs in history:
        layer = dict(model.named_modules())[name]
        pruner = dg.get_pruner_of_module(layer)
        fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
        try:
            dg.get_pruning_group(layer, fn, idxs=[int(i) for i in idxs]).prune(record_history=False)
        except (IndexError, RuntimeError) as exc:
            raise PruneError(f"replaying the pruning history failed at {name!r}: {exc}") from None
    return model
