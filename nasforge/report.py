"""The run folder's human-facing outputs: ``pareto.csv``, ``pareto.png``, ``report.md`` and ``summary.json``."""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge._version import __version__
from nasforge.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from nasforge.nas import PlotSeries, pareto_front, plot_pareto

if TYPE_CHECKING:
    from nasforge.config import RunConfig
    from nasforge.data import DataSplits
    from nasforge.pipeline import RunSummary

__all__ = ["ParetoPlotData", "pareto_plot_data", "write_report", "summary_rows", "print_summary", "plot_training"]

_COLUMNS = ["subnet", "on_front", "val_acc", "test_acc", "latency_p50_ms", "latency_p90_ms", "latency_cv", "unstable",
            "search_latency_ms", "search_latency_cv", "macs", "params", "resolution", "max_abs_diff", "trial", "arch"]
#: The latency protocol's bound on the coefficient of variation: a latency whose kept round is above it is unstable.
MAX_CV = 0.1


def summary_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """One flat row per exported subnet (the columns of ``pareto.csv``)."""
    searched = {t.number: t.metrics for t in summary.search.trials}
    rows = []
    for s in summary.subnets:
        lat, found = s["latency_ms"], searched.get(s["trial"], {})
        rows.append({
            "subnet": s["subnet"], "on_front": s.get("on_front", False), "val_acc": round(s["val_acc"], 4),
            "test_acc": round(s["test_acc"], 4), "latency_p50_ms": round(lat["median_ms"], 4),
            "latency_p90_ms": round(lat["p90_ms"], 4), "latency_cv": round(lat["cv"], 3),
            "unstable": lat["cv"] > MAX_CV, "search_latency_ms": _rounded(found.get("latency_ms"), 4),
            "search_latency_cv": _rounded(found.get("latency_cv"), 3), "macs": s["macs"],
            "params": s["params"], "resolution": s["resolution"], "max_abs_diff": f"{s['max_abs_diff']:.2e}",
            "trial": s["trial"], "arch": json.dumps(s["arch"], separators=(",", ":")),
        })
    return rows


def _rounded(value: float | None, digits: int) -> float | str:
    """``value`` rounded, or ``""`` where the search did not measure it."""
    return "" if value is None else round(float(value), digits)


def write_report(cfg: RunConfig, data: DataSplits, summary: RunSummary) -> None:
    """Write ``pareto.csv``, ``pareto.png``, ``summary.json`` and ``report.md`` into the run folder."""
    out = summary.out
    rows = summary_rows(summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "pareto.csv", buf.getvalue())
    _plot(cfg, summary)
    if summary.history:
        plot_training(summary.history, out / "training.png")
    atomic_write_json(out / "summary.json", {
        "nasforge_version": __version__, "subnets": summary.subnets, "timings_s": summary.timings,
        "hypervolume": summary.hypervolume, "hypervolume_reference": list(summary.hypervolume_reference),
        "trials": len(summary.search.trials), "final_epoch": summary.history[-1] if summary.history else None,
    })
    atomic_write_text(out / "report.md", _markdown(cfg, data, summary, rows))


@dataclass(frozen=True)
class ParetoPlotData:
    """What ``pareto.png`` draws: trials and front from ONE measurement per architecture, plus apart from them
    (never mixed in) the export-time re-measure of the exported subnets.

    Attributes:
        source: ``"search"`` (trials and front at their search-time latency) or ``"export"`` (the search
            measured no latency: the exported subnets at their export-time latency, their only measurement).
        trials, front: ``{"latency_ms", "accuracy"}`` points; ``front_labels`` names the front points.
        remeasured, remeasured_labels: the exported subnets at their export-time latency (``source == "search"``).
    """

    source: str
    trials: list[dict[str, float]]
    front: list[dict[str, float]]
    front_labels: list[str]
    remeasured: list[dict[str, float]] = field(default_factory=list)
    remeasured_labels: list[str] = field(default_factory=list)


def _point(latency_ms: float, accuracy: float) -> dict[str, float]:
    return {"latency_ms": float(latency_ms), "accuracy": float(accuracy)}


def _flag(label: str, unstable: bool) -> str:
    """``label`` with a trailing ``!`` for a latency whose CV stayed above :data:`MAX_CV`."""
    return f"{label} !".strip() if unstable else label


def pareto_plot_data(summary: RunSummary) -> ParetoPlotData:
    """The points of ``pareto.png``: every trial and the (accuracy, latency) front at their search-time latency;
    the exported subnets' export-time re-measure as a separate series. Without search-time latencies, the
    exported subnets at their export-time latency are the only measurement and are drawn as trials and front."""
    exported = {s["trial"]: s for s in summary.subnets}
    done = [t for t in summary.search.trials if t.state == "complete" and t.duplicate_of is None
            and "latency_ms" in t.metrics and "accuracy" in t.metrics]
    if not done:
        front = [s for s in summary.subnets if s.get("on_front")]
        export_pt = lambda s: _point(s["latency_ms"]["median_ms"], s["val_acc"])  # noqa: E731
        return ParetoPlotData("export", [export_pt(s) for s in summary.subnets], [export_pt(s) for s in front],
                              [_flag(f"#{s['subnet']}", s["latency_ms"]["cv"] > MAX_CV) for s in front])
    feasible = [t for t in done if t.feasible]
    idx = pareto_front([[t.metrics["accuracy"], t.metrics["latency_ms"]] for t in feasible],
                       ["maximize", "minimize"]) if feasible else []
    front = [feasible[i] for i in idx]
    labels = [_flag(f"#{exported[t.number]['subnet']}" if t.number in exported else "",
                    t.metrics.get("latency_unstable") == 1.0) for t in front]
    return ParetoPlotData(
        "search", [_point(t.metrics["latency_ms"], t.metrics["accuracy"]) for t in done],
        [_point(t.metrics["latency_ms"], t.metrics["accuracy"]) for t in front], labels,
        [_point(s["latency_ms"]["median_ms"], s["val_acc"]) for s in summary.subnets],
        [_flag(f"#{s['subnet']}", s["latency_ms"]["cv"] > MAX_CV) for s in summary.subnets])


def _plot(cfg: RunConfig, summary: RunSummary) -> None:
    data = pareto_plot_data(summary)
    runs = cfg.search.latency_runs if data.source == "search" else cfg.export.runs
    extra = [PlotSeries(data.remeasured, f"exported subnets: export re-measure ({cfg.export.runs} runs)",
                        data.remeasured_labels)] if data.remeasured else []
    plot_pareto(
        data.trials, data.front, "latency_ms", "accuracy", summary.out / "pareto.png",
        title=f"{cfg.supernet.name} on {cfg.data.spec}: accuracy vs {cfg.export.backend} latency",
        xlabel=f"median latency, batch 1 ({cfg.export.backend}, {cfg.export.threads} thread(s)) [ms]; ! = CV > {MAX_CV}",
        ylabel="validation accuracy (BN recalibrated)", annotate=data.front_labels,
        trials_label=(f"trials (search measurement, {runs} runs)" if data.source == "search"
                      else f"exported subnets (export measurement, {runs} runs)"),
        front_label=f"Pareto front ({data.source} measurement, {runs} runs)", extra=extra,
    )


def plot_training(history: list[dict[str, Any]], path: Path) -> Path:
    """Training loss and the corner subnets' validation accuracy per epoch, as a PNG (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(8, 3.4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [h["loss"] for h in history], marker="o", color="tab:blue")
    loss_ax.set(xlabel="epoch", ylabel="summed loss of a step's subnets", title="training loss")
    _mark_phases(history, (loss_ax, acc_ax))
    for key, label, color in (("val_acc_max", "largest subnet", "tab:red"), ("val_acc_min", "smallest subnet", "tab:green")):
        seen = [h for h in history if key in h]  # eval_every > 1 validates some epochs only
        acc_ax.plot([h["epoch"] for h in seen], [h[key] for h in seen], marker="o", label=label, color=color)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="corner subnets (BN recalibrated)")
    acc_ax.legend(loc="lower right")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    return atomic_write_bytes(path, buf.getvalue())


def _mark_phases(history: list[dict[str, Any]], axes: Any) -> None:
    """Shade alternate phases of a multi-phase schedule and name them at the top of the loss plot."""
    spans: list[list[Any]] = []
    for h in history:
        name = h.get("phase")
        if spans and spans[-1][0] == name:
            spans[-1][2] = h["epoch"]
        else:
            spans.append([name, h["epoch"], h["epoch"]])
    if len(spans) < 2:
        return
    for i, (name, lo, hi) in enumerate(spans):
        for ax in axes:
            if i % 2:
                ax.axvspan(lo - 0.5, hi + 0.5, color="0.92", zorder=0)
        axes[0].annotate(str(name), ((lo + hi) / 2, 1.0), xycoords=("data", "axes fraction"), ha="center",
                         va="bottom", fontsize=7, rotation=30)


def _fmt_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def _compressed(cfg: RunConfig, summary: RunSummary) -> str:
    """The "Compressed subnets" section (empty without a ``compress:`` stage)."""
    subs = [s for s in summary.subnets if s.get("compressed")]
    if not subs:
        return ""
    c = cfg.compress
    fmt = lambda v, spec=".4f": "" if v is None else format(v, spec)  # noqa: E731
    rows = []
    for s in subs:
        p, q = s["compressed"].get("pruned"), s["compressed"].get("int8")
        last = q or p or {}
        row: dict[str, Any] = {"subnet": s["subnet"], "test_acc": round(s["test_acc"], 4), "macs": f"{s['macs']:,}"}
        if p is not None:
            row.update(pruned_macs=f"{p['macs_after']:,}", pruned_test_acc=fmt(p["test_acc"]))
        if q is not None:
            row.update(int8_test_acc=fmt(q["test_acc"]), int8_rel_l2=fmt(q["rel_l2"]), saturation=q["saturation"],
                       int8=_int8_choice(q))
        row.update(p50_ms=fmt(last.get("latency_p50_ms")), speedup=fmt(last.get("speedup"), ".2f"))
        rows.append(row)
    steps = ([f"pruned to `{c.prune}` ({c.criterion}, {c.finetune_epochs} finetuning epoch(s))"] if c.prune else [])
    steps += [f"quantized to INT8 ({c.method}, {c.calibration} calibration)"] if c.quantize else []
    return f"""## Compressed subnets

Each subnet was {" and then ".join(steps)}: files in `subnets/<k>/compressed/`. Accuracies are onnxruntime's on the test split; `p50_ms` is the {"INT8" if c.quantize else "pruned"} file's latency on `{cfg.export.backend}`, `speedup` is against the FP32 subnet's.{_policy_note(c) if c.quantize else ""}

{_fmt_table(rows, list(rows[0]))}

"""


def _int8_choice(q: dict[str, Any]) -> str:
    """``int8``, ``fp32 kept`` or ``float: <groups>`` for the compressed-subnets table."""
    if q.get("choice") == "fp32":
        return "fp32 kept"
    return "float: " + ", ".join(q["float_groups"]) if q.get("float_groups") else "int8"


def _policy_note(c: Any) -> str:
    if c.policy != "selective":
        return " Every operator group was quantized (`compress.policy: all`)."
    return (f" Selective quantization (batch {c.batches}): operator groups INT8 did not speed up stayed in float, "
            "and where no INT8 variant was faster at every batch size the FP32 model was kept (`int8` column; "
            "the reasons are in each `model.int8.report.md`).")


def _markdown(cfg: RunConfig, data: DataSplits, summary: RunSummary, rows: list[dict[str, Any]]) -> str:
    """``report.md``: every paragraph and list item on one line (markdown wraps them when rendering)."""
    last = summary.history[-1] if summary.history else {}
    t = summary.timings
    best = max(summary.subnets, key=lambda s: s["test_acc"])
    macs = [s["macs"] for s in summary.subnets if s.get("on_front")]
    cols = ["subnet", "on_front", "val_acc", "test_acc", "latency_p50_ms", "latency_p90_ms", "latency_cv", "stable",
            "search_latency_ms", "macs", "params", "resolution", "max_abs_diff"]
    table = [{**r, "stable": "**UNSTABLE**" if r["unstable"] else "yes"} for r in rows]
    sizes = data.describe().get("sizes", {})
    constraints = f", constraints {', '.join(cfg.search.constraints)}" if cfg.search.constraints else ""
    compress = f", compress {t['compress_s']:.1f} s" if "compress_s" in t else ""
    return f"""# nasforge run report

- nasforge {__version__}, Python {sys.version.split()[0]}, {platform.machine()}
- data: `{cfg.data.spec}` ({data.image_size}px, {data.num_classes} classes; train/val/test = {sizes.get('train')}/{sizes.get('val')}/{sizes.get('test')}), seed {cfg.seed}
- supernet: `{cfg.supernet.name}`, trainer `{cfg.train.trainer}`, {cfg.train.epochs} epochs; final epoch: largest subnet val acc {last.get('val_acc_max', float('nan')):.4f}, smallest {last.get('val_acc_min', float('nan')):.4f}
- search: {len(summary.search.trials)} trials, sampler `{cfg.search.sampler}`, objectives {', '.join(cfg.search.objectives)}{constraints}
- time: data {t.get('data_s', 0):.1f} s, train {t.get('train_s', 0):.1f} s, search {t.get('search_s', 0):.1f} s, export+measure {t.get('export_s', 0):.1f} s{compress}

## Exported subnets

Accuracy is measured after BN recalibration; `test_acc` is the exported ONNX model's accuracy in onnxruntime. Latency: `{cfg.export.backend}`, batch 1, {cfg.export.threads} thread(s), {cfg.export.warmup} warm-up and {cfg.export.runs} timed runs, timed again while the coefficient of variation (`latency_cv`, std / mean) exceeds {MAX_CV}. `search_latency_ms` is the same subnet's latency during the search ({cfg.search.latency_runs} runs), the measurement that placed it on the front. `max_abs_diff` is the ONNX-vs-PyTorch parity check (tolerance {cfg.export.atol}).

{_fmt_table(table, cols)}

{_stability(rows)}

Best test accuracy: subnet {best['subnet']} ({best['test_acc']:.4f}). Front MACs range: {min(macs) if macs else 0:,} .. {max(macs) if macs else 0:,} ({(max(macs) / min(macs)) if macs else 0:.1f}x). Hypervolume of the (val accuracy, export latency) front: {summary.hypervolume:.4f} against the reference point (accuracy {summary.hypervolume_reference[0]}, latency {summary.hypervolume_reference[1]:.4f} ms).

{_compressed(cfg, summary)}{_plot_note(cfg, summary)}

![Pareto front](pareto.png)

![Training](training.png)

Each `subnets/<k>/` holds `arch.json`, `model.onnx` (architecture, normalisation and source checkpoint hash in its metadata) and `metrics.json`. Reproduce with `nasforge run --config config.yaml --out NEW_DIR`.
"""


def _stability(rows: list[dict[str, Any]]) -> str:
    """One paragraph: whether every exported latency met the CV bound, naming the subnets that did not."""
    bad = [r for r in rows if r["unstable"]]
    if not bad:
        return f"All {len(rows)} exported latencies are stable (CV <= {MAX_CV})."
    names = ", ".join(f"{r['subnet']} (CV {r['latency_cv']})" for r in bad)
    return (f"**Unstable latency:** {len(bad)} of {len(rows)} exported subnets kept a CV above {MAX_CV} after "
            f"re-measuring: subnet {names}. The machine was busy while they were timed; do not trust these "
            "numbers, re-measure them on an idle machine.")


def _plot_note(cfg: RunConfig, summary: RunSummary) -> str:
    """How to read ``pareto.png``: which measurement places its points."""
    if pareto_plot_data(summary).source == "export":
        return (f"The plot shows the exported subnets at their export-time latency ({cfg.export.runs} runs), the "
                "only latency this run measured; the front is highlighted and `!` marks an unstable latency.")
    return (f"In the plot every trial and the front sit at their search-time latency ({cfg.search.latency_runs} "
            f"runs each), one measurement per architecture; the hollow markers are the exported subnets' export "
            f"re-measure ({cfg.export.runs} runs), drawn apart and not comparable with the grey points; `!` marks "
            "an unstable latency.")


def print_summary(summary: RunSummary, console: Any | None = None) -> None:
    """Print the exported subnets as a table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"nasforge run: {summary.out}")
    for col in ("subnet", "front", "val acc", "test acc", "p50 ms", "p90 ms", "CV", "MACs", "params", "res"):
        table.add_column(col, justify="right")
    rows = summary_rows(summary)
    for r in rows:
        table.add_row(str(r["subnet"]), "*" if r["on_front"] else "", f"{r['val_acc']:.4f}", f"{r['test_acc']:.4f}",
                      f"{r['latency_p50_ms']:.3f}", f"{r['latency_p90_ms']:.3f}",
                      f"{r['latency_cv']:.3f}" + (" ! unstable" if r["unstable"] else ""), f"{r['macs']:,}",
                      f"{r['params']:,}", str(r["resolution"]))
    console.print(table)
    console.print(_stability(rows).replace("**", ""), markup=False)
    console.print(f"report: {summary.out / 'report.md'}  plot: {summary.out / 'pareto.png'}")
