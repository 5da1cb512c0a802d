"""Benchmark: one progressive-shrinking (PS) step of ``ofa-mbv3-w1.0`` against the Once-for-All reference.

A step, as in the reference's ``train_one_epoch`` (kd_ratio 1, kd_type "ce", one subnet per step):
teacher forward (the full net k7/e6/d4 as a static network, train mode, no_grad) + forward/backward of one random
subnet with loss CE(label smoothing 0.1) + soft-CE to the teacher + SGD Nesterov step (lr 0.01, momentum 0.9,
wd 3e-5, none on BN/bias). Batch 16 at 128 px, 2 threads, dropout 0 on both sides (the reference's teacher has
none either; keeping the student's at 0 as well keeps the numerics check free of RNG alignment).

- nasforge: :func:`nasforge.supernets.trainers.steps.distill_step` with ``teacher = net.extract(largest)``.
- reference (``--ofa-repo``): ``OFAMobileNetV3``, its static teacher from ``get_active_subnet``, its loss helpers
  (``cross_entropy_loss_with_soft_target``, ``cross_entropy_with_label_smoothing``) and its ``build_optimizer``
  with ``no_decay_keys="bn#bias"``; the same weights (mapped with ``ofa_compat``) and the same architectures.

Batch layout: ``distill_step`` keeps the layout of the batch it is given (PyTorch propagates it through every
layer). Both implementations are timed with NCHW batches (the reference's, and nasforge's default) and with
channels-last batches, which make oneDNN's depthwise convolutions and batch norm on CPU about 1.5x faster for
either code, at the price of a different (less accurate) summation order in those kernels.

Numerics: one step of each implementation from the same weights (randomised, and default init), batch and
architecture, per layout; the losses and every updated tensor (weights, BN statistics) are compared, next to the
same step computed in float64 as the yardstick. Timing: warm-up, then the variants interleaved (a new random
subnet per round, the same for all; the order flips every round), medians and per-round ratios. Also: the static
(``extract``) vs dynamic forward of the same subnet, eval and train mode, NCHW and channels-last input.

    python benchmarks/ofa_step.py [--ofa-repo PATH] [--steps 20] [--warmup 3]

The reference is imported through ``ofa_reference_check.import_reference`` (a stub torchvision, see there).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.supernets import Architecture, ElasticMobileNetV3, create_supernet
from nasforge.supernets.ofa_compat import nasforge_to_ofa_state_dict, ofa_to_nasforge_state_dict
from nasforge.supernets.trainers.steps import build_optimizer, distill_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ofa_reference_check import (  # noqa: E402  (sibling script)
    Reference,
    build_reference,
    import_reference,
    randomize_,
    set_reference_arch,
)

LR, MOMENTUM, WD, LS = 0.01, 0.9, 3e-5, 0.1


@dataclass
class Side:
    """One implementation: its supernet, teacher, optimizer and a ``step(x, y, arch) -> loss`` callable."""

    name: str
    net: nn.Module
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[torch.Tensor, torch.Tensor, Architecture], float]


LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def nasforge_side(net: ElasticMobileNetV3, layout: str = "NCHW") -> Side:
    """``distill_step`` with the full net as teacher; the batch is handed over in ``layout`` (inside the timing)."""
    teacher = net.extract(net.space.largest())
    opt = build_optimizer(net, lr=LR, momentum=MOMENTUM, weight_decay=WD)

    def step(x: torch.Tensor, y: torch.Tensor, arch: Architecture) -> float:
        x = x.contiguous(memory_format=LAYOUTS[layout])
        return distill_step(net, opt, x, y, [arch], teacher, label_smoothing=LS, kd_weight=1.0)

    return Side(f"nasforge ({layout})", net, teacher, opt, step)


def reference_side(ref: Reference, ofa_net: nn.Module, layout: str = "NCHW") -> Side:
    """The reference's own step, as its ``train_one_epoch`` runs it (one subnet, kd_ratio 1, kd_type ce)."""
    ofa_net.set_max_net()
    teacher = ofa_net.get_active_subnet(preserve_weight=True)
    u = ref.utils
    groups = [list(ofa_net.get_parameters(["bn", "bias"], mode="exclude")),
              list(ofa_net.get_parameters(["bn", "bias"], mode="include"))]
    opt = u.build_optimizer(groups, "sgd", {"momentum": MOMENTUM, "nesterov": True}, LR, WD, "bn#bias")

    def step(x: torch.Tensor, y: torch.Tensor, arch: Architecture) -> float:
        x = x.contiguous(memory_format=LAYOUTS[layout])
        teacher.train()
        with torch.no_grad():
            soft_label = F.softmax(teacher(x).detach(), dim=1)
        ofa_net.zero_grad()
        set_reference_arch(ofa_net, arch)
        output = ofa_net(x)
        loss = 1.0 * u.cross_entropy_loss_with_soft_target(output, soft_label) + \
            u.cross_entropy_with_label_smoothing(output, y, LS)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return Side(f"reference ({layout})", ofa_net, teacher, opt, step)


def batch(seed: int, n: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, r, r, generator=gen), torch.randint(0, 1000, (n,), generator=gen)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], params: bool) -> float:
    """Max abs difference over the float tensors of two OFA-keyed state dicts (weights, or BN statistics)."""
    keys = [k for k in a if a[k].is_floating_point() and ("running_" in k) != params]
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


def _float64_step(template: ElasticMobileNetV3, x: torch.Tensor, y: torch.Tensor,
                  arch: Architecture) -> dict[str, torch.Tensor]:
    """The same step in float64 (nasforge code): the yardstick for both float32 implementations."""
    net = copy.deepcopy(template).double()
    side = nasforge_side(net)
    side.teacher.double()  # extract() builds float32 modules whatever the supernet's dtype
    side.step(x.double(), y, arch)
    return nasforge_to_ofa_state_dict(net)


def numerics(ref: Reference, template: ElasticMobileNetV3, x: torch.Tensor, y: torch.Tensor,
             arch: Architecture) -> list[tuple[str, float, float, float, float, float]]:
    """One step of each implementation from the weights of ``template``, both given the batch in each layout.

    Rows: ``(layout, loss diff, max abs diff of the updated weights, their max abs error vs float64 for
    nasforge and for the reference, max abs diff of the BN running statistics)``. Differences between two
    float32 implementations mean something only next to their errors against the float64 result.
    """
    exact = _float64_step(template, x, y, arch)
    rows = []
    for layout in LAYOUTS:
        ours = nasforge_side(copy.deepcopy(template), layout)
        ofa_net = build_reference(ref, 1.0)
        ofa_net.load_state_dict(nasforge_to_ofa_state_dict(template))  # the reference's own loader
        theirs = reference_side(ref, ofa_net, layout)
        loss_ours, loss_theirs = ours.step(x, y, arch), theirs.step(x, y, arch)
        a, b = nasforge_to_ofa_state_dict(ours.net), ofa_net.state_dict()
        rows.append((layout, abs(loss_ours - loss_theirs), _max_diff(a, b, True), _max_diff(a, exact, True),
                     _max_diff(b, exact, True), _max_diff(a, b, False)))
    return rows


def time_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_steps(sides: list[Side], archs: list[Architecture], warmup: int, r: int, batch_size: int) -> dict[str, list[float]]:
    """Alternate the sides (which one goes first flips every pair); a new architecture and batch per pair."""
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    for i, arch in enumerate(archs):
        x, y = batch(100 + i, batch_size, r)
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            t0 = time.perf_counter()
            side.step(x, y, arch)
            t = time.perf_counter() - t0
            if i >= warmup:
                times[side.name].append(t)
    return times


def static_vs_dynamic(net: ElasticMobileNetV3, arch: Architecture, x: torch.Tensor,
                      repeats: int) -> list[tuple[str, str, float, float, float]]:
    """Median forward time of the dynamic supernet and of ``extract(arch)``, eval (no_grad) and train (with
    grad, as in a training step), NCHW and channels-last input; on a copy, so ``net``'s BN statistics stay.

    Rows: ``(mode, layout, dynamic s, static s, max abs logit diff in eval mode)``.
    """
    net = copy.deepcopy(net)
    net.set_active(arch)
    static = net.extract(arch)
    rows = []
    for mode, layout in itertools.product(("eval", "train"), ("NCHW", "channels-last")):
        xl = x.contiguous(memory_format=torch.channels_last) if layout == "channels-last" else x
        train = mode == "train"
        net.train(train)
        static.train(train)
        with torch.enable_grad() if train else torch.no_grad():
            diff = float("nan") if train else float((net(xl) - static(xl)).abs().max())
            times: dict[bool, list[float]] = {True: [], False: []}
            for i in range(repeats + 2):
                for is_dynamic in (True, False) if i % 2 == 0 else (False, True):
                    t = time_call(lambda m=net if is_dynamic else static, xl=xl: m(xl))
                    if i >= 2:
                        times[is_dynamic].append(t)
        rows.append((mode, layout, statistics.median(times[True]), statistics.median(times[False]), diff))
    return rows


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ofa-repo", type=Path, help="checkout of mit-han-lab/once-for-all (enables the comparison)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = create_supernet("ofa-mbv3-w1.0", dropout=0.0)
    ref = import_reference(args.ofa_repo) if args.ofa_repo else None
    if ref is not None:
        ofa_net = build_reference(ref, 1.0)
        randomize_(ofa_net, args.seed)
        net.load_state_dict(ofa_to_nasforge_state_dict(ofa_net.state_dict(), net))
    else:
        randomize_(net, args.seed)
    rng = random.Random(args.seed)
    archs = [net.space.sample(rng).replace(r=args.resolution) for _ in range(args.warmup + args.steps)]
    probe = net.space.sample(random.Random(args.seed + 1)).replace(r=args.resolution)  # numerics, static/dynamic
    x, y = batch(args.seed, args.batch, args.resolution)

    print(f"machine: {machine()}")
    print(f"command: python benchmarks/ofa_step.py {' '.join(sys.argv[1:])}\n")
    if ref is not None:
        print(f"### Numerics: one step from identical weights (reference mit-han-lab/once-for-all@{ref.commit})\n")
        print("| weights | batch layout (both) | loss diff | updated weights: max abs diff | max abs error vs "
              "float64 (nasforge / reference) | BN running stats: max abs diff |\n|---|---|---|---|---|---|")
        default = create_supernet("ofa-mbv3-w1.0", dropout=0.0)
        for label, template in (("randomised (every tensor)", net), ("default init", default)):
            for layout, loss, w, err_ours, err_ref, bn in numerics(ref, template, x, y, probe):
                print(f"| {label} | {layout} | {loss:.3g} | {w:.3g} | {err_ours:.3g} / {err_ref:.3g} | {bn:.3g} |")
        print()
    sides = [nasforge_side(copy.deepcopy(net), layout) for layout in LAYOUTS]
    if ref is not None:
        for layout in LAYOUTS:
            ofa_copy = build_reference(ref, 1.0)
            ofa_copy.load_state_dict(ofa_net.state_dict())
            sides.append(reference_side(ref, ofa_copy, layout))
    times = time_steps(sides, archs, args.warmup, args.resolution, args.batch)
    print(f"### One PS step (batch {args.batch}, {args.resolution} px, one random subnet per step, "
          f"{args.steps} timed steps after {args.warmup} warm-up, the {len(sides)} variants interleaved)\n")
    base = "reference (NCHW)" if ref is not None else "nasforge (NCHW)"
    print(f"| implementation (batch layout) | median s/step | min | max | speed-up vs {base} (ratio of medians / "
          "median per-step ratio) |\n|---|---|---|---|---|")
    for name, ts in times.items():
        ratio = statistics.median(times[base]) / statistics.median(ts)
        pairs = statistics.median(b / t for b, t in zip(times[base], ts, strict=True))
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} | {ratio:.2f}x / {pairs:.2f}x |")
    print(f"\n### Static (extract) vs dynamic forward of the same subnet (batch {args.batch}, {args.resolution} px)\n")
    print("| mode | layout | dynamic median ms | static median ms | dynamic/static | eval: max abs logit diff |\n"
          "|---|---|---|---|---|---|")
    for mode, layout, dyn, sta, diff in static_vs_dynamic(net, probe, x, repeats=max(args.steps, 10)):
        shown = "-" if diff != diff else f"{diff:.3g}"
        print(f"| {mode} | {layout} | {dyn * 1e3:.1f} | {sta * 1e3:.1f} | {dyn / sta:.2f} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
