"""Search efficiency: measured evaluations each searcher needs to reach 95/97/99% of a reference hypervolume.

    python benchmarks/search.py --out /tmp/search-bench [--preset shapes|digits] [--budget 120]
        [--seeds 0 1 2] [--reference-trials 300] [--supernet PATH/supernet.pt]

Trains a supernet once through :func:`nasforge.train.train_supernet` into ``OUT/train`` (or loads ``--supernet``):
``--preset digits`` is ``mbv3-small`` with the sandwich trainer for 10 epochs on digits; ``--preset shapes`` is
the 3-stage ``mbv3-small`` space and the DεpS recipe of ``benchmarks/trainers.py`` on 8-class procedural shapes,
where subnets spread over a wide accuracy range (on digits every subnet is near 98% and the two corners alone hold
almost all of the hypervolume). Every evaluation is a
real measurement through :func:`nasforge.search.make_subnet_evaluator` (validation accuracy after BN recalibration
on 500 training images, exact MACs/params). Measurements are cached in memory by architecture across runs so that
an architecture seen before costs no time again; each run still counts every distinct architecture it measured
(calls of its evaluator), and ``est. s`` adds the original measuring time of cache hits back.

Objectives: accuracy (max) and MACs (min). The reference point is fixed once from a long random run
(``--reference-trials``) as (minimum accuracy seen - 0.05, 1.1 x MACs of the largest subnet). The reference
hypervolume is that of the union of every architecture measured by the reference run and all method runs
(``--reference-from results.json`` reuses an earlier run's point and hypervolume instead, e.g. to give one method
a longer budget against the same yardstick).
For each method (random, nsga2, tpe, predictor) and seed, ``run_search`` runs ``--budget`` trials with
``initial=(largest, smallest)`` in memory; after every measured evaluation the hypervolume of the complete trials so
far is recorded, and the first count at which it reaches 99% of the reference is reported. Writes ``results.json``
and ``hv_vs_evals.png`` into ``--out`` and prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from trainers import CNN_OPTIONS, CNN_RUNS  # benchmarks/trainers.py, next to this script

from nasforge.data import load_data
from nasforge.nas import PredictorLoopSearcher, SearchResult, hypervolume_2d, pareto_front, run_search
from nasforge.runfolder import RunFolder
from nasforge.search import make_subnet_evaluator
from nasforge.supernets import Architecture, Supernet
from nasforge.supernets.checkpoint import load_supernet
from nasforge.train import train_supernet

METHODS = ("random", "nsga2", "tpe", "predictor")
OBJECTIVES = ("accuracy", "macs")
DIRECTIONS = ("maximize", "minimize")
TARGETS = (0.95, 0.97, 0.99)


class CachedEvaluator:
    """Shared in-memory cache of real measurements; :meth:`for_run` gives a per-run counting evaluator."""

    def __init__(self, evaluate: Callable[[Architecture], dict[str, float]]) -> None:
        self.evaluate = evaluate
        self.cache: dict[str, tuple[dict[str, float], float]] = {}  # arch JSON -> (metrics, seconds to measure)

    def for_run(self) -> tuple[Callable[[Architecture], dict[str, float]], dict[str, Any]]:
        stats: dict[str, Any] = {"calls": 0, "hits": 0, "measure_s": 0.0, "hit_s": 0.0, "archs": []}

        def evaluate(arch: Architecture) -> dict[str, float]:
            key = arch.to_json()
            stats["calls"] += 1
            stats["archs"].append(key)
            if key in self.cache:
                metrics, secs = self.cache[key]
                stats["hits"] += 1
                stats["hit_s"] += secs
                return dict(metrics)
            t0 = time.perf_counter()
            metrics = self.evaluate(arch)
            secs = time.perf_counter() - t0
            stats["measure_s"] += secs
            self.cache[key] = (dict(metrics), secs)
            return dict(metrics)

        return evaluate, stats


def complete_points(result: SearchResult) -> list[tuple[float, float]]:
    return [(t.metrics["accuracy"], t.metrics["macs"]) for t in sorted(result.trials, key=lambda t: t.number)
            if t.state == "complete" and all(k in t.metrics for k in OBJECTIVES)]


def hv_curve(result: SearchResult, reference: tuple[float, float]) -> list[float]:
    """Hypervolume of the complete trials so far after each measured (non-duplicate) evaluation."""
    curve: list[float] = []
    points: list[tuple[float, float]] = []  # the front so far: a dominated point never adds hypervolume again
    for t in sorted(result.trials, key=lambda t: t.number):
        if t.state != "complete" or not all(k in t.metrics for k in OBJECTIVES):
            continue
        points.append((t.metrics["accuracy"], t.metrics["macs"]))
        points = [points[i] for i in pareto_front(points, DIRECTIONS)]
        if t.duplicate_of is None:
            curve.append(hypervolume_2d(points, DIRECTIONS, reference))
        elif curve:  # reused metrics add no point; keep the curve per measured evaluation
            curve[-1] = hypervolume_2d(points, DIRECTIONS, reference)
    return curve


#: what ``--preset`` trains when no ``--supernet`` is given: (space, data, trainer, image size, supernet options,
#: training values). ``shapes`` is the DεpS recipe and the 3-stage space of ``benchmarks/trainers.py``.
PRESETS: dict[str, tuple[str, str, str, int | None, dict[str, Any], dict[str, Any]]] = {
    "digits": ("mbv3-small", "digits", "sandwich", None, {}, {"epochs": 10}),
    "shapes": ("mbv3-small", "shapes?n=2000&classes=8&difficulty=0.8", "deps", 16, dict(CNN_OPTIONS),
               {**CNN_RUNS["deps"][1], "batch_size": 64, "eval_every": 0}),
}


def get_net(args: argparse.Namespace) -> tuple[Supernet, float]:
    t0 = time.perf_counter()
    if args.supernet is not None:
        net, _ = load_supernet(args.supernet)
    else:
        final = RunFolder(args.out / "train").find_supernet()  # this layout or an older run's
        if final is not None:
            net, _ = load_supernet(final)
        else:
            space, data, trainer, size, options, values = PRESETS[args.preset]
            values = {**values, **({"epochs": args.epochs} if args.epochs else {})}
            net = train_supernet(space, data=data, out=args.out / "train", trainer=trainer, seed=args.train_seed,
                                 image_size=size, supernet_options=options, progress=False, **values).net
    return net, time.perf_counter() - t0


def make_sampler(method: str, net: Supernet) -> Any:
    if method == "predictor":
        return PredictorLoopSearcher(cost_fns={"macs": net.macs, "params": net.params})
    return method


def fmt_evals(value: int | None, budget: int) -> str:
    return "not reached" if value is None else str(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="digits",
                    help="what to train when no --supernet is given (data, space and trainer)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's; digits 10)")
    ap.add_argument("--supernet", type=Path, default=None, help="a trained supernet.pt instead of training")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--reference-trials", type=int, default=300)
    ap.add_argument("--budget", type=int, default=120)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference-from", type=Path, default=None,
                    help="results.json of an earlier run: reuse its reference point and HV (no reference run), e.g. "
                         "to give random a longer budget against the same yardstick")
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS),
                    help="fractions of the reference hypervolume to count evaluations to")
    args = ap.parse_args()
    targets = sorted(args.targets)
    torch.set_num_threads(args.threads)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass
    args.out.mkdir(parents=True, exist_ok=True)

    net, train_s = get_net(args)
    space = net.space
    data_spec = PRESETS[args.preset][1]
    data = load_data(data_spec, image_size=net.resolution(space.largest()), seed=args.train_seed)
    cached = CachedEvaluator(make_subnet_evaluator(net, data, calib_images=args.calib_images))
    print(f"supernet ready in {train_s:.0f} s; {len(data.val)} validation images", flush=True)

    largest_macs = float(net.macs(space.largest()))
    if args.reference_from is not None:  # the yardstick of an earlier run: same point, same reference HV
        earlier = json.loads(args.reference_from.read_text())
        point = earlier["reference_point"]
        reference, min_acc = (point["accuracy"], point["macs"]), point["min_accuracy_seen"]
        fixed_hv: float | None = float(earlier["reference_hv"])
        ref_points: list[tuple[float, float]] = []
        print(f"reference from {args.reference_from}: point {reference}, HV {fixed_hv:.6g}", flush=True)
    else:
        # reference run: long random search (its seed is apart from the method seeds)
        fixed_hv = None
        t0 = time.perf_counter()
        evaluate, ref_stats = cached.for_run()
        ref_result = run_search(space, evaluate, objectives=OBJECTIVES, n_trials=args.reference_trials,
                                sampler="random", storage=None, seed=10_000,
                                initial=(space.largest(), space.smallest()))
        ref_points = complete_points(ref_result)
        min_acc = min(p[0] for p in ref_points)
        reference = (max(0.0, min_acc - 0.05), 1.1 * largest_macs)
        print(f"reference run: {ref_stats['calls']} measured archs in {time.perf_counter() - t0:.0f} s; "
              f"reference point: accuracy {reference[0]:.4f} (min seen {min_acc:.4f} - 0.05), "
              f"macs {reference[1]:.4g} (1.1 x largest {largest_macs:.4g})", flush=True)

    runs: list[dict[str, Any]] = []
    for method in args.methods:
        for seed in args.seeds:
            evaluate, stats = cached.for_run()
            t0 = time.perf_counter()
            result = run_search(space, evaluate, objectives=OBJECTIVES, n_trials=args.budget,
                                sampler=make_sampler(method, net), storage=None, seed=seed,
                                initial=(space.largest(), space.smallest()))
            wall = time.perf_counter() - t0
            curve = hv_curve(result, reference)
            runs.append({"method": method, "seed": seed, "result": result, "stats": stats, "wall_s": wall,
                         "est_s": wall + stats["hit_s"], "curve": curve})
            print(f"  {method} seed {seed}: {len(result.trials)} trials, {stats['calls']} measured archs "
                  f"({stats['hits']} from cache), {wall:.0f} s", flush=True)

    # reference hypervolume: union of everything measured
    union = {json_key: m for json_key, (m, _) in cached.cache.items()}
    union_points = [(m["accuracy"], m["macs"]) for m in union.values()]
    ref_hv = fixed_hv if fixed_hv is not None else hypervolume_2d(union_points, DIRECTIONS, reference)
    ref_run_hv = hypervolume_2d(ref_points, DIRECTIONS, reference) if ref_points else float("nan")

    rows = []
    for r in runs:
        frac = [h / ref_hv for h in r["curve"]]
        reached = {t: next((i + 1 for i, f in enumerate(frac) if f >= t), None) for t in targets}
        r.update(frac=frac, evals_to=reached, final_frac=frac[-1] if frac else 0.0)
        rows.append(r)

    budget = args.budget
    _, _, trainer, _, _, values = PRESETS[args.preset]
    epochs = args.epochs or values.get("epochs")
    print(f"\nmbv3-small {trainer} ({epochs} epochs) on {data_spec}; objectives accuracy (val, BN recalibrated "
          f"on {args.calib_images} train images) max, MACs min; budget {budget} trials, initial (largest, smallest)")
    print(f"reference point (accuracy {reference[0]:.4f}, MACs {reference[1]:.4g}); reference HV {ref_hv:.6g} over "
          f"{len(union_points)} distinct measured archs (the {args.reference_trials}-trial random run alone: "
          f"{ref_run_hv / ref_hv:.4f} of it)\n")
    heads = " | ".join(f"evals to {t:.0%}" for t in targets)
    print(f"| method | seed | {heads} | final HV / reference | measured archs | wall s | est. s |")
    print("|---|---|" + "---|" * len(targets) + "---|---|---|---|")
    for r in rows:
        cells = " | ".join(fmt_evals(r["evals_to"][t], budget) for t in targets)
        print(f"| {r['method']} | {r['seed']} | {cells} | {r['final_frac']:.4f} | "
              f"{r['stats']['calls']} | {r['wall_s']:.0f} | {r['est_s']:.0f} |")
    summary: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        # "not reached" counts as budget + 1 (a lower bound on the true count)
        mean_evals = {t: sum(budget + 1 if r["evals_to"][t] is None else r["evals_to"][t] for r in mine) / len(mine)
                      for t in targets}
        n_miss = {t: sum(r["evals_to"][t] is None for r in mine) for t in targets}
        summary[method] = {
            "mean_evals_to": {str(t): v for t, v in mean_evals.items()},
            "not_reached": {str(t): v for t, v in n_miss.items()}, "runs": len(mine),
            "mean_final_frac": sum(r["final_frac"] for r in mine) / len(mine),
            "mean_measured": sum(r["stats"]["calls"] for r in mine) / len(mine),
            "mean_wall_s": sum(r["wall_s"] for r in mine) / len(mine),
            "mean_est_s": sum(r["est_s"] for r in mine) / len(mine),
        }
        s = summary[method]
        marks = " | ".join(f"{'>=' if n_miss[t] else ''}{mean_evals[t]:.1f}"
                           + (f" ({n_miss[t]}/{len(mine)} missed)" if n_miss[t] else "") for t in targets)
        print(f"| **{method} mean** | | {marks} | {s['mean_final_frac']:.4f} | {s['mean_measured']:.1f} | "
              f"{s['mean_wall_s']:.0f} | {s['mean_est_s']:.0f} |")
    ratios: dict[str, dict[str, float]] = {}
    print()
    for base in ("random", "nsga2", "tpe"):
        if base not in summary or "predictor" not in summary:
            continue
        for t in targets:
            key = str(t)
            ratio = summary[base]["mean_evals_to"][key] / summary["predictor"]["mean_evals_to"][key]
            ratios.setdefault(base, {})[key] = ratio
            bound = ""
            if summary[base]["not_reached"][key] and not summary["predictor"]["not_reached"][key]:
                bound = ">= "  # the baseline's misses count as budget + 1: the true ratio is larger
            elif summary["predictor"]["not_reached"][key]:
                bound = "~ "  # the predictor loop missed too: only indicative
            print(f"{base} / predictor mean evals to {t:.0%} HV: {bound}{ratio:.2f}")
    print(f"(a run that never reached a target counts as {budget + 1} = budget + 1 evaluations)")
    print("\nwall s: real time of the run (cached archs cost ~0); est. s: wall s + original measuring time of the "
          "cached archs it reused")

    payload = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train_or_load_s": train_s,
        "reference_point": {"accuracy": reference[0], "macs": reference[1], "min_accuracy_seen": min_acc,
                            "largest_macs": largest_macs},
        "reference_hv": ref_hv, "reference_run_hv_fraction": ref_run_hv / ref_hv,
        "distinct_archs_measured": len(union_points), "targets": targets,
        "runs": [{"method": r["method"], "seed": r["seed"], "evals_to": {str(t): v for t, v in r["evals_to"].items()},
                  "final_hv_fraction": r["final_frac"], "measured_archs": r["stats"]["calls"],
                  "cache_hits": r["stats"]["hits"], "trials": len(r["result"].trials), "wall_s": r["wall_s"],
                  "est_s": r["est_s"], "hv_fraction_per_eval": r["frac"]} for r in rows],
        "summary": summary, "baseline_over_predictor": ratios,
    }
    (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    plot(rows, args.methods, args.out / "hv_vs_evals.png", budget, targets)
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'hv_vs_evals.png'}")
    seeds = " ".join(str(s) for s in args.seeds)
    print(f"reproduce: python benchmarks/search.py --out DIR --preset {args.preset} --reference-trials "
          f"{args.reference_trials} --budget {budget} --seeds {seeds} --calib-images {args.calib_images}")


def plot(rows: list[dict[str, Any]], methods: list[str], path: Path, budget: int, targets: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in methods:
        curves = [r["frac"] for r in rows if r["method"] == method and r["frac"]]
        if not curves:
            continue
        length = max(len(c) for c in curves)
        # a run that measured fewer archs keeps its last value
        mean = [sum(c[min(i, len(c) - 1)] for c in curves) / len(curves) for i in range(length)]
        ax.plot(range(1, length + 1), mean, label=f"{method} ({len(curves)} seed(s))")
    for t in targets:
        ax.axhline(t, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"{t:.0%}", (1, t), color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("measured evaluations")
    ax.set_ylabel("hypervolume / reference")
    ax.set_ylim(bottom=max(0.0, math.floor(min((min(r["frac"]) for r in rows if r["frac"]), default=0) * 10) / 10))
    ax.set_title(f"accuracy/MACs hypervolume vs measured evaluations (budget {budget} trials)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
