"""Benchmark: streamed image loading at ImageNet scale on this machine (issue 16).

1. Loader throughput: images/s of the training stream (OFA's augmentation: random-resized crop to 224, flip,
   colour jitter, normalisation) over a generated ImageNet-layout folder of JPEGs (about 500x375, ImageNet's
   typical size), batch 64, with 1 and 2 DataLoader workers (and 0: decoding in the training process), next to
   the raw decode rate of the same files (Pillow full decode) in the same process.
2. Data wait in training: a short `full`-trainer run of ``ofa-mbv3-w1.0`` at 224 px (one subnet, the largest)
   on the same folder with 1 and 2 workers: ``images_per_s`` and ``data_wait`` from ``train_history.json``.
3. Peak memory of a training process (itself plus its loader workers, ``ru_maxrss``) over one epoch of a small
   model on folders of N and 10N small JPEGs: it must not grow with N.

    python benchmarks/loader.py --out /tmp/loader [--images 512] [--memory-n 2000]

Results: ``benchmarks/results/loader.json`` (and the printed table).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "loader.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_folder(root: Path, images: int, size: tuple[int, int], classes: int = 10) -> Path:
    from nasforge.data import make_image_folder

    if not (root / "train").is_dir():
        per = max(1, images // classes)
        make_image_folder(root, classes=classes, per_class=per, val_per_class=max(1, per // 10), size=size,
                          layout="imagenet", seed=0)
    return root


def raw_decode_rate(root: Path, limit: int = 200) -> float:
    from PIL import Image

    files = sorted((root / "train").rglob("*.jpg"))[:limit]
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB").load()
    return len(files) / (time.perf_counter() - t0)


def loader_rate(root: Path, workers: int, batches: int = 8, batch: int = 64, resolution: int = 224) -> float:
    """Images/s of the training stream after one warm-up batch (worker start-up excluded)."""
    from nasforge.data import EpochPlan, LoaderOptions, load_data

    data = load_data(f"imagenet:{root}?val=10", image_size=resolution, loading=LoaderOptions(workers=workers))
    plan = EpochPlan(len(data.train), batch, seed=0, resolution_of=lambda b: resolution)
    stream = data.train.epoch_stream(plan)
    next(stream)
    t0, n = time.perf_counter(), 0
    for k, (_, x, _) in enumerate(stream):
        n += len(x)
        if k + 1 >= batches:
            break
    return n / (time.perf_counter() - t0)


def training_wait(root: Path, workers: int, out: Path) -> dict[str, Any]:
    """One epoch of the largest ofa-mbv3-w1.0 subnet (trainer `full`) at 224 px, batch 32."""
    from nasforge.train import train_supernet

    result = train_supernet("ofa-mbv3-w1.0", data=f"imagenet:{root}?val=10", out=out, trainer="full", epochs=1,
                            batch_size=32, progress=False, workers=workers, calib_images=10, eval_every=0,
                            warmup_epochs=0, supernet_options={"num_classes": 10})
    rec = result.history[-1]
    return {"images_per_s": rec["images_per_s"], "data_wait": rec["data_wait"]}


def memory_child(root: str, out: str) -> None:
    """Train a small model for one epoch over ``root``; print peak RSS of this process and of its workers (MiB)."""
    from nasforge.train import train_supernet

    train_supernet("mbv3-small", data=f"imagenet:{root}?val=20", out=out, trainer="full", epochs=1, batch_size=64,
                   image_size=32, progress=False, workers=2, calib_images=20, eval_every=0)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's size at fork
    own = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:")) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(own, 1), "peak_worker_rss_mib": round(kids, 1)}))


def peak_memory(root: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--memory-child", str(root), str(out)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_report(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    out = {}
    for n in (args.memory_n, 10 * args.memory_n):
        root = make_folder(args.out / f"small-{n}", n, (64, 48), classes=20)
        out[n] = peak_memory(root, args.out / f"mem-{n}-{time.time_ns()}")
        print(f"memory, {n} images: {out[n]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/nasforge-loader-bench"))
    parser.add_argument("--images", type=int, default=512, help="JPEGs of about 500x375 for throughput")
    parser.add_argument("--memory-n", type=int, default=2000, help="N of the N vs 10N memory check")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--only-memory", action="store_true", help="only the N vs 10N memory check")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    from nasforge.data._augment import decoder_name

    if args.only_memory:
        print(json.dumps(memory_report(args)))
        return
    big = make_folder(args.out / f"imagenet-{args.images}", args.images, (500, 375))
    report: dict[str, Any] = {"cpu": cpu_name(), "cores": len(__import__("os").sched_getaffinity(0)),
                              "decoder": decoder_name(), "images": args.images,
                              "raw_decode_images_per_s": round(raw_decode_rate(big), 1), "loader": {}, "train": {}}
    for workers in (0, 1, 2):
        report["loader"][workers] = round(loader_rate(big, workers), 1)
        print(f"loader, {workers} worker(s): {report['loader'][workers]} img/s", flush=True)
    for workers in (1, 2):
        report["train"][workers] = training_wait(big, workers, args.out / f"train-w{workers}-{time.time_ns()}")
        print(f"training, {workers} worker(s): {report['train'][workers]}", flush=True)
    report["memory"] = memory_report(args)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
