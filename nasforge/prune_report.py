"""What ``nasforge prune`` writes for people: ``report.md`` and the ``widths.png`` bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["prune_markdown", "plot_widths"]


def prune_markdown(r: dict[str, Any]) -> str:
    """``report.md`` of a ``nasforge prune`` run from its ``report.json`` contents."""
    acc = r.get("accuracy", {})
    lat = ""
    if r.get("latency_before_ms") is not None:
        lat = (f"| latency p50 on {r['device']} (ms) | {r['latency_before_ms']:.4g} | {r['latency_after_ms']:.4g} |"
               f" {r['speedup']:.2f}x faster |\n")
    ratio = r.get("speedup_per_macs_reduction")
    lines = [
        f"# Pruning report: {r['job']['source'] or r['job'].get('model')}", "",
        f"target `{r['target']}`, criterion `{r['criterion']}`, {'global' if r['global_pruning'] else 'per-layer'} "
        f"ranking, {len(r['steps'])} step(s)", "",
        "| | before | after | change |", "|---|---|---|---|",
        f"| MACs | {r['macs_before']:,} | {r['macs_after']:,} | {r['macs_reduction']:.2f}x fewer |",
        f"| params | {r['params_before']:,} | {r['params_after']:,} | "
        f"{r['params_before'] / max(1, r['params_after']):.2f}x fewer |",
        *([lat.rstrip("\n")] if lat else []),
        f"| val accuracy | {acc.get('before', float('nan')):.4f} | "
        f"{acc.get('finetuned', acc.get('after', float('nan'))):.4f} | pruned, before finetuning: "
        f"{acc.get('pruned', float('nan')):.4f} |",
        f"| test accuracy | {acc.get('test_before', float('nan')):.4f} | {acc.get('test_after', float('nan')):.4f} | |",
        "",
    ]
    if ratio is not None:
        lines.append(f"Measured speed-up / MACs reduction: {ratio:.2f} (1.0 = latency fell as much as MACs).")
    lines += _allocation_lines(r.get("extra") or {})
    if r.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in r["notes"]]
    if r.get("ignored"):
        lines += ["", "Left alone:"] + [f"- `{k}`: {v}" for k, v in r["ignored"].items()]
    return "\n".join(lines) + "\n"


def plot_widths(widths: dict[str, list[int]], path: Path) -> None:
    """``widths.png``: out-channels per layer before and after pruning (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasforge.io import atomic_write

    names = list(widths)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 3.5))
    xs = range(len(names))
    ax.bar(xs, [widths[n][0] for n in names], color="#c8d3e6", label="before")
    ax.bar(xs, [widths[n][1] for n in names], color="#2f5d9e", label="after")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def _allocation_lines(extra: dict[str, Any]) -> list[str]:
    """The latency-aware allocation's summary: its layer table and the groups it left to no one."""
    table = extra.get("layer_table")
    if extra.get("allocation") != "latency" or not isinstance(table, dict):
        return []
    lines = ["", f"Channels allocated by measured latency saved per importance lost (layer table on "
                 f"{table.get('device')}: {table.get('entries')} entries, {table.get('measured')} measured now in "
                 f"{table.get('measure_seconds')} s)."]
    left = extra.get("left_out") or {}
    if left:
        lines.append("Groups the allocation could not price (kept): " + "; ".join(f"`{k}` ({v})" for k, v in
                                                                                 left.items()))
    return lines
