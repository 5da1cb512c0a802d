"""Benchmark for a lent GPU (issue 16): progressive-shrinking step speed per precision against the Once-for-All
reference, fp32 vs bf16 loss curves, and an end-to-end `nasforge train` on a generated ImageNet-layout folder.

1. Step: one PS step of ``ofa-mbv3-w1.0`` (teacher forward + one random subnet forward/backward + SGD), batch
   ``--batch`` at ``--resolution``, for nasforge's ``distill_step`` in fp32 NCHW, fp32 channels-last, bf16 and
   fp16 autocast with channels-last, and (``--ofa-repo``) the reference's own step in fp32 NCHW (the baseline)
   and under the same bf16 autocast. Variants are interleaved, a new subnet per round; CUDA is synchronised
   around every step. Speed-ups are ratios of medians against the reference's fp32 step (or nasforge's fp32
   NCHW without the reference).
2. Loss curves: ``--curve-steps`` steps from the same weights and the same batches in fp32 and bf16; the largest
   relative difference of the per-step losses and of their means over the last 10 steps.
3. End to end: ``nasforge train ofa-mbv3-w1.0 --trainer full --data imagenet:DIR`` on ``--images`` generated
   JPEGs (about 500x375), bf16, channels-last, ``--workers`` loader workers: images/s and data wait.

    python benchmarks/gpu_train.py --out /tmp/gpu [--ofa-repo PATH] [--batch 128] [--resolution 224]

Prints one JSON object (also written to ``--out/gpu_train.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nasforge.supernets import create_supernet
from nasforge.supernets.trainers.epoch import amp_dtype, make_scaler
from nasforge.supernets.trainers.steps import build_optimizer, distill_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
LR, MOMENTUM, WD, LS = 0.01, 0.9, 3e-5, 0.1
Step = Callable[[torch.Tensor, torch.Tensor, Any], float]


def nasforge_step(net: Any, precision: str, channels_last: bool, device: torch.device) -> Step:
    teacher = net.extract(net.space.largest()).to(device)
    opt = build_optimizer(net, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    scaler = make_scaler(precision, device)

    def step(x: torch.Tensor, y: torch.Tensor, arch: Any) -> float:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return distill_step(net, opt, x, y, [arch], teacher, label_smoothing=LS, kd_weight=1.0,
                            amp_dtype=amp_dtype(precision), scaler=scaler)

    return step


def reference_step(ofa_repo: Path, nasforge_net: Any, precision: str, channels_last: bool,
                   device: torch.device) -> Step:
    from ofa_reference_check import build_reference, import_reference, set_reference_arch

    from nasforge.supernets.ofa_compat import nasforge_to_ofa_state_dict

    ref = import_reference(ofa_repo)
    ofa_net = build_reference(ref, 1.0)
    ofa_net.load_state_dict(nasforge_to_ofa_state_dict(nasforge_net))
    ofa_net.to(device)
    ofa_net.set_max_net()
    teacher = ofa_net.get_active_subnet(preserve_weight=True).to(device)
    u = ref.utils
    groups = [list(ofa_net.get_parameters(["bn", "bias"], mode="exclude")),
              list(ofa_net.get_parameters(["bn", "bias"], mode="include"))]
    opt = u.build_optimizer(groups, "sgd", {"momentum": MOMENTUM, "nesterov": True}, LR, WD, "bn#bias")
    dtype = amp_dtype(precision)

    def amp() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step(x: torch.Tensor, y: torch.Tensor, arch: Any) -> float:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        teacher.train()
        with torch.no_grad(), amp():
            soft = F.softmax(teacher(x).detach().float(), dim=1)
        ofa_net.zero_grad()
        set_reference_arch(ofa_net, arch)
        with amp():
            out = ofa_net(x)
            loss = u.cross_entropy_loss_with_soft_target(out, soft) + u.cross_entropy_with_label_smoothing(out, y, LS)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(variants: dict[str, Step], net: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rng = random.Random(0)
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(args.warmup + args.steps):
        arch = net.space.sample(rng).replace(r=args.resolution)
        gen = torch.Generator().manual_seed(i)
        x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device)
        y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
        for name in names if i % 2 == 0 else names[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            variants[name](x, y, arch)
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    base = "reference fp32 NCHW" if "reference fp32 NCHW" in times else "nasforge fp32 NCHW"
    return {name: {"median_s": statistics.median(ts), "images_per_s": args.batch / statistics.median(ts),
                   "speedup_vs_" + base.replace(" ", "_"): statistics.median(times[base]) / statistics.median(ts)}
            for name, ts in times.items()}


def loss_curves(template: Any, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    curves = {}
    for precision in ("fp32", "bf16"):
        net = copy.deepcopy(template).to(device)
        step = nasforge_step(net, precision, True, device)
        rng, losses = random.Random(1), []
        for i in range(args.curve_steps):
            gen = torch.Generator().manual_seed(10_000 + i)
            x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device)
            y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
            losses.append(step(x, y, net.space.sample(rng).replace(r=args.resolution)))
        curves[precision] = losses
    a, b = curves["fp32"], curves["bf16"]
    tail = statistics.mean(a[-10:]), statistics.mean(b[-10:])
    return {"max_rel_diff_per_step": max(abs(p - q) / abs(p) for p, q in zip(a, b, strict=True)),
            "rel_diff_last10_mean": abs(tail[0] - tail[1]) / abs(tail[0]), "fp32_first_last": [a[0], a[-1]],
            "bf16_first_last": [b[0], b[-1]]}


def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    from nasforge.data import make_image_folder
    from nasforge.train import train_supernet

    root = args.out / "imagenet"
    if not (root / "train").is_dir():
        make_image_folder(root, classes=10, per_class=args.images // 10, val_per_class=10, size=(500, 375),
                          layout="imagenet", seed=0)
    result = train_supernet("ofa-mbv3-w1.0", data=f"imagenet:{root}?val=100", out=args.out / f"train-{time.time_ns()}",
                            trainer="full", epochs=2, batch_size=args.batch, progress=False, workers=args.workers,
                            precision="bf16", calib_images=200, warmup_epochs=0,
                            supernet_options={"num_classes": 10})
    return {"epochs": [{k: rec.get(k) for k in ("images_per_s", "data_wait", "loss", "val_acc_max")}
                       for rec in result.history], "workers": args.workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/nasforge-gpu"))
    parser.add_argument("--ofa-repo", type=Path, help="checkout of mit-han-lab/once-for-all (the baseline)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--curve-steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    template = create_supernet("ofa-mbv3-w1.0", dropout=0.0)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "batch": args.batch, "resolution": args.resolution}
    settings = [("fp32", False), ("fp32", True), ("bf16", True)] + ([("fp16", True)] if device.type == "cuda" else [])
    variants: dict[str, Step] = {}
    for precision, cl in settings:
        net = copy.deepcopy(template).to(device)
        variants[f"nasforge {precision} {'channels-last' if cl else 'NCHW'}"] = nasforge_step(net, precision, cl, device)
    if args.ofa_repo:
        for precision, cl in (("fp32", False), ("bf16", True)):
            variants[f"reference {precision} {'channels-last' if cl else 'NCHW'}"] = reference_step(
                args.ofa_repo, template, precision, cl, device)
    report["step"] = time_steps(variants, template, args, device)
    report["loss_curves"] = loss_curves(template, args, device)
    if not args.skip_e2e:
        report["end_to_end"] = end_to_end(args)
    (args.out / "gpu_train.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
