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
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import ConfigError

if TYPE_CHECKING:

    from nasforge.supernets import Architecture, Supernet


__all__ = ["MAX_HOLDOUT_MAPE", "MIN_HOLDOUT_TAU", "LatencyTable", "error_stats", "fingerprint_problems",
           "supernet_signature"]

TABLE_KIND = "nasforge-latency-table"
TABLE_SCHEMA = 1
#: timing settings of one segment (short runs: a table holds hundreds of them)
SEGMENT_RUNS, SEGMENT_WARMUP = 100, 10

#: a table is trusted to rank subnets only if its held-out prediction error is at most this MAPE ...
MAX_HOLDOUT_MAPE = 0.10
#: ... and it orders the held-out subnets with at least this Kendall tau
MIN_HOLDOUT_TAU = 0.8

Progress = Callable[[str, int, int], None]


def error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """``{"n", "mape", "max_ape", "within_10", "kendall_tau", "spearman"}`` of predictions against measurements
    (``within_10``: the share of predictions within 10% of the measurement)."""
    from nasforge.nas import rank_correlations

    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    ape = np.abs(predicted - measured) / np.maximum(measured, 1e-9)
    tau, rho = rank_correlations(predicted, measured)
    return {"n": float(len(measured)), "mape": float(ape.mean()), "max_ape": float(ape.max()),
            "within_10": float((ape <= 0.10).mean()), "kendall_tau": tau, "spearman": rho}


def fingerprint_problems(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """Why latencies measured on the machine ``recorded`` do not describe the machine ``here`` (both
    :func:`~nasforge.export.environment_fingerprint`): another CPU model, other kernel-relevant CPU features,
    another onnxruntime. Empty when they match (or ``recorded`` says nothing)."""
    if not recorded:
        return []
    problems = []
    cpu_then, cpu_now = recorded.get("cpu") or {}, here.get("cpu") or {}
    if cpu_then.get("model") and cpu_then.get("model") != cpu_now.get("model"):
        problems.append(f"it was measured on another CPU ({cpu_then.get('model')}; this one is {cpu_now.get('model')})")
    elif set(cpu_then.get("flags") or ()) != set(cpu_now.get("flags") or ()):
        gone = sorted(set(cpu_then.get("flags") or ()) - set(cpu_now.get("flags") or ()))
        new = sorted(set(cpu_now.get("flags") or ()) - set(cpu_then.get("flags") or ()))
        problems.append(f"it was measured with other CPU features (only there: {' '.join(gone) or 'none'}; only "
                        f"here: {' '.join(new) or 'none'})")
    ort_then = (recorded.get("versions") or {}).get("onnxruntime")
    ort_now = (here.get("versions") or {}).get("onnxruntime")
    if ort_then and ort_now and ort_then != ort_now:
        problems.append(f"it was measured with onnxruntime {ort_then} (here {ort_now})")
    return problems


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
        fingerprint: environment fingerprint of the measuring device (the board's, through a remote agent).
        holdout: :func:`error_stats` of the table's predictions on subnets measured end to end that played no part
            in building it; empty for a table built without that check.
    """

    space: str
    signature: str
    device: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    correction: dict[str, float] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    holdout: dict[str, float] = field(default_factory=dict)
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

    # -- trust -----------------------------------------------------------------------------------------------------
    def trust_problems(self, here: Mapping[str, Any] | None = None, *, max_mape: float = MAX_HOLDOUT_MAPE,
                       min_tau: float = MIN_HOLDOUT_TAU) -> list[str]:
        """Why the table should not rank subnets: no held-out check, a held-out error above ``max_mape`` or a
        Kendall tau below ``min_tau``, and (given ``here``, this machine's fingerprint, for a table of this
        machine's CPU) a table measured on another machine. Empty when it can be trusted."""
        problems = []
        h = self.holdout
        if not h:
            problems.append("it records no held-out error (built with --holdout 0 or by an older nasforge)")
        else:
            if not h["mape"] <= max_mape:
                problems.append(f"its held-out error is MAPE {h['mape']:.1%} on {int(h['n'])} subnets (limit "
                                f"{max_mape:.0%})")
            if not h["kendall_tau"] >= min_tau:
                problems.append(f"it orders held-out subnets with Kendall tau {h['kendall_tau']:.2f} (limit {min_tau})")
        if here is not None:
            problems += fingerprint_problems(self.fingerprint, here)
        return problems

    def require_trust(self, here: Mapping[str, Any] | None = None, *, accept: bool = False,
                      warn: Callable[[str], None] | None = None) -> None:
        """Raise unless :meth:`trust_problems` is empty; with ``accept``, ``warn`` about them instead.

        Raises:
            ConfigError: one line naming the problems and what to do.
        """
        problems = self.trust_problems(here)
        if not problems:
            return
        if accept:
            if warn is not None:
                warn(f"warning: using a latency table that may not rank subnets, as asked: {'; '.join(problems)}")
            return
        raise ConfigError(f"this latency table cannot be trusted to rank subnets: {'; '.join(problems)}; measure "
                          "latency instead (drop --latency-table), rebuild the table on the target with `nasforge "
                          "latency build-table`, or pass --accept-latency-error to use it anyway")

    # -- persistence -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": TABLE_KIND, "schema": TABLE_SCHEMA, "space": self.space, "signature": self.signature,
                "device": self.device, "created": self.created, "correction": self.correction,
                "fingerprint": self.fingerprint, "holdout": self.holdout, "entries": self.entries}

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
                       fingerprint=dict(data.get("fingerprint", {})), created=str(data.get("created", "")),
                       holdout={k: float(v) for k, v in data.get("holdout", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path} is a damaged latency table ({type(exc).__name__}: {exc})") from None
