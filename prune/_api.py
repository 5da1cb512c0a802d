"""``prune(model, example_inputs, target=..., criterion=...) -> (pruned_model, report)``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError

from ._criteria import Criterion, get_criterion
from ._engine import PruneError, PruneStep, find_unsupported, output_layers, prune_to, resolve_ignored
from ._target import Target, model_macs, model_params, parse_target

__all__ = ["PruneReport", "prune", "layer_widths"]

@dataclass
class PruneReport:
    """What pruning did. Accuracy fields are filled by callers that have data (the CLI, :func:`prune_and_finetune`).

    Attributes:
        target: the target as given (``macs=0.5``); ``goal`` is its absolute value and ``reached`` what the
            pruned model measures.
        macs_before, macs_after, params_before, params_after: counts for one sample.
        latency_before_ms, latency_after_ms: measured p50 on ``device`` (None when no latency was measured).
        ignored: layers left alone and why (the classifier, user patterns, patterns Torch-Pruning mishandles).
        widths: out-channels per conv/linear layer, ``{name: [before, after]}``.
        steps: the ratio each iterative step used and what it reached.
        history: the replayable pruning history ``[(layer, out_channels?, indices), ...]``.
        accuracy: e.g. ``{"before": 0.93, "pruned": 0.71, "finetuned": 0.92}`` (validation split).
    """

    target: str
    criterion: str
    global_pruning: bool
    goal: float
    reached: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    device: str | None = None
    ignored: dict[str, str] = field(default_factory=dict)
    widths: dict[str, list[int]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    history: list[list[Any]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def macs_reduction(self) -> float:
        """Original MACs / pruned MACs (2.0 = half the MACs)."""
        return self.macs_before / max(1, self.macs_after)

    @property
    def speedup(self) -> float | None:
        """Measured latency before / after (None without latency)."""
        if self.latency_before_ms is None or self.latency_after_ms is None:
            return None
        return self.latency_before_ms / self.latency_after_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["macs_reduction"] = self.macs_reduction
        out["speedup"] = self.speedup
        out["speedup_per_macs_reduction"] = None if self.speedup is None else self.speedup / self.macs_reduction
        return out


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Out-channels (or out-features) of every conv and linear layer, by module name."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def _check_example(example: Any) -> torch.Tensor:
    if not isinstance(example, torch.Tensor) or example.dim() < 2 or not example.is_floating_point():
        raise ConfigError("example_inputs must be one float tensor with a batch dimension, e.g. torch.randn(1, 3, "
                          "32, 32)")
    return example


def _measure_fn(target: Target, example: torch.Tensor,
                latency: Callable[[nn.Module], float] | None) -> Callable[[nn.Module], float]:
    if target.kind == "macs":
        return lambda m: float(model_macs(m, example))
    if target.kind == "params":
        return lambda m: float(model_params(m))
    if latency is None:
        raise ConfigError("a latency_ms target needs a latency measure: pass latency=nasforge.export.device_latency("
                          "DEVICE, example_inputs) (e.g. DEVICE 'cpu') or another callable model -> ms")
    return latency


def _resolve_latency(latency: Callable[[nn.Module], float] | None
                     ) -> tuple[Callable[[nn.Module], float] | None, str | None]:
    """``(the measure, the device name for the report)``; a device name is refused with how to build a measure."""
    if latency is None or callable(latency):
        return latency, None if latency is None else getattr(latency, "device_name", "custom")
    raise ConfigError(f"latency={latency!r}: prune() takes a callable model -> ms; for a device, pass "
                      f"latency=nasforge.export.device_latency({latency!r}, example_inputs)")


def _ignored(model: nn.Module, example: torch.Tensor, ignore: Iterable[str], unsupported: str) -> dict[str, str]:
    reasons = {name: "produces the model's output" for name in output_layers(model, example)}
    for name in resolve_ignored(model, ignore):
        reasons.setdefault(name, "asked to leave alone")
    bad = find_unsupported(model, example, list(reasons))
    if bad and unsupported == "error":
        name, why = next(iter(bad.items()))
        raise PruneError(f"layer {name!r} cannot be pruned safely: {why}; pass ignore=[{name!r}] (CLI: --ignore "
                         f"{name}) or unsupported='skip' to leave such layers alone")
    for name, why in bad.items():
        reasons.setdefault(name, f"unsupported pattern: {why}")
    return reasons


@dataclass
class _Before:
    """What the unpruned model measures: widths, MACs, params and (when measured) latency."""

    widths: dict[str, int]
    macs: int
    params: int
    latency_ms: float | None

    @classmethod
    def of(cls, model: nn.Module, example: torch.Tensor, latency: Callable[[nn.Module], float] | None) -> _Before:
        widths, macs, params = layer_widths(model), model_macs(model, example), model_params(model)
        return cls(widths, macs, params, latency(model) if latency is not None else None)

    def value(self, kind: str) -> float:
        """The measure a target of ``kind`` is relative to."""
        base = {"macs": float(self.macs), "params": float(self.params)}.get(kind, self.latency_ms)
        assert base is not None  # _measure_fn refused a latency target without a latency measure
        return base


def _check_options(criterion: str, unsupported: str, steps: int, metanet: Any) -> Criterion:
    """The criterion called ``criterion``, after checking the options :func:`prune` validates up front."""
    if unsupported not in ("skip", "error"):
        raise ConfigError(f"unsupported={unsupported!r}; use 'skip' or 'error'")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be a positive integer")
    crit = get_criterion(criterion)
    if crit.needs_metanet and metanet is None:
        raise ConfigError(f"criterion {crit.name!r} needs a trained metanetwork: pass metanet=FILE (nasforge prune "
                          "meta-train writes one)")
    return crit


def _prepare(work: nn.Module, crit: Criterion, metanet: Any, example: torch.Tensor,
             finetune: Callable[[nn.Module], None] | None) -> dict[str, Any]:
    """Run the criterion's ``prepare`` (then ``finetune``) on ``work``; the report extras it returns."""
    if crit.prepare is None:
        return {}
    extra = dict(crit.prepare(work, metanet, example))
    if finetune is not None:
        finetune(work)
    return extra


def _prune_steps(work: nn.Module, example: torch.Tensor, crit: Criterion, base: float, goal: float, steps: int,
                 measure: Callable[[nn.Module], float], options: dict[str, Any],
                 finetune: Callable[[nn.Module], None] | None,
                 on_step: Callable[[int, PruneStep, nn.Module], None] | None
                 ) -> tuple[nn.Module, list[list[Any]], list[dict[str, Any]]]:
    """Reach ``goal`` in ``steps`` geometric steps; the model, the history and one record per step."""
    history: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    current = base  # pruning changes the measure; the metanetwork and finetuning do not (same structure)
    for k in range(1, steps + 1):
        step_goal = base * (goal / base) ** (k / steps)
        work, step = prune_to(work, example, crit, step_goal, measure, base=current, **options)
        current = step.reached
        history += [list(h) for h in step.history]
        records.append({"step": k, "ratio": step.ratio, "goal": step.goal, "reached": step.reached,
                        "attempts": step.attempts, "round_to_dropped": step.round_to_dropped})
        if on_step is not None:
            on_step(k, step, work)
        if finetune is not None:
            finetune(work)
    return work, history, records


def prune(
    model: nn.Module, example_inputs: torch.Tensor, *, target: str | Target = "macs=0.5", criterion: str = "l2",
    global_pruning: bool = True, ignore: Iterable[str] = (), steps: int = 1,
    finetune: Callable[[nn.Module], None] | None = None, loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    metanet: Any = None, latency: Callable[[nn.Module], float] | None = None, unsupported: str = "skip",
    tolerance: float = 0.02, round_to: int | None = None,
    on_step: Callable[[int, PruneStep, nn.Module], None] | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Structured pruning of a copy of ``model`` to ``target``; ``model`` itself is left unchanged.

    Args:
        model: a conv or Transformer network returning one tensor (e.g. logits).
        example_inputs: one input batch to trace the network with.
        target: ``macs=0.5`` / ``macs=2x`` (keep half the MACs), ``params=0.3``, or ``latency_ms=3`` (needs
            ``latency``). Met from below within ``tolerance`` (relative) where the channel granularity allows.
        criterion: one of :func:`list_criteria` (``include_metanet=True``): ``"gmn"`` (the graph metanetwork
            rewrites the weights first, then group-L2 pruning) needs ``metanet``.
        global_pruning: rank channel groups across layers (``True``) or prune every layer by the same ratio.
        ignore: fnmatch patterns of module names to leave alone (the output layer always is).
        steps: iterative pruning: the target is reached in ``steps`` geometric steps, ``finetune`` after each.
        finetune: called on the model after every step (and after the metanetwork for ``gmn``).
        loss_fn: ``loss_fn(model) -> scalar loss`` on a data batch, for criteria that read gradients (taylor).
        metanet: a :class:`GraphMetanetwork` or the path of a saved one (``gmn`` only).
        latency: ``f(model) -> ms`` (a device's: ``nasforge.export.device_latency("cpu", example_inputs)``), timed
            before and after and the measure of a ``latency_ms`` target; the report's device is its ``device_name``.
        unsupported: what to do with layers Torch-Pruning mishandles: ``"skip"`` (leave them alone and say so in
            the report) or ``"error"``.
        tolerance: accept a result this far below the goal (relative) without further bisection.
        round_to: keep channel counts multiples of this (e.g. 8 for tensor cores).
        on_step: called after each pruning step, before its finetuning: ``(step_index, PruneStep, model)``.

    Returns:
        ``(pruned_model, report)``.

    Raises:
        ConfigError: a bad argument (the message names it and the fix).
        PruneError: the target is out of reach, or a layer cannot be pruned safely with ``unsupported="error"``.
    """
    example, tgt = _check_example(example_inputs), parse_target(target)
    crit = _check_options(criterion, unsupported, steps, metanet)
    work, (latency_fn, device) = copy.deepcopy(model), _resolve_latency(latency)
    measure = _measure_fn(tgt, example, latency_fn)
    before = _Before.of(work, example, latency_fn)
    reasons = _ignored(work, example, ignore, unsupported)
    base = before.value(tgt.kind)
    goal = tgt.goal(base)
    extra = _prepare(work, crit, metanet, example, finetune)
    options = {"ignored": list(reasons), "global_pruning": global_pruning, "loss_fn": loss_fn, "round_to": round_to,
               "tolerance": tolerance}
    work, history, records = _prune_steps(work, example, crit, base, goal, steps, measure, options, finetune, on_step)
    after = layer_widths(work)
    lat1 = latency_fn(work) if latency_fn is not None else None
    report = PruneReport(
        target=str(tgt), criterion=criterion, global_pruning=global_pruning, goal=goal,
        reached=lat1 if tgt.kind == "latency_ms" else records[-1]["reached"],
        macs_before=before.macs, macs_after=model_macs(work, example), params_before=before.params,
        params_after=model_params(work), latency_before_ms=before.latency_ms, latency_after_ms=lat1, device=device,
        ignored=reasons, widths={n: [before.widths[n], after.get(n, 0)] for n in before.widths}, steps=records,
        history=history, extra=extra)
    return work, report
