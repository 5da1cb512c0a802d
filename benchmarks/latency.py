"""Export and latency on this CPU: ORT vs eager PyTorch, achieved GFLOP/s, and the latency-table predictor's error.

    python benchmarks/latency.py --out /tmp/latency-bench [--space mbv3-small] [--subnets 6] [--samples 30]
        [--threads 1] [--batch 1] [--validate-at 128,224] [--skip-backends] [--skip-table] [--remote]

1. **ORT vs eager PyTorch:** ``--subnets`` subnets of ``--space`` (corners plus random ones, untrained weights: latency
   does not depend on them) are exported to ONNX and timed with the ``ort-cpu`` and ``torch-cpu`` profilers at
   batch 1 and 32, alternating the two backends subnet by subnet (same process, same threads).
   Each subnet is exported twice, as before issue 22 (``rewrite=False``: squeeze-excite pooling as ``ReduceMean``)
   and as now (``GlobalAveragePool``, which onnxruntime keeps in its blocked layout), timed alternately.
2. **Achieved GFLOP/s:** each subnet's 2 x MACs x batch / median time, against this machine's fp32 matrix-multiply
   rate measured in the same process (``torch.mm`` of 1024 x 1024 matrices with the same thread count), before and
   after; for the largest subnet at batch 32, the kernel time per operator type (onnxruntime's profiler), the
   p50 at each graph optimisation level, and a dynamic vs fixed batch (and onnxruntime's free-dimension override).
3. **Latency table:** ``nasforge.export.build_latency_table`` on ``ort-cpu`` at ``--batch`` (``--calibration``
   subnets fit the correction, ``--holdout`` others record its held-out error), then ``validate_latency_table`` on
   ``--samples`` fresh random subnets: MAPE, share within 10%, Kendall tau, and the MAPE of the uncorrected sum of
   segments; with ``--validate-at R1,R2`` once more per resolution (``--samples`` subnets all at that resolution:
   ranking subnets of one resolution is the harder test). The build cost (segments and subnets measured, seconds)
   is reported. ``--remote`` measures through a profiling agent started as a second process on 127.0.0.1 (a
   stand-in for a board); ``--skip-backends`` skips parts 1 and 2.

Writes ``results.json``, ``latency_table.json`` and ``table_pred_vs_measured.png`` into ``--out`` and prints the tables
for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--space", default="mbv3-small")
    ap.add_argument("--subnets", type=int, default=6)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="batch of the table and its validation")
    ap.add_argument("--samples", type=int, default=30, help="random subnets to validate the table on")
    ap.add_argument("--calibration", type=int, default=20)
    ap.add_argument("--holdout", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each validation subnet")
    ap.add_argument("--validate-at", default="", help="also validate at each of these resolutions, e.g. 128,224")
    ap.add_argument("--skip-backends", action="store_true", help="skip ORT vs eager and GFLOP/s")
    ap.add_argument("--skip-table", action="store_true", help="parts 1 and 2 only (no latency table)")
    ap.add_argument("--remote", action="store_true", help="measure the table through an agent on 127.0.0.1")
    ap.add_argument("--resolutions", default="", help="build the supernet with only these resolutions, e.g. 160")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main() -> None:
    args = _args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    options = {"resolutions": [int(r) for r in args.resolutions.split(",")]} if args.resolutions else {}
    net = create_supernet(args.space, **options).eval()
    payload: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if not args.skip_backends:
        payload.update(compare_backends(args, net))
    if not args.skip_table:
        with _profiler(args) as (profiler, where):
            payload.update(table_error(args, net, profiler, where))
    (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    if not args.skip_table:
        plot(payload["validation"], args.out / "table_pred_vs_measured.png")
    print(f"\nwrote {args.out}/results.json, latency_table.json, table_pred_vs_measured.png")
    print(f"reproduce: python benchmarks/latency.py --out DIR --space {args.space} --subnets {args.subnets} "
          f"--samples {args.samples} --threads {args.threads} --batch {args.batch}"
          + (f" --validate-at {args.validate_at}" if args.validate_at else "")
          + (" --skip-backends" if args.skip_backends else "") + (" --remote" if args.remote else "")
          + (" --skip-table" if args.skip_table else "")
          + (f" --resolutions {args.resolutions}" if args.resolutions else ""))


def compare_backends(args: argparse.Namespace, net: Any) -> dict[str, Any]:
    """Parts 1 and 2: ORT vs eager PyTorch per subnet and batch, and the achieved share of the matmul rate, for
    the export as it was before issue 22 (``rewrite=False``: squeeze-excite pooling as ``ReduceMean``) and as it
    is now (``GlobalAveragePool``), measured alternately."""
    rng = random.Random(args.seed)
    archs = [net.space.smallest(), net.space.largest()] + [net.space.sample(rng) for _ in range(args.subnets - 2)]
    peak = matmul_gflops(args.threads)
    print(f"fp32 matmul rate (torch.mm 1024x1024, {args.threads} thread(s)): {peak:.1f} GFLOP/s", flush=True)
    ort, eager = get_profiler("ort-cpu"), get_profiler("torch-cpu")
    rows: list[dict[str, Any]] = []
    breakdown: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, arch in enumerate(archs):
            sub = net.extract(arch).eval()
            shape = net.input_shape(arch)
            paths = {}
            for label, rewrite in (("before", False), ("after", True)):
                paths[label] = Path(tmp) / f"s{i}-{label}.onnx"
                export_onnx(sub, torch.randn(1, *shape), paths[label], dynamic_batch=True, exporter="torchscript",
                            atol=1e-3, check_inputs=[torch.randn(32, *shape)], rewrite=rewrite)
            macs = net.macs(arch)
            for batch in (1, 32):
                runs = args.runs if batch == 1 else max(20, args.runs // 4)
                ms = {k: float("inf") for k in ("before", "after")}
                for _ in range(2):  # alternately, the better round kept
                    for label, path in paths.items():
                        o = ort.measure(path, batch=batch, runs=runs, warmup=20, threads=args.threads)
                        ms[label] = min(ms[label], o.median_ms)
                e = eager.measure(sub, input_shape=shape, batch=batch, runs=runs, warmup=20, threads=args.threads)
                flops = 2.0 * macs * batch
                rows.append({"subnet": i, "macs": macs, "resolution": shape[-1], "batch": batch,
                             "ort_before_ms": ms["before"], "ort_ms": ms["after"], "torch_ms": e.median_ms,
                             "speedup": e.median_ms / ms["after"], "rewrite_speedup": ms["before"] / ms["after"],
                             "ort_before_gflops": flops / ms["before"] / 1e6, "ort_gflops": flops / ms["after"] / 1e6,
                             "torch_gflops": flops / e.median_ms / 1e6})
            if i == 1:  # the largest subnet: where the time goes at batch 32, optimisation levels, batch settings
                breakdown = op_breakdown(paths["after"], (32, *shape), args.threads)
                fixed = Path(tmp) / "s1-fixed32.onnx"
                export_onnx(sub, torch.randn(32, *shape), fixed, exporter="torchscript", atol=1e-3)
                breakdown["batch_settings_ms"] = batch_settings(paths["after"], fixed, (32, *shape), args.threads)
    _print_backends(args, rows, peak, breakdown)
    return {"matmul_gflops": peak, "rows": rows, "largest_b32": breakdown}


def op_breakdown(path: Path, shape: tuple[int, ...], threads: int, runs: int = 30) -> dict[str, Any]:
    """Share of kernel time per operator type (onnxruntime's profiler, optimisation level ALL) and p50 at each
    graph optimisation level, for one ONNX file and input shape."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out: dict[str, Any] = {"levels_ms": {}}
    for level in ("all", "extended", "basic"):
        s = _session(path, level, threads, profile=level == "all")
        out["levels_ms"][level] = _p50(s, x, runs)
        if level == "all":
            per_op, macs = _kernel_times(json.loads(Path(s.end_profiling()).read_text()))
            total = sum(per_op.values())
            out["op_share"] = {k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}
            out["op_gflops"] = {k: 2 * macs[k] / per_op[k] / 1e3 for k in macs if per_op.get(k)}  # us -> GFLOP/s
    return out


def batch_settings(dynamic: Path, fixed: Path, shape: tuple[int, ...], threads: int, runs: int = 30,
                   rounds: int = 8) -> dict[str, float]:
    """p50 (best of ``rounds`` interleaved rounds) of a dynamic-batch export, the same model exported with the
    batch fixed at ``shape[0]``, and the dynamic file with onnxruntime's free-dimension override set to it."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sessions = {"dynamic batch": _session(dynamic, "all", threads), "fixed batch": _session(fixed, "all", threads),
                "dynamic + free-dimension override": _session(dynamic, "all", threads, batch=shape[0])}
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(rounds):
        for name, s in sessions.items():
            best[name] = min(best[name], _p50(s, x, runs))
    return best


def _session(path: Path, level: str, threads: int, *, profile: bool = False, batch: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    opts.intra_op_num_threads, opts.log_severity_level = threads, 3
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(path.with_suffix(""))
    if batch is not None:
        opts.add_free_dimension_override_by_name("batch", batch)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _p50(session: Any, x: np.ndarray, runs: int) -> float:
    feed = {session.get_inputs()[0].name: x}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _kernel_times(events: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Kernel microseconds per operator type, convolutions split into depthwise, squeeze-excite (1x1 input),
    pointwise and the rest, and the MACs of each convolution kind (from the profiled shapes)."""
    times: dict[str, float] = {}
    macs: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op, kind = e["args"]["op_name"], e["args"]["op_name"]
        if op == "Conv":
            shapes = [next(iter(d.values())) for d in e["args"].get("input_type_shape", [])]
            out = [next(iter(d.values())) for d in e["args"].get("output_type_shape", [])]
            x, w = shapes[0], shapes[1]
            kind = ("Conv depthwise" if w[1] == 1 and w[0] > 1 else "Conv squeeze-excite" if x[-1] * x[-2] == 1
                    else "Conv pointwise" if w[-1] * w[-2] == 1 else "Conv kxk")
            y = out[0]
            macs[kind] = macs.get(kind, 0.0) + float(np.prod(y)) * w[1] * w[2] * w[3]
        times[kind] = times.get(kind, 0.0) + e["dur"]
    return times, macs


def _print_backends(args: argparse.Namespace, rows: list[dict[str, Any]], peak: float,
                    breakdown: dict[str, Any]) -> None:
    print(f"\n{args.space}, {args.threads} thread(s); ORT graph optimisation ALL vs eager PyTorch (inference mode)\n")
    print("| subnet | MMACs | batch | ORT ms before | ORT ms | eager ms | eager / ORT | ORT GFLOP/s before | "
          "ORT GFLOP/s | % of matmul rate before | % of matmul rate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['subnet']} | {r['macs'] / 1e6:.2f} | {r['batch']} | {r['ort_before_ms']:.3f} | {r['ort_ms']:.3f} | "
              f"{r['torch_ms']:.3f} | {r['speedup']:.2f} | {r['ort_before_gflops']:.2f} | {r['ort_gflops']:.2f} | "
              f"{100 * r['ort_before_gflops'] / peak:.1f}% | {100 * r['ort_gflops'] / peak:.1f}% |")
    for batch in (1, 32):
        mine = [r for r in rows if r["batch"] == batch]
        geo = float(np.exp(np.mean(np.log([r["speedup"] for r in mine]))))
        rw = float(np.exp(np.mean(np.log([r["rewrite_speedup"] for r in mine]))))
        share = [100 * r["ort_gflops"] / peak for r in mine]
        print(f"\nbatch {batch}: eager / ORT geometric mean x{geo:.2f}; rewrite (after / before) x{rw:.2f}; share "
              f"of the matmul rate {min(share):.0f}-{max(share):.0f}% over {len(mine)} subnets")
    if breakdown:
        ops = ", ".join(f"{k} {100 * v:.0f}%" + (f" ({breakdown['op_gflops'][k]:.0f} GFLOP/s)"
                                                 if k in breakdown["op_gflops"] else "")
                        for k, v in list(breakdown["op_share"].items())[:9])
        lv = ", ".join(f"{k} {v:.2f} ms" for k, v in breakdown["levels_ms"].items())
        bs = ", ".join(f"{k} {v:.2f} ms" for k, v in breakdown["batch_settings_ms"].items())
        print(f"\nlargest subnet, batch 32: kernel time by operator: {ops}; p50 by optimisation level: {lv}; "
              f"batch settings (best of 8 interleaved rounds): {bs}")


@contextlib.contextmanager
def _profiler(args: argparse.Namespace) -> Iterator[tuple[Any, str]]:
    """``ort-cpu`` here, or (``--remote``) a profiling agent on 127.0.0.1 in a second process."""
    if not args.remote:
        yield get_profiler("ort-cpu"), "ort-cpu"
        return
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "agent.token"
        subprocess.run([sys.executable, "-m", "nasforge", "agent", "token", "--out", str(token)], check=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        agent = subprocess.Popen([sys.executable, "-m", "nasforge", "agent", "serve", "--port", str(port),
                                  "--token-file", str(token)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    time.sleep(0.1)
            yield get_profiler("remote", url=url, token_file=token), f"agent at {url} (ort-cpu)"
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def table_error(args: argparse.Namespace, net: Any, profiler: Any, where: str) -> dict[str, Any]:
    """Part 3: build the table (cost counted), then its error on fresh subnets, overall and per resolution."""
    t0 = time.perf_counter()
    table = build_latency_table(net, profiler, device={"name": where}, threads=args.threads, batch=args.batch,
                                calibration=args.calibration, holdout=args.holdout, seed=args.seed)  # repeats 2
    build_s = time.perf_counter() - t0
    table.save(args.out / "latency_table.json")
    measured = len(table.entries) + args.calibration + args.holdout
    corr, held = table.correction, table.holdout
    print(f"\nlatency table of {args.space} on {where}, batch {args.batch}: {len(table.entries)} segments + "
          f"{args.calibration} + {args.holdout} subnets measured in {build_s:.0f} s; correction a={corr['a']:.3f} "
          f"b={corr['b']:.4f} ms/segment c={corr['c']:.4f} ms (fit MAPE {corr['fit_mape']:.1%}); held-out: MAPE "
          f"{held['mape']:.1%}, {held['within_10']:.0%} within 10%, tau {held['kendall_tau']:.3f}")
    print("\n| validated on | subnets | MAPE | max error | within 10% | Kendall tau | Spearman | plain sum MAPE | "
          "repeat MAPE / tau | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    reports: dict[str, Any] = {}
    for label, resolution in [("all resolutions", None)] + [
            (f"{r} px", int(r)) for r in args.validate_at.split(",") if r.strip()]:
        t0 = time.perf_counter()
        rep = validate_latency_table(table, net, profiler, samples=args.samples, seed=args.seed + 777,
                                     runs=args.runs, resolution=resolution, repeats=args.repeats)
        rep["seconds"] = time.perf_counter() - t0
        reports[label] = rep
        again = rep["repeatability"]
        floor = f"{again['mape']:.1%} / {again['kendall_tau']:.3f}" if again else "-"
        print(f"| {label} | {rep['samples']} | {rep['mape']:.1%} | {rep['max_ape']:.1%} | {rep['within_10']:.0%} | "
              f"{rep['kendall_tau']:.3f} | {rep['spearman']:.3f} | {rep['sum_mape']:.1%} | {floor} | "
              f"{rep['seconds']:.0f} |", flush=True)
    return {"table": {"segments": len(table.entries), "measured": measured, "build_s": build_s,
                      "correction": corr, "holdout": held, "fingerprint_cpu": table.fingerprint.get("cpu")},
            "validation": reports["all resolutions"], "validations": reports}


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
