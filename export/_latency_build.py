"""Building and checking per-device latency tables: every distinct segment of a supernet timed on the target,
an end-to-end correction fitted on a few whole subnets, and the table's error measured on held-out subnets that
played no part in the fit (recorded in the table, so a search can refuse a table that cannot rank).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import ConfigError

from ._latency_table import (
    SEGMENT_RUNS,
    SEGMENT_WARMUP,
    LatencyTable,
    Progress,
    error_stats,
    supernet_signature,
)

if TYPE_CHECKING:
    from torch import nn

    from nasforge.supernets import Architecture, Supernet

    from ._latency import LatencyResult, Profiler

__all__ = ["build_latency_table", "measure_rounds", "measure_subnets", "repeatability", "validate_latency_table"]


def _export_module(module: nn.Module, shape: tuple[int, ...], folder: Path, name: str, batch: int) -> Path:
    """Export ``module`` (batch ``batch``) to ``folder/name.onnx``."""
    import torch

    from ._onnx import export_onnx

    path = folder / f"{name}.onnx"
    export_onnx(module.eval(), torch.randn(batch, *shape), path, exporter="torchscript", atol=1e-3)
    return path


def _measure_module(module: nn.Module, shape: tuple[int, ...], profiler: Profiler, folder: Path, name: str,
                    batch: int, options: Mapping[str, Any]) -> LatencyResult:
    """Export ``module`` (batch ``batch``) to ONNX in ``folder`` and time it with ``profiler``."""
    path = _export_module(module, shape, folder, name, batch)
    try:
        return profiler.measure(path, batch=batch, **options)
    finally:
        path.unlink(missing_ok=True)


def _segment_key_file(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _covering(net: Supernet, extra: int, seed: int) -> list[Architecture]:
    archs = list(net.covering_architectures())
    rng = random.Random(seed)
    archs.extend(net.space.sample(rng) for _ in range(extra))
    return archs


def _distinct_samples(net: Supernet, count: int, seed: int, avoid: Iterable[Architecture] = (),
                      resolution: int | None = None) -> list[Architecture]:
    """``count`` distinct random architectures (all at ``resolution`` when given)."""
    rng = random.Random(seed)
    seen = set(avoid)
    out: list[Architecture] = []
    for _ in range(count * 50):
        arch = net.space.sample(rng)
        if resolution is not None:
            arch = net.space.canonical({**arch.to_dict(), "r": resolution})
        if arch not in seen:
            seen.add(arch)
            out.append(arch)
            if len(out) == count:
                break
    return out


def measure_subnets(net: Supernet, archs: Sequence[Architecture], profiler: Profiler, *, batch: int = 1,
                    options: Mapping[str, Any] | None = None, progress: Progress | None = None,
                    phase: str = "subnets", repeats: int = 1) -> list[float]:
    """End-to-end latency (ms) of each subnet, exported whole: the median of ``repeats`` measurements taken in
    interleaved rounds (every subnet once, then again), so that the machine's drift hits all subnets alike."""
    return [float(v) for v in np.median(measure_rounds(net, archs, profiler, batch=batch, options=options,
                                                       progress=progress, phase=phase, repeats=repeats), axis=0)]


def measure_rounds(net: Supernet, archs: Sequence[Architecture], profiler: Profiler, *, batch: int = 1,
                   options: Mapping[str, Any] | None = None, progress: Progress | None = None,
                   phase: str = "subnets", repeats: int = 1) -> np.ndarray:
    """``(repeats, len(archs))`` median latencies (ms): each subnet exported once, then timed in ``repeats``
    interleaved rounds."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats={repeats!r} must be an integer >= 1")
    options = dict(options or {})
    out = np.zeros((repeats, len(archs)))
    with tempfile.TemporaryDirectory(prefix="nasforge-lat-") as tmp:
        paths = [_export_module(net.extract(arch).eval(), net.input_shape(arch), Path(tmp), f"subnet{i}", batch)
                 for i, arch in enumerate(archs)]
        if getattr(profiler, "caches", False):  # every round is a new measurement, not the agent's cached one
            options["fresh"] = True
        for r in range(repeats):
            for i, path in enumerate(paths):
                out[r, i] = profiler.measure(path, batch=batch, **options).median_ms
                if progress is not None:
                    progress(phase, r * len(paths) + i + 1, repeats * len(paths))
    return out


def repeatability(rounds: np.ndarray) -> dict[str, float]:
    """How well a second measurement session reproduces the first: :func:`error_stats` of round 2 against round
    1 (``{}`` with one round): the floor under any predictor's error measured against one session."""
    if len(rounds) < 2:
        return {}
    return error_stats(rounds[1], rounds[0])


def build_latency_table(
    net: Supernet,
    profiler: Profiler,
    *,
    device: Mapping[str, Any] | None = None,
    batch: int = 1,
    threads: int = 1,
    runs: int = SEGMENT_RUNS,
    warmup: int = SEGMENT_WARMUP,
    calibration: int = 20,
    holdout: int = 10,
    repeats: int = 2,
    extra_samples: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
) -> LatencyTable:
    """Measure every distinct segment of ``net``'s space with ``profiler``, fit the end-to-end correction and
    measure the table's error on held-out subnets (:attr:`LatencyTable.holdout`).

    Args:
        net: a supernet whose family implements :meth:`Supernet.latency_segments` (the MobileNetV3 family).
        profiler: where to measure (``get_profiler("ort-cpu")``, a remote agent, ...).
        device: recorded with the table (e.g. the device's name and settings).
        batch, threads, runs, warmup: the timing settings of each segment and subnet.
        calibration: subnets measured end to end to fit the correction (0: no correction, plain sum).
        holdout: other subnets measured end to end after the fit, whose prediction error (MAPE, share within
            10%, Kendall tau) is recorded with the table; a search refuses a table whose held-out error is above
            :data:`MAX_HOLDOUT_MAPE` or whose tau is below :data:`MIN_HOLDOUT_TAU` (0: no check; 3 or more).
        repeats: interleaved measurement rounds of each calibration and held-out subnet (their median counts):
            at millisecond latencies two sessions on one machine differ by a few percent.
        extra_samples: random architectures added to the family's covering set, so that segments a family's
            covering set might miss are measured too.
        seed: seeds the random architectures.
        progress: called as ``(phase, done, total)``.

    Raises:
        ConfigError: the family has no block decomposition, or a bad setting.
    """
    from ._latency import environment_fingerprint

    _check_table_args(net, batch=batch, threads=threads, runs=runs, warmup=warmup, calibration=calibration,
                      holdout=holdout, extra_samples=extra_samples)
    net.eval()
    options = {"runs": runs, "warmup": warmup, "threads": threads}
    table = LatencyTable(space=net.space.name, signature=supernet_signature(net),
                         device={**dict(device or {}), "batch": batch, "threads": threads, "runs": runs,
                                 "profiler": getattr(profiler, "name", type(profiler).__name__)},
                         created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _measure_segments(table, net, _covering(net, extra_samples, seed), profiler, batch, options, progress)
    archs = _distinct_samples(net, calibration + holdout, seed + 1)
    _fit_and_hold_out(table, net, archs[:calibration], archs[calibration:], profiler,
                      {"batch": batch, "options": options, "progress": progress, "repeats": repeats})
    table.fingerprint = table.fingerprint or environment_fingerprint(threads)
    return table


def _fit_and_hold_out(table: LatencyTable, net: Supernet, fit: Sequence[Architecture], held: Sequence[Architecture],
                      profiler: Profiler, settings: dict[str, Any]) -> None:
    """Fit the table's end-to-end correction on ``fit`` and record its error on ``held`` (either may be empty);
    ``settings`` are :func:`measure_subnets`'s keyword arguments."""
    if fit:
        table.fit_correction(net, fit, measure_subnets(net, fit, profiler, **settings))
    if held:
        measured = measure_subnets(net, held, profiler, phase="held-out", **settings)
        table.holdout = error_stats(table.predict_many(net, held), np.asarray(measured))


def _check_table_args(net: Supernet, **settings: int) -> None:
    """Refuse settings out of range, too few subnets to fit or to rank, or a family without segments.

    Raises:
        ConfigError: the message names the setting (or the family's limitation) and the fix.
    """
    lows = {"batch": 1, "threads": 1, "runs": 1, "warmup": 0, "calibration": 0, "holdout": 0, "extra_samples": 0}
    for name, low in lows.items():
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
    calibration, holdout = settings["calibration"], settings["holdout"]
    if 0 < calibration < 3:
        raise ConfigError(f"calibration={calibration} is too few subnets to fit the correction; use 0 or >= 3")
    if 0 < holdout < 3:
        raise ConfigError(f"holdout={holdout} is too few subnets to measure a ranking error; use 0 or >= 3")
    try:
        net.latency_segments(net.space.largest())
    except NotImplementedError as exc:
        raise ConfigError(f"{exc}; predict latency from MACs (`macs` latency predictor) or measure end to end") from None


def _measure_segments(table: LatencyTable, net: Supernet, covering: Iterable[Architecture], profiler: Profiler,
                      batch: int, options: Mapping[str, Any], progress: Progress | None) -> None:
    """Time every distinct segment of the ``covering`` architectures once, into ``table.entries``."""
    todo: dict[str, tuple[Architecture, int, tuple[int, ...]]] = {}  # which architecture supplies each segment
    for arch in covering:
        for index, (key, shape) in enumerate(net.latency_segments(arch)):
            todo.setdefault(key, (arch, index, tuple(shape)))
    by_arch: dict[Architecture, list[tuple[str, int, tuple[int, ...]]]] = {}
    for key, (arch, index, shape) in todo.items():
        by_arch.setdefault(arch, []).append((key, index, shape))
    done = 0
    with tempfile.TemporaryDirectory(prefix="nasforge-table-") as tmp:
        for arch, wanted in by_arch.items():
            modules = net.segment_modules(arch)
            for key, index, shape in wanted:
                result = _measure_module(modules[index], shape, profiler, Path(tmp), _segment_key_file(key), batch,
                                         options)
                table.entries[key] = {"ms": result.median_ms, "p90": result.p90_ms, "cv": result.cv,
                                      "shape": list(shape)}
                table.fingerprint = table.fingerprint or dict(result.fingerprint or {})  # the measuring device's
                done += 1
                if progress is not None:
                    progress("segments", done, len(todo))


def validate_latency_table(
    table: LatencyTable,
    net: Supernet,
    profiler: Profiler,
    *,
    samples: int = 30,
    seed: int = 12345,
    runs: int | None = None,
    warmup: int | None = None,
    resolution: int | None = None,
    repeats: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``samples`` random subnets end to end (all at ``resolution`` when given: ranking subnets of one
    resolution is the harder test) and compare with the table's predictions. Each subnet is measured in
    ``repeats`` interleaved rounds; the median counts, and the agreement of the first two rounds is reported as
    ``repeatability``: no predictor can be judged more precisely than the measurement repeats.

    Returns:
        ``{"samples", "mape", "max_ape", "within_10", "kendall_tau", "spearman", "sum_mape", "repeats",
        "repeatability", "rows": [{"arch", "measured_ms", "predicted_ms", "sum_ms"}]}`` (``sum_mape``: the
        uncorrected segment sum's error; ``repeatability``: :func:`repeatability` of the rounds).

    Raises:
        ConfigError: a table for another supernet, fewer than 3 samples.
    """
    if samples < 3:
        raise ConfigError(f"--samples {samples} is too few to rank; use 3 or more")
    table.check_fits(net)
    net.eval()
    device = table.device
    options = {"runs": runs or int(device.get("runs", SEGMENT_RUNS)), "warmup": warmup or SEGMENT_WARMUP,
               "threads": int(device.get("threads", 1))}
    if resolution is not None and ("r" not in net.space.names or resolution not in net.space.dim("r").choices):
        raise ConfigError(f"resolution {resolution} is not one of the space's resolutions")
    archs = _distinct_samples(net, samples, seed, resolution=resolution)
    rounds = measure_rounds(net, archs, profiler, batch=int(device.get("batch", 1)), options=options,
                            progress=progress, repeats=repeats)
    measured = np.median(rounds, axis=0)
    predicted = table.predict_many(net, archs)
    sums = np.array([table.segment_sum(net, a)[0] for a in archs])
    stats = error_stats(predicted, measured)
    return {
        "samples": len(archs), **{k: v for k, v in stats.items() if k != "n"},
        "sum_mape": error_stats(sums, measured)["mape"], "repeats": repeats, "repeatability": repeatability(rounds),
        "rows": [{"arch": a.to_dict(), "measured_ms": float(m), "predicted_ms": float(p), "sum_ms": float(s)}
                 for a, m, p, s in zip(archs, measured, predicted, sums, strict=True)],
    }
