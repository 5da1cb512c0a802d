"""``prune(model, example_inputs, target=..., criterion=...) -> (pruned_model, report)``."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.supernets.profile import macs_by_module

from ._criteria import Criterion, get_criterion
from ._engine import (
    LAYER_TYPES,
    PruneError,
    PruneStep,
    TargetOutOfReach,
    find_unsupported,
    output_layers,
    prune_to,
    resolve_ignored,
)
from ._latency_aware import latency_stepper
from ._layer_table import LayerLatencyTable, LayerMeasure
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
        ignored_macs_share: the share of the unpruned model's MACs in the layers left alone.
        widths: out-channels per conv/linear layer, ``{name: [before, after]}``.
        steps: the ratio each iterative step used and what it reached.
        history: the replayable pruning history ``[(layer, out_channels?, indices), ...]``.
        accuracy: e.g. ``{"before": 0.93, "pruned": 0.71, "finetuned": 0.92}`` (validation split).
        notes: one line each for what the user should know: a wide overshoot of the goal (``round_to``
            alignment), layers left alone for unsupported patterns.
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
    ignored_macs_share: float = 0.0
    widths: dict[str, list[int]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    history: list[list[Any]] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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
    """Out-channels (or out-features) of every conv (transposed ones too) and linear layer, by module name."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif isinstance(m, LAYER_TYPES):
            out[name] = m.out_channels  # type: ignore[assignment]
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


def _layer_macs(model: nn.Module, example: torch.Tensor, names: Iterable[str]) -> dict[str, int]:
    """MACs of each named module (a container: of everything inside it) for one sample."""
    per = macs_by_module(model, tuple(example.shape[1:]))
    return {n: sum(v for k, v in per.items() if k == n or k.startswith(n + ".")) for n in names}


def _left_alone(reasons: dict[str, str], macs: dict[str, int], limit: int) -> str:
    """``'a' (why), 'b' (why) and N more``, the layers holding the most MACs first."""
    names = sorted(reasons, key=lambda n: -macs.get(n, 0))
    text = ", ".join(f"{n!r} ({reasons[n]})" for n in names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


_KIND_WORDS = {"macs": "MACs", "params": "parameters", "latency_ms": "latency"}


def _unreachable(exc: TargetOutOfReach, reasons: dict[str, str], macs: dict[str, int], total_macs: int,
                 base: float, kind: str) -> PruneError:
    """The one-line error for a target out of reach, naming the layers left alone and why."""
    if not exc.pruned_any:
        return PruneError(f"no layer can be pruned: {_left_alone(reasons, macs, 12)}; drop names from ignore= or "
                          "rewrite the unsupported patterns (see nasforge.prune.find_unsupported) so that some "
                          "channels can be removed")
    share = sum(macs.values()) / max(1, total_macs)
    word = _KIND_WORDS[kind]
    return PruneError(f"the target is out of reach: the smallest model pruning can reach measures "
                      f"{exc.smallest:.4g} ({exc.smallest / base:.2f} of the original {word}) > the goal "
                      f"{exc.goal:.4g} ({exc.goal / base:.2f}); the {len(reasons)} layer(s) left alone hold "
                      f"{share:.0%} of the MACs: {_left_alone(reasons, macs, 4)}; relax the target, lower "
                      "round_to, or prune fewer layers with ignore=")


@contextlib.contextmanager
def _explain_unreachable(reasons: dict[str, str], macs: dict[str, int], total_macs: int, base: float,
                         kind: str) -> Iterator[None]:
    """Turn an out-of-reach target inside the block into a :class:`PruneError` naming the layers left alone."""
    try:
        yield
    except TargetOutOfReach as exc:
        raise _unreachable(exc, reasons, macs, total_macs, base, kind) from None


def _overshoot_note(record: dict[str, Any], base: float, kind: str, round_to: int | None) -> str:
    """One line on a step's result far below its goal: what was reached, the nearest sizes on both sides, the fix."""
    def show(v: float) -> str:
        return f"{v / base:.2f}" if kind != "latency_ms" else f"{v:.3g} ms"

    low, goal, high = show(record["reached"]), show(record["goal"]), record["above"]
    reached = f"{low} reached" if kind == "latency_ms" else f"{low} of the {_KIND_WORDS[kind]} kept"
    above = "none tried above" if high is None else f"{show(high)} above"
    if round_to and round_to > 1:
        return (f"round_to={round_to} made the result overshoot: {reached} for a goal of {goal} (nearest aligned "
                f"sizes: {low} below, {above}); use --round-to 1 (round_to=None) to hit the goal exactly")
    return (f"the channel granularity made the result overshoot: {reached} for a goal of {goal} (nearest sizes: "
            f"{low} below, {above}); attention heads and small layers prune in large jumps")


def _notes(records: list[dict[str, Any]], base: float, kind: str, round_to: int | None, reasons: dict[str, str],
           macs: dict[str, int], total_macs: int) -> list[str]:
    """The report's notes: each step's wide overshoot, then the layers left alone for unsupported patterns."""
    notes = [("" if len(records) == 1 else f"step {r['step']}: ") + _overshoot_note(r, base, kind, round_to)
             for r in records if r["overshoot"]]
    bad = {n: why for n, why in reasons.items() if why.startswith("unsupported pattern")}
    if bad:
        share = sum(macs[n] for n in bad) / max(1, total_macs)
        notes.append(f"{len(bad)} layer(s) were left alone for patterns pruning cannot handle safely, holding "
                     f"{share:.0%} of the MACs: {_left_alone(bad, macs, 4)}")
    return notes


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

    def widths_to(self, pruned: nn.Module) -> dict[str, list[int]]:
        """``{layer: [width before, width in pruned]}`` (0 for a layer the pruned model lacks)."""
        after = layer_widths(pruned)
        return {n: [w, after.get(n, 0)] for n, w in self.widths.items()}

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
                 on_step: Callable[[int, PruneStep, nn.Module], None] | None,
                 step_fn: Callable[..., tuple[nn.Module, PruneStep]] = prune_to,
                 ) -> tuple[nn.Module, list[list[Any]], list[dict[str, Any]]]:
    """Reach ``goal`` in ``steps`` geometric steps (each by ``step_fn``: the ratio search or the latency-aware
    allocation); the model, the history and one record per step."""
    history: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    current = base  # pruning changes the measure; the metanetwork and finetuning do not (same structure)
    for k in range(1, steps + 1):
        step_goal = base * (goal / base) ** (k / steps)
        work, step = step_fn(work, example, crit, step_goal, measure, base=current, **options)
        current = step.reached
        history += [list(h) for h in step.history]
        records.append({"step": k, "ratio": step.ratio, "goal": step.goal, "reached": step.reached,
                        "attempts": step.attempts, "round_to_dropped": step.round_to_dropped,
                        "overshoot": step.overshoot, "above": step.above})
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
    layer_latency: LayerLatencyTable | LayerMeasure | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Structured pruning of a copy of ``model`` to ``target`` (``model`` is left unchanged): ``(pruned, report)``.

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
        unsupported: layers Torch-Pruning mishandles: ``"skip"`` (left alone, the report says so) or ``"error"``.
        tolerance: accept a result this far below the goal (relative) without further bisection.
        round_to: keep channel counts multiples of this (e.g. 8 for tensor cores); when no aligned size lies near
            the goal, the nearest one below is kept and ``report.notes`` says so.
        on_step: called after each pruning step, before its finetuning: ``(step_index, PruneStep, model)``.
        layer_latency: a device's :class:`LayerLatencyTable` (or its ``f(layer, input_shape) -> ms``, e.g.
            ``nasforge.export.layer_latency("cpu")``): channels go where they buy the most measured latency per
            importance lost (macs/latency_ms targets, counts multiples of ``round_to``), not by one global ratio.

    Raises:
        ConfigError: a bad argument (the message names it and the fix).
        PruneError: the target is out of reach (naming the layers left alone), or an unsafe layer (``"error"``).
    """
    example, tgt = _check_example(example_inputs), parse_target(target)
    crit = _check_options(criterion, unsupported, steps, metanet)
    work, (latency_fn, device) = copy.deepcopy(model), _resolve_latency(latency)
    measure, before = _measure_fn(tgt, example, latency_fn), _Before.of(work, example, latency_fn)
    reasons = _ignored(work, example, ignore, unsupported)
    goal = tgt.goal(base := before.value(tgt.kind))
    extra, macs = _prepare(work, crit, metanet, example, finetune), _layer_macs(work, example, reasons)
    options = {"ignored": list(reasons), "global_pruning": global_pruning, "loss_fn": loss_fn, "round_to": round_to,
               "tolerance": tolerance}
    allocations: list[dict[str, Any]] = []  # the latency-aware steps' extras
    step_fn = prune_to if layer_latency is None else latency_stepper(layer_latency, tgt.kind, allocations)
    with _explain_unreachable(reasons, macs, before.macs, base, tgt.kind):
        work, history, records = _prune_steps(work, example, crit, base, goal, steps, measure, options, finetune,
                                              on_step, step_fn)
    extra.update({**allocations[-1], "allocation_steps": allocations} if allocations else {})
    report = _report(work, example, tgt, criterion, global_pruning, before, latency_fn, device, reasons, macs,
                     records, history, extra)
    return work, replace(report, notes=_notes(records, base, tgt.kind, round_to, reasons, macs, before.macs))


def _report(work: nn.Module, example: torch.Tensor, tgt: Target, criterion: str, global_pruning: bool,
            before: _Before, latency_fn: Callable[[nn.Module], float] | None, device: str | None,
            reasons: dict[str, str], macs: dict[str, int], records: list[dict[str, Any]], history: list[list[Any]],
            extra: dict[str, Any]) -> PruneReport:
    """The :class:`PruneReport` of a finished pruning (times the pruned model when there is a latency measure)."""
    lat1 = latency_fn(work) if latency_fn is not None else None
    return PruneReport(
        target=str(tgt), criterion=criterion, global_pruning=global_pruning, goal=tgt.goal(before.value(tgt.kind)),
        reached=lat1 if tgt.kind == "latency_ms" else records[-1]["reached"],
        macs_before=before.macs, macs_after=model_macs(work, example), params_before=before.params,
        params_after=model_params(work), latency_before_ms=before.latency_ms, latency_after_ms=lat1, device=device,
        ignored=reasons, ignored_macs_share=sum(macs.values()) / max(1, before.macs), widths=before.widths_to(work),
        steps=records, history=history, extra=extra)
