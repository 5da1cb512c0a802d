"""Benchmark: all-INT8 vs selective INT8 against FP32 on this CPU (onnxruntime, 1 thread), batch 1 and 32.

Models: (a) the subnets exported by the default `nasforge run` on digits (mbv3-small, 8-16 px; the run is cached
in --run and resumed), (b) a wider exported model, ResNet-20 (16/32/64 channels) trained on 32-px shapes
(cached in --workdir). Each is quantized two ways with the settings nasforge picks (static, MinMax, per-channel,
reduce_range from the CPU): every operator group in INT8 (``policy="all"``, what nasforge did before issue 22)
and ``policy="selective"`` (groups INT8 does not speed up stay in float; FP32 is kept when no variant is faster
at both batch sizes). For each: what was chosen, validation and test accuracy of FP32 and INT8, relative L2
error against FP32 and against simulated quantization, the saturation flag, and p50 latency of FP32 and INT8
measured alternately in this process.

    python benchmarks/quantize.py [--run DIR] [--workdir DIR] [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasforge.config import RunConfig
from nasforge.data import load_data
from nasforge.devices import Device
from nasforge.export import environment_fingerprint, export_onnx
from nasforge.pipeline import run_pipeline
from nasforge.progress import ProgressReporter
from nasforge.prune_job import trained_family
from nasforge.quantize import QuantConfig, fit_inputs, quantize, run_onnx

VARIANTS = {
    "all INT8": QuantConfig(method="static", policy="all"),
    "selective": QuantConfig(method="static", policy="selective"),
}


def _subnets(run: Path, quick: bool) -> tuple[list[tuple[str, Path]], Any]:
    cfg = RunConfig().with_overrides(export__dynamic_batch=True)
    if quick:
        cfg = cfg.with_overrides(train__epochs=1, search__trials=4, export__max_subnets=2)
    done = (run / "summary.json").is_file() or (run / "report.md").is_file()
    if not done:
        run_pipeline(cfg, run, resume=(run / "config.yaml").is_file(), reporter=ProgressReporter())
    data = load_data(cfg.data.spec, image_size=cfg.data.image_size, seed=cfg.seed,
                     val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction)
    folders = sorted((run / "subnets").iterdir(), key=lambda p: int(p.name))
    return [(f"mbv3-small subnet {p.name}", p / "model.onnx") for p in folders], data


def _resnet(workdir: Path, epochs: int, quick: bool) -> tuple[list[tuple[str, Path]], Any]:
    data = load_data("shapes?n=600&classes=4" if quick else "shapes?n=5000&classes=8&difficulty=0.9",
                     image_size=32, seed=0)
    net = trained_family("resnet20?widths=[16,32,64]", data, 1, 1 if quick else epochs, workdir, 0)[0]
    path = workdir / f"resnet20-w16-{data.name}-e{epochs}.onnx"
    export_onnx(net, data.val.x[:1], path, exporter="torchscript", dynamic_batch=True,
                check_inputs=[data.val.x[:8]], metadata={"dataset": data.spec})
    return [("ResNet-20 16/32/64 (shapes, 32 px)", path)], data


def _test_accuracy(path: Path, data: Any) -> float:
    from nasforge.onnx_io import load_onnx, single_input_spec

    dims = single_input_spec(load_onnx(path, check=False), path).dims
    out = run_onnx(path, fit_inputs(data.test.x, dims))
    return float((out.argmax(1) == data.test.y.numpy()).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("benchmarks/results/quantize-run"))
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/results/quantize-networks"))
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of the ResNet-20")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per latency round")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quantize.json"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from --out")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text())["rows"], args.out.with_suffix(".png"))
        return
    torch.set_num_threads(2)
    t0 = time.time()
    models = [_subnets(args.run, args.quick), _resnet(args.workdir, args.epochs, args.quick)]
    print(f"models ready ({time.time() - t0:.0f} s)", flush=True)
    device = Device(name="bench", backend="ort-cpu", threads=1, runs=args.runs, warmup=20)
    rows: list[dict[str, Any]] = []
    scratch = args.workdir / "int8"
    for group, data in models:
        for name, fp32 in group:
            fp32_test = _test_accuracy(fp32, data)
            for variant, config in VARIANTS.items():
                rows.append(_row(name, variant, config, fp32, fp32_test, data, device,
                                 scratch / f"{fp32.parent.name}-{fp32.stem}-{len(rows)}.onnx"))
                r = rows[-1]
                print(f"{name} | {variant} ({r['choice']}{': ' + r['float'] if r['float'] else ''}): val "
                      f"{r['fp32_accuracy']:.4f} -> {r['int8_accuracy']:.4f}, rel {r['rel_l2']:.4f} (sim "
                      f"{r['simulated_rel_l2']:.4f}), speed-up b1 {r['speedup_b1']:.2f}x b32 {r['speedup_b32']:.2f}x, "
                      f"{r['seconds']:.0f} s ({time.time() - t0:.0f} s)", flush=True)
    fp = environment_fingerprint(1)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "seconds": time.time() - t0,
              "cpu": fp["cpu"], "versions": fp["versions"], "machine": platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    _print_table(rows)
    plot(rows, args.out.with_suffix(".png"))
    print(f"\nCPU: {fp['cpu']}; {time.time() - t0:.0f} s")


def _row(name: str, variant: str, config: QuantConfig, fp32: Path, fp32_test: float, data: Any, device: Device,
         int8: Path) -> dict[str, Any]:
    t = time.time()
    rep = quantize(fp32, int8, data=data, config=config, device=device, batches=(1, 32))
    return {"model": name, "variant": variant, "choice": rep.choice, "seconds": time.time() - t,
            "float": ", ".join((rep.selection or {}).get("float_groups", {})),
            "trials": len((rep.selection or {}).get("trials", [])), "selection": rep.selection,
            "reduce_range": rep.range_decision["reduce_range"],
            **{k: rep.check[k] for k in ("fp32_accuracy", "int8_accuracy", "accuracy_drop", "rel_l2",
                                         "simulated_rel_l2", "saturation")},
            "fp32_test": fp32_test, "int8_test": _test_accuracy(int8, data),
            **{f"{k}_b{b}": v[k] for b, v in rep.latency.items() for k in ("fp32_ms", "int8_ms", "speedup")}}


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| model | setting | shipped | val FP32 | val INT8 | test FP32 | test INT8 | rel L2 (sim) | saturation | "
          "b1 FP32 ms | b1 INT8 ms | b1 speed-up | b32 FP32 ms | b32 INT8 ms | b32 speed-up | s |")
    print("|" + "---|" * 16)
    for r in rows:
        shipped = {"fp32": "FP32 kept", "int8": "all INT8"}.get(r["choice"], f"float: {r['float']}")
        print(f"| {r['model']} | {r['variant']} | {shipped} | {r['fp32_accuracy']:.4f} | {r['int8_accuracy']:.4f} | "
              f"{r['fp32_test']:.4f} | {r['int8_test']:.4f} | {r['rel_l2']:.4f} ({r['simulated_rel_l2']:.4f}) | "
              f"{'yes' if r['saturation'] else 'no'} | {r['fp32_ms_b1']:.3f} | {r['int8_ms_b1']:.3f} | "
              f"{r['speedup_b1']:.2f}x | {r['fp32_ms_b32']:.3f} | {r['int8_ms_b32']:.3f} | {r['speedup_b32']:.2f}x | "
              f"{r['seconds']:.0f} |")
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        worst = min(min(r["speedup_b1"], r["speedup_b32"]) for r in mine)
        geo = {b: float(np.exp(np.mean([np.log(r[f"speedup_b{b}"]) for r in mine]))) for b in (1, 32)}
        print(f"\n{variant}: lowest speed-up at any batch {worst:.2f}x; geometric mean b1 {geo[1]:.2f}x, b32 "
              f"{geo[32]:.2f}x; worst accuracy drop {max(r['accuracy_drop'] for r in mine):.4f}")

def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Speed-up over FP32 per model and batch size, all INT8 next to selective, with the 1.0x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, batch in zip(axes, (1, 32), strict=True):
        for k, variant in enumerate(VARIANTS):
            values = [next(r[f"speedup_b{batch}"] for r in rows if r["model"] == m and r["variant"] == variant)
                      for m in models]
            ax.bar(np.arange(len(models)) + (k - 0.5) * 0.38, values, width=0.38, label=variant)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(models)), [m.split(" (")[0].replace("mbv3-small ", "") for m in models],
                      fontsize=8)
        ax.set_title(f"batch {batch}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("speed-up over FP32 (onnxruntime CPU)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
