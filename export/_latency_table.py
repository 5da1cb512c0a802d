"""Per-device latency tables (Once-for-All style): one measured latency per distinct segment of a space.

A supernet family that can split a subnet into segments (stem, blocks, head; :meth:`Supernet.latency_segments`)
gets a table keyed by segment: each distinct segment is exported on its own and timed on the target device. A
subnet's latency is then predicted as the sum of its segments' latencies, plus a learned linear correction for
what the sum misses (per-call overhead counted once per segment, fusion across segment borders, cache effects):

    latency_ms = a * sum_of_segments + b * n_segments + c

fitted by least squares on a few subnets measured end to end. :func:`validate_latency_table` measures fresh
random subnets end to end and reports the prediction error (MAPE, Kendall tau): the error is measured, not
assumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from nasforge.supernets import Architecture, Supernet

    from ._latency import LatencyResult, Profiler

__all__ = ["LatencyTable", "build_latency_table", "supernet_signature", "validate_latency_table"]

TABLE_KIND = "nasforge-latency-table"
TABLE_SCHEMA = 1
#: timing settings of one segment (short runs: a table holds hundreds of them)
SEGMENT_RUNS, SEGMENT_WARMUP = 100, 10

Progress = Callable[[str, int, int], None]


def supernet_signature(net: Supernet) -> str:
    """Short hash of a supernet's family and configuration: a table only fits the supernet it was built for."""
    text = json.dumps({"space": net.space.name, "config": net.config_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class LatencyTable:
    """Measured segment latencies of one supernet on one device, and the end-to-end correction.

    Attributes:
        space: the supernet's space name.
        signature: :func:`supernet_signature` of the supernet it was built for.
        device: what measured it (backend, threads, batch and the device's name if any).
        entries: segment key -> ``{"ms": median, "p90": ..., "cv": ..., "shape": [...]}``.
        correction: ``{"a", "b", "c"}`` of the linear correction, with the fit's own MAPE and sample count; empty
            before :meth:`fit_correction`.
        fingerprint: environment fingerprint of the measuring machine.
    """

    space: str
    signature: str
    device: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    correction: dict[str, float] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    _fits: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet, repr=False, compare=False)

    # -- prediction --------------------------------------------------------------------------------------------
    def segment_sum(self, net: Supernet, arch: Architecture | Mapping[str, Any]) -> tuple[float, int]:
        """``(sum of the segment latencies, number of segments)`` of ``arch``.

        Raises:
            ConfigError: the table was built for another supernet, or lacks a segment of ``arch``.
        """
        self.check_fits(net)
        total, segments = 0.0, net.latency_segments(arch)
        for key, _ in segments:
            entry = self.entries.get(key)
            if entry is None:
                raise ConfigError(f"the latency table has no entry for segment {key!r}; rebuild it with "
                                  "`nasforge latency build-table`")
            total += float(entry["ms"])
        return total, len(segments)

    def predict(self, net: Supernet, arch: Architecture | Mapping[str, Any]) -> float:
        """Predicted end-to-end latency of ``arch`` in milliseconds (corrected if a correction is fitted)."""
        total, n = self.segment_sum(net, arch)
        if not self.correction:
            return total
        c = self.correction
        return max(0.0, c["a"] * total + c["b"] * n + c["c"])

    def predict_many(self, net: Supernet, archs: Iterable[Architecture]) -> np.ndarray:
        return np.array([self.predict(net, a) for a in archs], dtype=np.float64)

    def check_fits(self, net: Supernet) -> None:
        """Raise unless the table was built for ``net``; checked once per supernet object, since predictions are a
        hot path of searches."""
        if net in self._fits:
            return
        if supernet_signature(net) != self.signature:
            raise ConfigError(f"this latency table was built for another supernet ({self.space}, signature "
                              f"{self.signature}); build one for this supernet with `nasforge latency build-table`")
        self._fits.add(net)

    def fit_correction(self, net: Supernet, archs: Sequence[Architecture], measured_ms: Sequence[float]) -> None:
        """Fit ``a, b, c`` of the correction on subnets measured end to end (needs 3 or more)."""
        if len(archs) < 3:
            raise ConfigError("the correction needs 3 or more subnets measured end to end")
        sums = [self.segment_sum(net, a) for a in archs]
        x = np.array([[s, n, 1.0] for s, n in sums], dtype=np.float64)
        y = np.asarray(measured_ms, dtype=np.float64)
        if np.ptp(x[:, 1]) == 0:  # every subnet has the same number of segments: b and c are not separable
            x = x[:, [0, 2]]
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            a, b, c = float(coef[0]), 0.0, float(coef[1])
        else:
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            a, b, c = (float(v) for v in coef)
            if not self._positive_everywhere(net, archs, (a, b, c)):
                # a noisy 3-term fit can extrapolate below zero for some subnets: drop the segment-count term
                coef, *_ = np.linalg.lstsq(x[:, [0, 2]], y, rcond=None)
                a, b, c = float(coef[0]), 0.0, float(coef[1])
        if not self._positive_everywhere(net, archs, (a, b, c)):  # last resort: proportional to the sum
            a, b, c = float(np.dot(x[:, 0], y) / max(float(np.dot(x[:, 0], x[:, 0])), 1e-12)), 0.0, 0.0
        counts = np.array([n for _, n in sums], dtype=np.float64)
        pred = np.maximum(0.0, a * x[:, 0] + b * counts + c)
        self.correction = {"a": a, "b": b, "c": c, "n": float(len(archs)),
                           "fit_mape": float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-9)))}

    def _positive_everywhere(self, net: Supernet, archs: Sequence[Architecture], coef: tuple[float, float, float],
                             probes: int = 64) -> bool:
        """Whether the correction ``coef`` predicts a positive latency for the fit subnets, the space's corners and
        ``probes`` sampled subnets."""
        space = net.space
        candidates = [*archs, space.smallest(), space.largest(), *(space.sample(i) for i in range(probes))]
        a, b, c = coef
        return all(a * s + b * n + c > 0 for s, n in (self.segment_sum(net, arch) for arch in candidates))

    # -- persistence -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": TABLE_KIND, "schema": TABLE_SCHEMA, "space": self.space, "signature": self.signature,
                "device": self.device, "created": self.created, "correction": self.correction,
                "fingerprint": self.fingerprint, "entries": self.entries}

    def save(self, path: str | Path) -> Path:
        from nasforge.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save`.

        Raises:
            ConfigError: a missing, unreadable or foreign file.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no latency table at {path}; build one with `nasforge latency build-table`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is not a readable latency table ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, dict) or data.get("kind") != TABLE_KIND:
            raise ConfigError(f"{path} is not a nasforge latency table (no kind={TABLE_KIND!r})")
        if data.get("schema") != TABLE_SCHEMA:
            raise ConfigError(f"{path} has table schema {data.get('schema')!r}; this nasforge reads {TABLE_SCHEMA}")
        try:
            entries = {str(k): dict(v) for k, v in data["entries"].items()}
            for key, entry in entries.items():
                if not math.isfinite(float(entry["ms"])) or float(entry["ms"]) < 0:
                    raise ValueError(f"entry {key!r} has latency {entry['ms']!r}")
            return cls(space=str(data["space"]), signature=str(data["signature"]), device=dict(data["device"]),
                       entries=entries, correction={k: float(v) for k, v in data.get("correction", {}).items()},
                       fingerprint=dict(data.get("fingerprint", {})), created=str(data.get("created", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path} is a damaged latency table ({type(exc).__name__}: {exc})") from None


# -- measuring --------------------------------------------------------------------------------------------------
def _measure_module(module: nn.Module, shape: tuple[int, ...], profiler: Profiler, folder: Path, name: str,
                    batch: int, options: Mapping[str, Any]) -> LatencyResult:
    """Export ``module`` (batch ``batch``) to ONNX in ``folder`` and time it with ``profiler``."""
    import torch

    from ._onnx import export_onnx

    path = folder / f"{name}.onnx"
    export_onnx(module.eval(), torch.randn(batch, *shape), path, exporter="torchscript", atol=1e-3)
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


def _distinct_samples(net: Supernet, count: int, seed: int, avoid: Iterable[Architecture] = ()) -> list[Architecture]:
    rng = random.Random(seed)
    seen = set(avoid)
    out: list[Architecture] = []
    for _ in range(count * 50):
        arch = net.space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            out.append(arch)
            if len(out) == count:
                break
    return out


def measure_subnets(net: Supernet, archs: Sequence[Architecture], profiler: Profiler, *, batch: int = 1,
                    options: Mapping[str, Any] | None = None, progress: Progress | None = None) -> list[float]:
    """Median end-to-end latency (ms) of each subnet, exported whole."""
    options = dict(options or {})
    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nasforge-lat-") as tmp:
        for i, arch in enumerate(archs):
            sub = net.extract(arch).eval()
            result = _measure_module(sub, net.input_shape(arch), profiler, Path(tmp), f"subnet{i}", batch, options)
            out.append(result.median_ms)
            if progress is not None:
                progress("subnets", i + 1, len(archs))
    return out


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
    extra_samples: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
) -> LatencyTable:
    """Measure every distinct segment of ``net``'s space with ``profiler`` and fit the end-to-end correction.

    Args:
        net: a supernet whose family implements :meth:`Supernet.latency_segments` (the MobileNetV3 family).
        profiler: where to measure (``get_profiler("ort-cpu")``, a remote agent, ...).
        device: recorded with the table (e.g. the device's name and settings).
        batch, threads, runs, warmup: the timing settings of each segment and subnet.
        calibration: subnets measured end to end to fit the correction (0: no correction, plain sum).
        extra_samples: random architectures added to the family's covering set, so that segments a family's
            covering set might miss are measured too.
        seed: seeds the random architectures.
        progress: called as ``(phase, done, total)``.

    Raises:
        ConfigError: the family has no block decomposition, or a bad setting.
    """
    from ._latency import environment_fingerprint

    for name, value, low in (("batch", batch, 1), ("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0),
                             ("calibration", calibration, 0), ("extra_samples", extra_samples, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
    if 0 < calibration < 3:
        raise ConfigError(f"calibration={calibration} is too few subnets to fit the correction; use 0 or >= 3")
    try:
        net.latency_segments(net.space.largest())
    except NotImplementedError as exc:
        raise ConfigError(f"{exc}; predict latency from MACs (`macs` latency predictor) or measure end to end") from None
    net.eval()
    options = {"runs": runs, "warmup": warmup, "threads": threads}
    table = LatencyTable(space=net.space.name, signature=supernet_signature(net),
                         device={**dict(device or {}), "batch": batch, "threads": threads, "runs": runs,
                                 "profiler": getattr(profiler, "name", type(profiler).__name__)},
                         fingerprint=environment_fingerprint(threads),
                         created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    # which architecture supplies each distinct segment
    todo: dict[str, tuple[Architecture, int, tuple[int, ...]]] = {}
    for arch in _covering(net, extra_samples, seed):
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
                done += 1
                if progress is not None:
                    progress("segments", done, len(todo))
    if calibration:
        archs = _distinct_samples(net, calibration, seed + 1)
        measured = measure_subnets(net, archs, profiler, batch=batch, options=options, progress=progress)
        table.fit_correction(net, archs, measured)
    return table


def validate_latency_table(
    table: LatencyTable,
    net: Supernet,
    profiler: Profiler,
    *,
    samples: int = 30,
    seed: int = 12345,
    runs: int | None = None,
    warmup: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``samples`` random subnets end to end and compare with the table's predictions.

    Returns:
        ``{"mape", "kendall_tau", "spearman", "max_ape", "samples", "rows": [{"arch", "measured_ms",
        "predicted_ms", "sum_ms"}]}`` (the uncorrected segment sum is reported too).

    Raises:
        ConfigError: a table for another supernet, fewer than 3 samples.
    """
    from nasforge.nas._predictors import _rank_correlations

    if samples < 3:
        raise ConfigError(f"--samples {samples} is too few to rank; use 3 or more")
    table.check_fits(net)
    net.eval()
    device = table.device
    options = {"runs": runs or int(device.get("runs", SEGMENT_RUNS)), "warmup": warmup or SEGMENT_WARMUP,
               "threads": int(device.get("threads", 1))}
    archs = _distinct_samples(net, samples, seed)
    measured = np.array(measure_subnets(net, archs, profiler, batch=int(device.get("batch", 1)), options=options,
                                        progress=progress))
    predicted = table.predict_many(net, archs)
    sums = np.array([table.segment_sum(net, a)[0] for a in archs])
    ape = np.abs(predicted - measured) / np.maximum(measured, 1e-9)
    tau, rho = _rank_correlations(predicted, measured)
    return {
        "samples": len(archs), "mape": float(ape.mean()), "max_ape": float(ape.max()), "kendall_tau": tau,
        "spearman": rho, "sum_mape": float((np.abs(sums - measured) / np.maximum(measured, 1e-9)).mean()),
        "rows": [{"arch": a.to_dict(), "measured_ms": float(m), "predicted_ms": float(p), "sum_ms": float(s)}
                 for a, m, p, s in zip(archs, measured, predicted, sums, strict=True)],
    }
