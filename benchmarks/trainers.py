"""Trainer shoot-out: DεpS vs progressive shrinking vs the sandwich rule at equal cost, and SortedNet's nested MLP.

    python benchmarks/trainers.py cnn --seeds 0 1 2 --data digits --out /tmp/trainers-cnn [--workers 2]
    python benchmarks/trainers.py sorted --seeds 0 1 2 --out /tmp/trainers-sorted

``cnn``: an elastic CNN of the MobileNetV3 family (3 units of 16/24/32 channels, depth {2,3,4}, expand {3,4,6},
kernel fixed at 3 as DεpS fixes it at 7; 16x16 input) trained by

- ``deps``: DεpS, T=40 epochs, shrink point 50% (T_w=20), ε ramp S=5, sandwich of 4, lr 0.1;
- ``deps-noramp``: the same, but the subnets start at full rate at epoch 15 (where the ramp would start), so the
  cost is identical and only the ramp differs;
- ``deps-late``: the reference's "no ramp" setting (``ramp_epochs=0``): subnets start at full rate at T_w=20,
  so it is 13% cheaper (100 instead of 115 pass-epochs);
- ``ps``: Once-for-All progressive shrinking, all six phases, ``--scale 0.1`` (its reference lrs);
- ``sandwich``: BigNAS sandwich (4 subnets per step) from the start, 29 epochs, lr 0.1.

Cost = sub-model forward+backward passes over one batch (the teacher's forward-only passes of ps are counted
apart), and wall time. Each trained supernet is evaluated after BN recalibration (500 training images) on the test
split: largest, smallest and 10 random subnets (the same ones for every trainer).

``sorted``: SortedNet on the nested MLP ``sorted-mlp`` (digits, widths 4..128 step 4 x depths 1..5 = 160
sub-models; g_acc 4, AdamW) vs the same full MLP trained normally (``full`` trainer) with the same recipe and
epochs: how many sub-models keep >= 96% of the normal full model's test accuracy, and what the sorted full model
loses. ``--recipe default`` (lr 1e-2, label smoothing 0.1) or ``plain`` (lr 3e-3, none); ``--only`` picks runs
(``sorted``, ``sorted-kd``, ``sorted-wmax``, ``sorted-120ep``, ``normal`` always needed).

Runs are independent processes (``--workers``, 1 thread each). Prints markdown for BENCHMARKS.md and writes
``results.json`` and a plot of accuracy vs MACs per trainer to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

CNN_OPTIONS: dict[str, Any] = {
    "stages": ((16, 2, "relu", False), (24, 2, "relu", True), (32, 2, "hswish", True)),
    "kernel_sizes": (3,), "expand_ratios": (3, 4, 6), "depths": (2, 3, 4), "resolutions": (16,),
    "final_expand_width": 128, "feature_width": 128,
}
COMMON = {"batch_size": 64, "eval_every": 0, "calib_images": 500}
CNN_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "deps": ("deps", {"epochs": 40, "lr": 0.1, "warmup_epochs": 0, "shrink_point": 0.5, "ramp_epochs": 5}),
    "deps-noramp": ("deps", {"epochs": 40, "lr": 0.1, "warmup_epochs": 0, "shrink_point": 0.375, "ramp_epochs": 0}),
    "deps-late": ("deps", {"epochs": 40, "lr": 0.1, "warmup_epochs": 0, "shrink_point": 0.5, "ramp_epochs": 0}),
    "ps": ("ps", {"schedule_scale": 0.1}),
    "sandwich": ("sandwich", {"epochs": 29, "lr": 0.1, "warmup_epochs": 0, "num_random": 2}),
}
#: SortedNet recipes, the same for the sorted model and the normally trained one (``--recipe``)
SORTED_RECIPES: dict[str, dict[str, Any]] = {
    "default": {"epochs": 60, "optimizer": "adamw", "lr": 1e-2, "warmup_epochs": 0, "weight_decay": 0.0,
                "batch_size": 32, "label_smoothing": 0.1},
    "plain": {"epochs": 60, "optimizer": "adamw", "lr": 3e-3, "warmup_epochs": 0, "weight_decay": 0.0,
              "batch_size": 32, "label_smoothing": 0.0},
}
SORTED_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "sorted": ("sorted", {"g_acc": 4}),
    "sorted-kd": ("sorted", {"g_acc": 4, "kd": True}),
    "sorted-wmax": ("sorted", {"g_acc": 4, "sampling": "uniform,w:max"}),
    "sorted-120ep": ("sorted", {"g_acc": 4, "epochs": 120}),
    "normal": ("full", {}),
}


def _evaluate(net: Any, data: Any, archs: list[Any]) -> list[dict[str, Any]]:
    from nasforge.supernets.evaluate import evaluate_arch

    calib = data.train.x[:500]
    return [{"arch": a.to_json(), "macs": net.macs(a), "params": net.params(a),
             "acc": evaluate_arch(net, a, calib, data.test.x, data.test.y, 500)[0]} for a in archs]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (trainer, seed) and evaluate it; runs in a worker process with one thread."""
    torch.set_num_threads(1)
    from nasforge.data import load_data
    from nasforge.supernets import create_supernet
    from nasforge.supernets.trainers import get_trainer
    from nasforge.train import make_train_config

    data = load_data(job["data"], image_size=job["image_size"], seed=job["seed"])
    options = {"num_classes": data.num_classes, "in_channels": data.in_channels, **job["options"]}
    torch.manual_seed(job["seed"])
    net = create_supernet(job["space"], **options)
    config = make_train_config(job["trainer"], job["seed"], {**COMMON, **job["values"]})
    trainer = get_trainer(job["trainer"], config)
    t0 = time.perf_counter()
    history = trainer.fit(net, data, supernet_name=job["space"], supernet_options=options)
    wall = time.perf_counter() - t0
    space = net.space
    if job["kind"] == "sorted":
        archs = list(space.enumerate())
    else:
        rng = random.Random(1234)  # the same random subnets for every trainer and seed
        archs = [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(10))]
    evals = _evaluate(net, data, archs)
    return {**{k: job[k] for k in ("name", "trainer", "seed", "data")}, "wall_s": wall,
            "epochs": len(history), "passes": history[-1]["passes"], "subnets": evals}


def _jobs(kind: str, seeds: list[int], data: str, recipe: str = "default") -> list[dict[str, Any]]:
    runs = CNN_RUNS if kind == "cnn" else {k: (t, {**SORTED_RECIPES[recipe], **v}) for k, (t, v) in SORTED_RUNS.items()}
    space, options, size = ("mbv3-small", CNN_OPTIONS, 16) if kind == "cnn" else ("sorted-mlp", {}, 8)
    return [{"kind": kind, "name": name, "trainer": trainer, "values": values, "seed": seed, "data": data,
             "space": space, "options": options, "image_size": size}
            for seed in seeds for name, (trainer, values) in runs.items()]


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report_cnn(results: list[dict[str, Any]]) -> str:
    lines = ["| trainer | epochs | subnet passes | teacher passes | wall s | largest | smallest | random mean |",
             "|---|---|---|---|---|---|---|---|"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    for name, rs in by.items():
        big = [r["subnets"][0]["acc"] for r in rs]
        small = [r["subnets"][1]["acc"] for r in rs]
        rand = [statistics.mean(s["acc"] for s in r["subnets"][2:]) for r in rs]
        lines.append(f"| {name} | {rs[0]['epochs']} | {rs[0]['passes'].get('subnet', 0)} | "
                     f"{rs[0]['passes'].get('teacher', 0)} | {statistics.mean(r['wall_s'] for r in rs):.0f} | "
                     f"{_mean_sd(big)} | {_mean_sd(small)} | {_mean_sd(rand)} |")
    lines.append("")
    seeds = sorted({r["seed"] for r in results})
    small = {(r["name"], r["seed"]): r["subnets"][1]["acc"] for r in results}
    if all(("deps", s) in small and ("ps", s) in small for s in seeds):
        gap = [small[("deps", s)] - small[("ps", s)] for s in seeds]
        lines.append(f"- smallest subnet, DεpS - PS (paired by seed): {_mean_sd(gap)} (goal >= +0.05); "
                     f"per seed {[round(g, 4) for g in gap]}")
    for other, what in (("deps-noramp", "without the ε ramp, same start"), ("deps-late", "without the ε ramp, "
                                                                                        "start at T_w")):
        if all(("deps", s) in small and (other, s) in small for s in seeds):
            gap = [small[("deps", s)] - small[(other, s)] for s in seeds]
            lines.append(f"- smallest subnet, DεpS - DεpS {what}: {_mean_sd(gap)} (goal >= +0.01); "
                         f"per seed {[round(g, 4) for g in gap]}")
    return "\n".join(lines)


def report_sorted(results: list[dict[str, Any]]) -> str:
    lines = ["| run | seed | normal full acc | sorted full acc | loss (points) | sub-models >= 96% of normal | "
             "smallest sub-model acc | wall s run / normal |", "|---|---|---|---|---|---|---|---|"]
    names = [n for n in dict.fromkeys(r["name"] for r in results) if n != "normal"]
    for name in names:
        for seed in sorted({r["seed"] for r in results}):
            normal = next(r for r in results if r["seed"] == seed and r["name"] == "normal")
            srt = next((r for r in results if r["seed"] == seed and r["name"] == name), None)
            if srt is None:
                continue
            full_normal = max(normal["subnets"], key=lambda s: s["macs"])["acc"]
            full_sorted = max(srt["subnets"], key=lambda s: s["macs"])["acc"]
            keep = sum(s["acc"] >= 0.96 * full_normal for s in srt["subnets"])
            smallest = min(srt["subnets"], key=lambda s: s["macs"])["acc"]
            lines.append(f"| {name} | {seed} | {full_normal:.4f} | {full_sorted:.4f} | "
                         f"{100 * (full_normal - full_sorted):+.2f} | {keep}/{len(srt['subnets'])} | {smallest:.4f} | "
                         f"{srt['wall_s']:.0f} / {normal['wall_s']:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(r["name"] for r in results))
    for i, name in enumerate(names):
        by_arch: dict[str, list[tuple[int, float]]] = {}
        for r in results:
            if r["name"] == name:
                for sub in r["subnets"]:
                    by_arch.setdefault(sub["arch"], []).append((sub["macs"], sub["acc"]))
        pts = sorted((v[0][0], statistics.mean(a for _, a in v)) for v in by_arch.values())  # mean over seeds
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=0.8, alpha=0.8, label=name,
                color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image")
    ax.set_ylabel("test accuracy, mean over seeds (BN recalibrated)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["cnn", "sorted"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--only", nargs="*", help="run only these configurations (names as in the table)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--recipe", choices=sorted(SORTED_RECIPES), default="default",
                    help="sorted: optimiser recipe shared by the sorted and the normally trained MLP")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [j for j in _jobs(args.kind, args.seeds, args.data, args.recipe) if not args.only or j["name"] in args.only]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = []
        for r in pool.imap_unordered(run_one, jobs):
            results.append(r)
            print(f"done {r['name']} seed {r['seed']}: {r['wall_s']:.0f} s", flush=True)
    order = {(j["name"], j["seed"]): i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[(r["name"], r["seed"])])
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = report_cnn(results) if args.kind == "cnn" else report_sorted(results)
    plot(results, args.out / f"{args.kind}_acc_vs_macs.png", f"{args.kind} on {args.data}: every trained subnet")
    print(f"\n{table}\n\ntotal {time.perf_counter() - t0:.0f} s; plot: {args.out / f'{args.kind}_acc_vs_macs.png'}")


if __name__ == "__main__":
    main()
