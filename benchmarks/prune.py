"""Plain group-L2 pruning vs graph-metanetwork (GMN) pruning at equal MACs and equal finetune budget.

Task: procedurally generated 8-class shapes (24x24, difficulty 0.9), where a ResNet-20 (widths 8/16/32) reaches
~90-92% after 10 epochs. A family of such networks is trained; ``--networks`` of them meta-train the metanetwork,
one more chooses its checkpoint (validation network, validation split), and ``--seeds`` further networks are
pruned both ways to 2x, 3x and 5x fewer MACs:

Channel counts are kept multiples of 4 (``--round-to``): unaligned counts made a 3x-MACs-pruned net *slower* than
the unpruned one in onnxruntime on this CPU (0.68x), aligned ones 1.47x faster.

- l2:  group-L2 pruning -> finetune E epochs
- gmn: metanetwork -> finetune 1 epoch -> group-L2 pruning -> finetune E-1 epochs

Test accuracy is reported per method with the paired difference (mean and 95% t interval over the test
networks). For every pruned model the ORT CPU speed-up (1 thread, batch 1 and 32) is divided by its MACs
reduction.

    python benchmarks/prune.py                       # full run (~10 min on 2 cores)
    python benchmarks/prune.py --quick               # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nasforge.data import load_data
from nasforge.export import export_onnx, get_profiler
from nasforge.prune import evaluate_accuracy, prune, train_classifier
from nasforge.prune._gmn import MetaTrainConfig, apply_metanet, meta_train, save_metanet
from nasforge.prune_job import trained_family


def _latency(model: torch.nn.Module, shape: tuple[int, ...], batch: int, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model.eval(), torch.randn(1, *shape), path, dynamic_batch=True, exporter="torchscript")
        return get_profiler("ort-cpu").measure(str(path), batch=batch, runs=runs, threads=1).median_ms


def _ci95(diffs: list[float]) -> tuple[float, float]:
    from scipy import stats

    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="shapes?n=5000&classes=8&difficulty=0.9")
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--model", default="resnet20?widths=[8,16,32]")
    ap.add_argument("--networks", type=int, default=3, help="networks the metanetwork is trained on")
    ap.add_argument("--seeds", type=int, default=3, help="test networks pruned both ways")
    ap.add_argument("--factors", default="2,3,5", help="MACs reduction factors")
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--meta-steps", type=int, default=160)
    ap.add_argument("--sparsity", type=float, default=2.0, help="weight of the group-sparsity meta-loss")
    ap.add_argument("--meta-lr", type=float, default=2e-3)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--round-to", type=int, default=4,
                    help="keep channel counts multiples of this (ORT CPU kernels slow down on odd counts)")
    ap.add_argument("--runs", type=int, default=100, help="timed ORT runs per latency")
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/results/prune-networks"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/prune.json"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.data, args.size, args.networks, args.seeds, args.factors = "shapes?n=600&classes=4", 16, 1, 2, "2"
        args.train_epochs, args.meta_steps, args.finetune_epochs, args.runs = 1, 4, 2, 20
    torch.set_num_threads(2)
    t0 = time.time()
    data = load_data(args.data, image_size=args.size, seed=0)
    factors = [float(f) for f in args.factors.split(",")]
    count = args.networks + 1 + args.seeds
    nets = trained_family(args.model, data, count, args.train_epochs, args.workdir, 0)
    train_nets, val_net, test_nets = nets[: args.networks], nets[args.networks], nets[args.networks + 1 :]
    base_acc = [evaluate_accuracy(n, data.test) for n in test_nets]
    print(f"trained {count} networks; test accuracy of the test networks {base_acc} ({time.time() - t0:.0f} s)")
    cfg = MetaTrainConfig(steps=args.meta_steps, validate_every=max(2, args.meta_steps // 8), sparsity=args.sparsity,
                          lr=args.meta_lr,
                          target=f"macs={factors[len(factors) // 2]:g}x")
    print(f"meta-training {args.meta_steps} steps ...", flush=True)
    meta = meta_train(train_nets, val_net, data.train, data.val, cfg,
                      on_step=lambda s, r: print(f"  meta {s}: {r}") if "val_acc" in r else None)
    save_metanet(args.out.with_suffix(".metanet.pt"), meta.metanet, family=args.model, data=data.spec,
                 best_step=meta.best_step)
    print(f"metanetwork: best step {meta.best_step}, validation-network accuracy after pruning "
          f"{meta.best_val_acc:.4f} vs plain {meta.baseline_val_acc:.4f} ({time.time() - t0:.0f} s)")
    shape = tuple(data.val.x.shape[1:])
    example = data.val.x[:2]
    rows: list[dict[str, Any]] = []
    base_lat = {(i, b): _latency(n, shape, b, args.runs) for i, n in enumerate(test_nets) for b in (1, 32)}
    for i, net in enumerate(test_nets):
        for f in factors:
            target = f"macs={f:g}x"
            for method in ("l2", "gmn"):
                work = copy.deepcopy(net)
                budget = args.finetune_epochs
                if method == "gmn":
                    apply_metanet(work, meta.metanet, example)
                    train_classifier(work, data.train, epochs=1, lr=0.01, seed=100 + i)
                    budget -= 1
                pruned, rep = prune(work, example, target=target, criterion="l2", round_to=args.round_to)
                train_classifier(pruned, data.train, epochs=budget, lr=0.01, seed=200 + i)
                row = {"network": i, "factor": f, "method": method, "test_acc": evaluate_accuracy(pruned, data.test),
                       "base_test_acc": base_acc[i], "macs_reduction": rep.macs_before / rep.macs_after,
                       "aligned": not rep.steps[-1]["round_to_dropped"]}
                for b in (1, 32):
                    speed = base_lat[(i, b)] / _latency(pruned, shape, b, args.runs)
                    row[f"speedup_b{b}"] = speed
                    row[f"speedup_per_macs_b{b}"] = speed / row["macs_reduction"]
                rows.append(row)
                print(f"  net {i} {target} {method}: test {row['test_acc']:.4f} (unpruned {base_acc[i]:.4f}), "
                      f"MACs {row['macs_reduction']:.2f}x, speed-up b1 {row['speedup_b1']:.2f}x "
                      f"b32 {row['speedup_b32']:.2f}x ({time.time() - t0:.0f} s)", flush=True)
    summary = []
    for f in factors:
        pick = {m: [r for r in rows if r["factor"] == f and r["method"] == m] for m in ("l2", "gmn")}
        diffs = [g["test_acc"] - b["test_acc"] for g, b in zip(pick["gmn"], pick["l2"], strict=True)]
        mean, half = _ci95(diffs)
        summary.append({"factor": f, **{f"{m}_acc": sum(r["test_acc"] for r in v) / len(v) for m, v in pick.items()},
                        "diff_mean": mean, "diff_ci95": half,
                        **{f"{m}_speedup_per_macs_b{b}": [round(r[f"speedup_per_macs_b{b}"], 3) for r in v]
                           for m, v in pick.items() for b in (1, 32)}})
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "base_test_acc": base_acc,
              "meta": {"best_step": meta.best_step, "best_val_acc": meta.best_val_acc,
                       "baseline_val_acc": meta.baseline_val_acc, "history": meta.history},
              "rows": rows, "summary": summary, "seconds": time.time() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("\n| MACs cut | group-L2 test acc | GMN test acc | GMN - L2 (95% CI) |")
    print("|---|---|---|---|")
    for s in summary:
        print(f"| {s['factor']:g}x | {s['l2_acc']:.4f} | {s['gmn_acc']:.4f} | {s['diff_mean']:+.4f} "
              f"(+/- {s['diff_ci95']:.4f}) |")
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
