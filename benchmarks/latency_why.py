"""Why a latency table stops ranking subnets: repeatability, per-call overhead, and what a segment sum misses.

    python benchmarks/latency_why.py --out DIR [--space mbv3-small] [--resolution R] [--subnets 8] [--rounds 8]
        [--runs 100] [--batch 1] [--threads 1]

1. **Repeatability.** ``--subnets`` subnets (corners plus random ones) are exported whole and timed ``--rounds``
   times each, interleaved (subnet 0, 1, ..., then again), so that drift of the machine hits every subnet alike.
   Reported per subnet: the median of the round medians, the spread of the round medians (max / min - 1) and the
   within-round CV. The pairs of subnets whose order flips between rounds say how well *any* predictor could rank.
2. **Per-call overhead.** An ONNX model that only copies its input (Identity) of the subnets' input shape, timed the
   same way: the floor every end-to-end measurement and every segment measurement pays once.
3. **Segment sum vs whole.** For each subnet, its segments (stem, blocks, head) timed one by one in the same
   rounds: ``sum of segments``, ``sum - (segments - 1) x overhead`` (the overhead paid once, as the whole model
   pays it) and the whole model, with ONNX node counts of both.

Writes ``why.json`` into ``--out`` and prints the tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from nasforge.export import export_onnx, get_profiler
from nasforge.supernets import create_supernet


class _Copy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _export(module: nn.Module, shape: tuple[int, ...], path: Path, batch: int) -> int:
    """Export ``module`` at ``batch`` and return the ONNX file's node count."""
    export_onnx(module.eval(), torch.randn(batch, *shape), path, exporter="torchscript", atol=1e-3)
    return len(onnx.load(str(path)).graph.node)


def _archs(net: Any, count: int, seed: int, resolution: int | None) -> list[Any]:
    rng = random.Random(seed)
    space = net.space
    archs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(count - 2)]
    if resolution is not None and "r" in space.names:
        archs = [space.canonical({**a.to_dict(), "r": resolution}) for a in archs]
    return archs


def measure_rounds(paths: dict[str, Path], rounds: int, options: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """Every file timed ``rounds`` times, interleaved: name -> one ``{"median", "cv"}`` per round."""
    profiler = get_profiler("ort-cpu")
    out: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    for r in range(rounds):
        for name, path in paths.items():
            res = profiler.measure(path, max_remeasure=0, **options)
            out[name].append({"median": res.median_ms, "cv": res.cv})
        print(f"  round {r + 1}/{rounds} done", flush=True)
    return out


def _flips(medians: list[list[float]]) -> tuple[int, int]:
    """``(pairs whose order differs between some two rounds, pairs)`` over the subnets' round medians."""
    n, flips, pairs = len(medians), 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            pairs += 1
            signs = {(a > b) for a, b in zip(medians[i], medians[j], strict=True)}
            flips += len(signs) > 1
    return flips, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--space", default="mbv3-small")
    ap.add_argument("--resolution", type=int, help="fix every subnet's resolution (default: as sampled)")
    ap.add_argument("--subnets", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    net = create_supernet(args.space).eval()
    archs = _archs(net, args.subnets, args.seed, args.resolution)
    options = {"runs": args.runs, "warmup": 10, "threads": args.threads, "batch": args.batch}
    nodes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        shape = net.input_shape(archs[0])
        paths["copy"] = Path(tmp) / "copy.onnx"
        nodes["copy"] = _export(_Copy(), shape, paths["copy"], args.batch)
        segments: dict[int, list[str]] = {}
        for i, arch in enumerate(archs):
            paths[f"s{i}"] = Path(tmp) / f"s{i}.onnx"
            nodes[f"s{i}"] = _export(net.extract(arch), net.input_shape(arch), paths[f"s{i}"], args.batch)
            segments[i] = []
            for j, ((_, seg_shape), module) in enumerate(zip(net.latency_segments(arch), net.segment_modules(arch),
                                                              strict=True)):
                name = f"s{i}.{j}"
                paths[name] = Path(tmp) / f"{name}.onnx"
                nodes[name] = _export(module, tuple(seg_shape), paths[name], args.batch)
                segments[i].append(name)
        print(f"{len(paths)} files exported; timing {args.rounds} interleaved rounds", flush=True)
        rounds = measure_rounds(paths, args.rounds, options)
    med = {name: statistics.median(r["median"] for r in rs) for name, rs in rounds.items()}
    overhead = med["copy"]
    rows = []
    for i, arch in enumerate(archs):
        name = f"s{i}"
        meds = [r["median"] for r in rounds[name]]
        seg_sum = sum(med[s] for s in segments[i])
        rows.append({"subnet": i, "macs": net.macs(arch), "resolution": net.input_shape(arch)[-1],
                     "whole_ms": med[name], "round_spread": max(meds) / min(meds) - 1,
                     "within_cv": statistics.median(r["cv"] for r in rounds[name]), "segments": len(segments[i]),
                     "segment_sum_ms": seg_sum,
                     "sum_minus_overheads_ms": seg_sum - (len(segments[i]) - 1) * overhead,
                     "whole_nodes": nodes[name], "segment_nodes": sum(nodes[s] for s in segments[i])})
    flips, pairs = _flips([[r["median"] for r in rounds[f"s{i}"]] for i in range(len(archs))])
    _print(args, rows, overhead, rounds["copy"], flips, pairs)
    payload = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "copy_ms": overhead, "rows": rows, "flips": flips, "pairs": pairs, "rounds": rounds}
    (args.out / "why.json").write_text(json.dumps(payload, indent=2))


def _print(args: argparse.Namespace, rows: list[dict[str, Any]], overhead: float, copy_rounds: list[dict[str, float]],
           flips: int, pairs: int) -> None:
    spread = max(r["median"] for r in copy_rounds) / min(r["median"] for r in copy_rounds) - 1
    print(f"\n{args.space}{f' at {args.resolution} px' if args.resolution else ''}, batch {args.batch}, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds of {args.runs} runs")
    print(f"per-call floor (Identity copy of the input): {overhead:.4f} ms (round spread {spread:.1%})\n")
    print("| subnet | MMACs | r | whole ms | round spread | CV in round | segments | sum of segments ms | "
          "sum - overheads ms | sum / whole | nodes whole / segments |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['subnet']} | {r['macs'] / 1e6:.2f} | {r['resolution']} | {r['whole_ms']:.4f} | "
              f"{r['round_spread']:.1%} | {r['within_cv']:.3f} | {r['segments']} | {r['segment_sum_ms']:.4f} | "
              f"{r['sum_minus_overheads_ms']:.4f} | {r['segment_sum_ms'] / r['whole_ms']:.2f} | "
              f"{r['whole_nodes']} / {r['segment_nodes']} |")
    print(f"\nsubnet pairs whose order flips between rounds: {flips} of {pairs}")
    print(f"reproduce: python benchmarks/latency_why.py --out DIR --space {args.space}"
          f"{f' --resolution {args.resolution}' if args.resolution else ''} --subnets {args.subnets} "
          f"--rounds {args.rounds} --runs {args.runs} --batch {args.batch} --threads {args.threads}")


if __name__ == "__main__":
    main()
