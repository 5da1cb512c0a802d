"""Benchmark: the default `nasforge run` (digits, mbv3-small), checked against the foundation issue's goals.

Runs the whole pipeline in this process, then, as a same-process baseline, exports and times the largest subnet
(what you would ship without a search) with the same profiler and protocol, and prints a Markdown section for
BENCHMARKS.md.

    python benchmarks/default_run.py [--out DIR] [--epochs N] [--trials N] [--seed S]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from nasforge.config import RunConfig
from nasforge.data import load_data
from nasforge.export import export_onnx, measure_latency
from nasforge.pipeline import run_pipeline
from nasforge.progress import ProgressReporter
from nasforge.supernets.checkpoint import load_supernet
from nasforge.supernets.evaluate import accuracy, calibrated_subnet, resize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    overrides = {"seed": args.seed}
    if args.epochs:
        overrides["train__epochs"] = args.epochs
    if args.trials:
        overrides["search__trials"] = args.trials
    cfg = RunConfig().with_overrides(**overrides)
    out = args.out or Path(tempfile.mkdtemp(prefix="nasforge-bench-")) / "run"
    t0 = time.perf_counter()
    summary = run_pipeline(cfg, out, reporter=ProgressReporter())
    wall = time.perf_counter() - t0

    baseline = _largest_subnet_baseline(cfg, out)
    front = [s for s in summary.subnets if s.get("on_front")]
    best = max(summary.subnets, key=lambda s: s["test_acc"])
    fastest = min(front, key=lambda s: s["latency_ms"]["median_ms"])
    macs = [s["macs"] for s in front]
    worst_diff = max(s["max_abs_diff"] for s in summary.subnets)
    checks = {
        "under 10 minutes": wall < 600,
        "best subnet >= 95% test accuracy": best["test_acc"] >= 0.95,
        ">= 3 front subnets": len(front) >= 3,
        "front spans >= 3x MACs": max(macs) / min(macs) >= 3,
        "every ONNX within 1e-4 of PyTorch": worst_diff <= 1e-4,
    }
    t = summary.timings
    print(f"""
### Default run (`nasforge run`, seed {cfg.seed})

Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; command:
`python benchmarks/default_run.py --seed {cfg.seed}` (equivalent to `nasforge run --seed {cfg.seed}`).

| measure | value |
|---|---|
| wall time (whole pipeline) | {wall:.0f} s (train {t['train_s']:.0f} s, search {t['search_s']:.0f} s, export+measure {t['export_s']:.0f} s) |
| corner subnets after training (val acc, largest / smallest) | {summary.history[-1]['val_acc_max']:.4f} / {summary.history[-1]['val_acc_min']:.4f} |
| exported subnets / on the (val acc, latency) front | {len(summary.subnets)} / {len(front)} |
| best exported test accuracy (ONNX in onnxruntime) | {best['test_acc']:.4f} (subnet {best['subnet']}) |
| front MACs range | {min(macs):,} .. {max(macs):,} ({max(macs) / min(macs):.1f}x) |
| worst ONNX-vs-PyTorch max abs diff | {worst_diff:.2e} |
| fastest front subnet vs largest subnet (same process, same protocol) | {fastest['latency_ms']['median_ms']:.3f} ms vs {baseline['latency_ms']:.3f} ms = {baseline['latency_ms'] / fastest['latency_ms']['median_ms']:.2f}x faster; test acc {fastest['test_acc']:.4f} vs {baseline['test_acc']:.4f} |

Front (sorted by MACs):

| subnet | val acc | test acc | p50 ms | p90 ms | MACs | params | res |
|---|---|---|---|---|---|---|---|
""" + "\n".join(
        f"| {s['subnet']} | {s['val_acc']:.4f} | {s['test_acc']:.4f} | {s['latency_ms']['median_ms']:.3f} | "
        f"{s['latency_ms']['p90_ms']:.3f} | {s['macs']:,} | {s['params']:,} | {s['resolution']} |" for s in front
    ) + "\n\nGoals: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()) + f"\n\nRun folder: {out}")


def _largest_subnet_baseline(cfg: RunConfig, out: Path) -> dict[str, float]:
    """Export and time the largest subnet, the no-search baseline, with the run's own settings."""
    net, _ = load_supernet(out / "checkpoints" / "supernet.pt")
    data = load_data(cfg.data.spec, image_size=cfg.data.image_size, seed=cfg.seed,
                     val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction)
    arch = net.space.largest()
    r = net.resolution(arch)
    sub = calibrated_subnet(net, arch, data.train.x[: cfg.search.calib_images], cfg.search.calib_images)
    path = out / "baseline_largest.onnx"
    export_onnx(sub, resize(data.val.x[:1], r), path, exporter=cfg.export.exporter)
    lat = measure_latency(path, backend=cfg.export.backend, runs=cfg.export.runs, warmup=cfg.export.warmup,
                          threads=cfg.export.threads)
    return {"latency_ms": lat.median_ms, "test_acc": accuracy(sub, data.test.x, data.test.y, r)}


if __name__ == "__main__":
    main()
