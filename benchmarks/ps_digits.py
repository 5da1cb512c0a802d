"""Progressive shrinking on digits: corner and random subnets' test accuracy after every phase of a longer run.

    python benchmarks/ps_digits.py --scale 0.05 --out /tmp/ps-bench [--data digits] [--baseline]

Trains ``mbv3-small`` with ``--trainer ps`` (all six phases) through :func:`nasforge.train.train_supernet`, then
evaluates, with BN recalibration on 500 training images, the largest and smallest subnets and 8 random subnets on
the held-out test split. ``--baseline`` also trains the sandwich rule for the same total number of epochs in the
same process and reports the accuracy differences. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import torch

from nasforge.data import load_data
from nasforge.supernets import Supernet
from nasforge.supernets.evaluate import evaluate_arch
from nasforge.train import train_supernet


def corner_and_random(net: Supernet, data: Any, n_random: int, seed: int) -> dict[str, float]:
    calib = data.train.x[:500]
    out = {
        "largest": evaluate_arch(net, net.space.largest(), calib, data.test.x, data.test.y, 500)[0],
        "smallest": evaluate_arch(net, net.space.smallest(), calib, data.test.x, data.test.y, 500)[0],
    }
    rng = random.Random(seed)
    accs = [evaluate_arch(net, net.space.sample(rng), calib, data.test.x, data.test.y, 500)[0] for _ in range(n_random)]
    out["random_mean"] = sum(accs) / len(accs)
    out["random_min"] = min(accs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", action="store_true", help="also train the sandwich rule for as many epochs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data, image_size=16, seed=args.seed)
    t0 = time.perf_counter()
    ps = train_supernet("mbv3-small", data=args.data, out=args.out / "ps", trainer="ps", seed=args.seed,
                        schedule_scale=args.scale)
    ps_time = time.perf_counter() - t0
    rows = [("ps", len(ps.history), ps_time, corner_and_random(ps.net, data, 8, args.seed))]
    print("\nper-phase validation (largest / smallest of the phase's space, BN recalibrated):")
    for h in ps.history:
        print(f"  epoch {h['epoch']:3d} {h['phase']:9s} loss {h['loss']:.3f}  val max {h['val_acc_max']:.4f} "
              f"min {h['val_acc_min']:.4f}")
    if args.baseline:
        t0 = time.perf_counter()
        sw = train_supernet("mbv3-small", data=args.data, out=args.out / "sandwich", trainer="sandwich",
                            seed=args.seed, epochs=len(ps.history))
        rows.append(("sandwich", len(sw.history), time.perf_counter() - t0, corner_and_random(sw.net, data, 8,
                                                                                            args.seed)))
    print(f"\nmbv3-small on {args.data}, seed {args.seed}, schedule_scale {args.scale}; test accuracy after BN "
          "recalibration (500 train images)\n")
    print("| trainer | epochs | time [s] | largest | smallest | 8 random: mean | 8 random: min |")
    print("|---|---|---|---|---|---|---|")
    for name, epochs, secs, acc in rows:
        print(f"| {name} | {epochs} | {secs:.0f} | {acc['largest']:.4f} | {acc['smallest']:.4f} | "
              f"{acc['random_mean']:.4f} | {acc['random_min']:.4f} |")
    print(f"\nreproduce: python benchmarks/ps_digits.py --scale {args.scale} --data {args.data} --seed {args.seed} "
          f"--out DIR{' --baseline' if args.baseline else ''}")


if __name__ == "__main__":
    main()
