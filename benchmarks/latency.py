"""Export and latency on this CPU: ORT vs eager PyTorch, achieved GFLOP/s, and the latency-table predictor's error.

    python benchmarks/latency.py --out /tmp/latency-bench [--space mbv3-small] [--subnets 6] [--samples 30]
        [--threads 1]

1. **ORT vs eager PyTorch:** ``--subnets`` subnets of ``--space`` (corners plus random ones, untrained weights: latency
   does not depend on them) are exported to ONNX and timed with the ``ort-cpu`` and ``torch-cpu`` profilers at
   batch 1 and 32, alternating the two backends subnet by subnet (same process, same threads).
2. **Achieved GFLOP/s:** each subnet's 2 x MACs x batch / median time, against this machine's fp32 matrix-multiply
   rate measured in the same process (``torch.mm`` of 1024 x 1024 matrices with the same thread count).
3. **Latency table:** ``nasforge.export.build_latency_table`` on ``ort-cpu`` (``--calibration`` subnets fit the
   correction), then ``validate_latency_table`` on ``--samples`` fresh random subnets: MAPE and Kendall tau, and the
   MAPE of the uncorrected sum of segments.

Writes ``results.json``, ``latency_table.json`` and ``table_pred_vs_measured.png`` into ``--out`` and prints the tables
for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nasforge.export import build_latency_table, export_onnx, get_profiler, validate_latency_table
from nasforge.supernets import create_supernet


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    """Best fp32 ``torch.mm`` rate of ``reps`` n x n products (2 n^3 flops each)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--space", default="mbv3-small")
    ap.add_argument("--subnets", type=int, default=6)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=30, help="random subnets to validate the table on")
    ap.add_argument("--calibration", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    net = create_supernet(args.space).eval()
    rng = random.Random(args.seed)
    archs = [net.space.smallest(), net.space.largest()] + [net.space.sample(rng) for _ in range(args.subnets - 2)]
    peak = matmul_gflops(args.threads)
    print(f"fp32 matmul rate (torch.mm 1024x1024, {args.threads} thread(s)): {peak:.1f} GFLOP/s", flush=True)

    ort, eager = get_profiler("ort-cpu"), get_profiler("torch-cpu")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, arch in enumerate(archs):
            sub = net.extract(arch).eval()
            shape = net.input_shape(arch)
            path = Path(tmp) / f"s{i}.onnx"
            export_onnx(sub, torch.randn(1, *shape), path, dynamic_batch=True, exporter="torchscript", atol=1e-3,
                        check_inputs=[torch.randn(32, *shape)])
            macs = net.macs(arch)
            for batch in (1, 32):
                runs = args.runs if batch == 1 else max(20, args.runs // 4)
                o = ort.measure(path, batch=batch, runs=runs, warmup=20, threads=args.threads)
                e = eager.measure(sub, input_shape=shape, batch=batch, runs=runs, warmup=20, threads=args.threads)
                flops = 2.0 * macs * batch
                rows.append({"subnet": i, "macs": macs, "resolution": shape[-1], "batch": batch,
                             "ort_ms": o.median_ms, "ort_cv": o.cv, "torch_ms": e.median_ms, "torch_cv": e.cv,
                             "speedup": e.median_ms / o.median_ms, "ort_gflops": flops / o.median_ms / 1e6,
                             "torch_gflops": flops / e.median_ms / 1e6})
                r = rows[-1]
                print(f"  subnet {i} ({macs / 1e6:.2f} MMACs) batch {batch}: ort {r['ort_ms']:.3f} ms, "
                      f"torch {r['torch_ms']:.3f} ms, x{r['speedup']:.2f}", flush=True)

    t0 = time.perf_counter()
    table = build_latency_table(net, ort, device={"name": "cpu"}, threads=args.threads,
                                calibration=args.calibration, seed=args.seed)
    build_s = time.perf_counter() - t0
    table.save(args.out / "latency_table.json")
    t0 = time.perf_counter()
    report = validate_latency_table(table, net, ort, samples=args.samples, seed=args.seed + 777,
                                    runs=args.runs)
    validate_s = time.perf_counter() - t0

    print(f"\n{args.space}, {args.threads} thread(s); ORT graph optimisation ALL vs eager PyTorch (inference mode)\n")
    print("| subnet | MMACs | batch | ORT ms | eager ms | eager / ORT | ORT GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['subnet']} | {r['macs'] / 1e6:.2f} | {r['batch']} | {r['ort_ms']:.3f} | {r['torch_ms']:.3f} | "
              f"{r['speedup']:.2f} | {r['ort_gflops']:.2f} | {100 * r['ort_gflops'] / peak:.1f}% |")
    for batch in (1, 32):
        mine = [r for r in rows if r["batch"] == batch]
        geo = 1.0
        for r in mine:
            geo *= r["speedup"]
        print(f"\nbatch {batch}: eager / ORT geometric mean x{geo ** (1 / len(mine)):.2f} over {len(mine)} subnets")
    print(f"\nlatency table: {len(table.entries)} segments, built in {build_s:.0f} s; correction a={table.correction['a']:.3f} "
          f"b={table.correction['b']:.4f} ms/segment c={table.correction['c']:.4f} ms (fit MAPE "
          f"{table.correction['fit_mape']:.1%} on {int(table.correction['n'])} subnets)")
    print(f"validation on {report['samples']} fresh subnets ({validate_s:.0f} s): MAPE {report['mape']:.1%} "
          f"(max {report['max_ape']:.1%}), Kendall tau {report['kendall_tau']:.3f}, Spearman {report['spearman']:.3f}; "
          f"uncorrected segment sum MAPE {report['sum_mape']:.1%}")
    payload = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "matmul_gflops": peak, "rows": rows, "table": {"segments": len(table.entries), "build_s": build_s,
                                                               "correction": table.correction},
               "validation": report}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    plot(report, args.out / "table_pred_vs_measured.png")
    print(f"\nwrote {args.out}/results.json, latency_table.json, table_pred_vs_measured.png")
    print(f"reproduce: python benchmarks/latency.py --out DIR --space {args.space} --subnets {args.subnets} "
          f"--samples {args.samples} --threads {args.threads}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r["measured_ms"] for r in report["rows"]]
    predicted = [r["predicted_ms"] for r in report["rows"]]
    summed = [r["sum_ms"] for r in report["rows"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(measured, predicted, label=f"table + correction (MAPE {report['mape']:.1%})", s=14)
    ax.scatter(measured, summed, label=f"plain sum of segments (MAPE {report['sum_mape']:.1%})", s=14, marker="x")
    top = max(measured + predicted + summed) * 1.05
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8)
    ax.set_xlabel("measured end to end (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(f"latency table on ort-cpu: Kendall tau {report['kendall_tau']:.3f}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
