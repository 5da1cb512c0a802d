"""Selective quantization: INT8 only where it pays on the target, FP32 where nothing does.

The decision is measured, not modelled. The whole graph is quantized first; then, group by group
(:mod:`nasforge.quantize._groups`), each variant that keeps one more group in float is quantized and timed on
the device against the FP32 file at every batch size asked for (the two alternately, the better of two rounds).
The group whose return to float raises the worst-batch speed-up the most (by more than ``tolerance``, also when
both variants are measured again with the full protocol) stays in float, and the search goes on from there
(greedy backward elimination; at most one round per group). The fastest variant is timed again with the full
protocol (the variants are screened with a quarter of the timed runs) and shipped if it is at least
``min_speedup`` times faster than FP32 at every batch; otherwise the FP32 model itself is written, and the
report says why.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge.errors import ExportError
from nasforge.io import atomic_write
from nasforge.onnx_io import load_onnx
from nasforge.runlock import temp_prefix

from ._groups import GROUP_DESCRIPTIONS

if TYPE_CHECKING:
    from ._config import QuantConfig
    from ._ort import OrtQuantization

__all__ = ["Selection", "Trial", "run_selection", "select_groups"]

Latency = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Trial:
    """One measured variant: the groups it keeps in float and, per batch size, FP32 and INT8 p50 and speed-up."""

    float_groups: tuple[str, ...]
    latency: Latency
    error: str = ""

    @property
    def worst(self) -> float:
        """The lowest speed-up over the measured batch sizes."""
        return min(row["speedup"] for row in self.latency.values())

    def label(self) -> str:
        return "all INT8" if not self.float_groups else "float: " + ", ".join(self.float_groups)

    def to_dict(self) -> dict[str, Any]:
        return {"float_groups": list(self.float_groups), "latency": self.latency, "worst_speedup": self.worst,
                "error": self.error}


@dataclass
class Selection:
    """What selective quantization decided.

    Attributes:
        choice: ``"int8"`` (every group quantized), ``"mixed"`` (some groups in float) or ``"fp32"`` (no variant
            paid: the FP32 model was written).
        reason: one sentence.
        groups: the graph's operator groups and their node counts.
        float_groups: each group kept in float and why.
        trials: every variant measured, in order.
        min_speedup: the bar a variant had to clear at every batch size.
    """

    choice: str
    reason: str
    groups: dict[str, int]
    float_groups: dict[str, str] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)
    min_speedup: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["trials"] = [t.to_dict() for t in self.trials]
        return out

    def markdown(self) -> list[str]:
        """The report's section."""
        lines = ["", "## Selective quantization", "", f"**{self.choice.upper()}**: {self.reason}"]
        if self.float_groups:
            lines += ["", "Kept in float:"]
            lines += [f"- `{g}` ({GROUP_DESCRIPTIONS.get(g, g)}, {self.groups.get(g, 0)} nodes): {why}"
                      for g, why in self.float_groups.items()]
        if self.trials:
            batches = list(self.trials[0].latency)
            lines += ["", "| variant | " + " | ".join(f"batch {b} speed-up" for b in batches) + " |",
                      "|---|" + "---|" * len(batches)]
            lines += [f"| {t.label()} | " + (" | ".join(f"{t.latency[b]['speedup']:.2f}x" for b in batches)
                                              if not t.error else f"not written: {t.error}") + " |"
                      for t in self.trials]
        return lines


def select_groups(groups: Sequence[str], run: Callable[[tuple[str, ...]], Trial], *, min_speedup: float,
                  tolerance: float = 0.02, log: Callable[[str], None] | None = None,
                  fixed: Sequence[str] = (), first: Trial | None = None,
                  confirm: Callable[[tuple[str, ...]], Trial] | None = None) -> tuple[Selection, Trial]:
    """Greedy backward elimination over ``groups``; ``run(float_groups)`` quantizes and measures one variant.
    :func:`run_selection` measures the winner once more before shipping it (the best of several noisy trials
    is biased upwards).

    Args:
        groups: the groups that may go back to float.
        run: measures the variant keeping ``fixed`` plus the given groups in float.
        min_speedup: the worst-batch speed-up the chosen variant must reach, else FP32 is kept.
        tolerance: a group goes back to float only if that raises the worst-batch speed-up by more than this
            fraction (timing noise is not a reason to give up INT8).
        fixed: groups the user already asked to keep in float.
        first: the all-INT8 variant, if already measured.
        confirm: measures an already written variant again (the full protocol); a group goes back to float only
            if the step still clears ``tolerance`` when both variants are measured again.

    Returns:
        ``(the selection, the best trial)``.
    """
    say = log or (lambda _msg: None)
    best = first if first is not None else run(())
    trials, reasons = [best], {g: "asked for (float_groups)" for g in fixed}
    left = [g for g in groups if g not in fixed]
    while len(left) > 1:  # the last group in float as well would be the FP32 model, not an INT8 variant
        tried = [run(best.float_groups + (g,)) for g in left]
        trials += tried
        top = max(tried, key=lambda t: t.worst)
        if top.worst <= best.worst * (1 + tolerance):
            break
        group = top.float_groups[-1]
        if confirm is not None:
            top, best = confirm(top.float_groups), confirm(best.float_groups)
            trials += [top, best]
            if top.worst <= best.worst * (1 + tolerance):
                say(f"{group} in float: not confirmed when measured again ({best.worst:.2f}x -> {top.worst:.2f}x)")
                break
        reasons[group] = (f"INT8 did not pay: keeping it in float raised the worst-batch speed-up from "
                          f"{best.worst:.2f}x to {top.worst:.2f}x")
        say(f"keeping {group} in float: worst-batch speed-up {best.worst:.2f}x -> {top.worst:.2f}x")
        best = top
        left.remove(group)
    speeds = ", ".join(f"{row['speedup']:.2f}x at batch {b}" for b, row in best.latency.items())
    all_groups: dict[str, int] = {}  # node counts: filled in by run_selection, which knows the graph
    if best.worst < min_speedup:
        reason = (f"no INT8 variant was at least {min_speedup:.2f}x faster than FP32 at every batch size; the best "
                  f"({best.label()}) ran {speeds}, so the FP32 model is kept")
        return Selection("fp32", reason, all_groups, {}, trials, min_speedup), best
    choice = "mixed" if best.float_groups or fixed else "int8"
    reason = f"{best.label()} runs {speeds} against FP32 on the device"
    kept = {g: reasons[g] for g in (*fixed, *best.float_groups)}
    return Selection(choice, reason, all_groups, kept, trials, min_speedup), best


def run_selection(src: Path, dst: Path, config: QuantConfig,
                  quantize: Callable[[Path, QuantConfig], OrtQuantization],
                  measure: Callable[[Path, bool], Latency], log: Callable[[str], None] | None = None,
                  ) -> tuple[OrtQuantization, Latency, Selection]:
    """Quantize ``src`` selectively into ``dst`` (:func:`select_groups`): the chosen variant is moved to ``dst``,
    or, when no variant pays, the FP32 model is written there with its metadata saying so.

    Args:
        quantize: writes one variant (``quantize_onnx`` with the settings bound).
        measure: FP32 and the variant's p50 per batch size on the device; its flag is True while screening
            variants (a shorter protocol may be used) and False for the winner's final measurement.

    Returns:
        ``(what was written, its latency per batch, the selection)``.
    """
    say = log or (lambda _msg: None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, ...], OrtQuantization] = {}
    trials_seen: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix=temp_prefix(dst.name), suffix=".select", dir=dst.parent) as tmp:

        def run(extra: tuple[str, ...]) -> Trial:
            cfg = dataclasses.replace(config, float_groups=(*config.float_groups, *extra))
            try:
                written = quantize(Path(tmp) / f"variant{len(files)}.onnx", cfg)
            except ExportError as err:
                if not extra:  # all-INT8 itself failed: nothing to select from
                    raise
                say(f"float: {', '.join(extra)}: onnxruntime could not quantize this variant ({err}); skipped")
                return Trial(extra, {b: {"fp32_ms": row["fp32_ms"], "speedup": 0.0}
                                     for b, row in trials_seen[0].latency.items()}, error=str(err))
            files[extra] = written
            trial = Trial(extra, measure(written.path, True))
            trials_seen.append(trial)
            say(f"{trial.label()}: worst-batch speed-up {trial.worst:.2f}x")
            return trial

        first = run(())
        groups = files[()].groups
        candidates = [g for g in groups if g not in config.float_groups]
        selection, best = select_groups(
            candidates, run, min_speedup=config.min_speedup, log=say, fixed=config.float_groups, first=first,
            confirm=lambda extra: Trial(extra, measure(files[extra].path, False)))
        selection.groups = dict(groups)
        if selection.choice != "fp32":  # the winner of several noisy trials is measured once more, afresh
            best = Trial(best.float_groups, measure(files[best.float_groups].path, False))
            selection.trials.append(best)
            if best.worst < config.min_speedup:
                _fall_back(selection, best)
        if selection.choice == "fp32":
            written = _write_fp32(src, dst, files[()], selection.reason)
            latency = {b: {"fp32_ms": r["fp32_ms"], "int8_ms": r["fp32_ms"], "speedup": 1.0}
                       for b, r in best.latency.items()}
            return written, latency, selection
        chosen = files[best.float_groups]
        os.replace(chosen.path, dst)
        return dataclasses.replace(chosen, path=dst), best.latency, selection


def _fall_back(selection: Selection, best: Trial) -> None:
    """The re-measured winner missed the bar: FP32 is kept."""
    speeds = ", ".join(f"{row['speedup']:.2f}x at batch {b}" for b, row in best.latency.items())
    selection.choice, selection.float_groups = "fp32", {}
    selection.reason = (f"the best INT8 variant ({best.label()}) ran {speeds} when measured again, not "
                        f"{selection.min_speedup:.2f}x faster at every batch size, so the FP32 model is kept")


def _write_fp32(src: Path, dst: Path, quantized: OrtQuantization, reason: str) -> OrtQuantization:
    """Write the FP32 model ``src`` to ``dst`` (atomically), its metadata saying that INT8 was not kept."""
    from ._ort import copy_metadata

    model = load_onnx(src, check=False)
    settings = {"kept": "fp32", "reason": reason}
    copy_metadata(model, model, settings)
    atomic_write(dst, lambda fh: fh.write(model.SerializeToString()))
    compute = quantized.quantized_nodes + quantized.float_nodes
    return dataclasses.replace(quantized, path=dst, quantized_nodes=0, float_nodes=compute,
                               settings={**quantized.settings, **settings, "quantized_nodes": 0,
                                         "float_nodes": compute})
