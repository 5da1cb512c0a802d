"""Per-layer latency tables: what one conv or linear layer costs on a device at given channel counts.

Latency-aware pruning (:mod:`._latency_aware`) asks "how much faster does this layer run with 4 fewer output
channels?" many times; :class:`LayerLatencyTable` answers from measurements of the isolated layer, taken once per
(layer shape, in-channels, out-channels) and remembered (in memory and, with ``path``, in a JSON file that a
later run on the same device reuses). The measuring itself is the caller's: ``prune`` never times anything; the
CLI passes :func:`nasforge.export.layer_latency` for a device.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.io import atomic_write_json

__all__ = ["LayerMeasure", "LayerShape", "LayerLatencyTable", "LAYER_TABLE_FORMAT"]

LayerMeasure = Callable[[nn.Module, tuple[int, ...]], float]
"""``f(layer, input_shape) -> ms``: the latency of one layer for inputs of ``input_shape`` (no batch dim)."""

LAYER_TABLE_FORMAT = "nasforge-layer-latency/1"


@dataclass(frozen=True)
class LayerShape:
    """Everything about a conv/linear layer except its channel counts: what its latency depends on besides them.

    Attributes:
        kind: ``"conv1d"``, ``"conv2d"`` or ``"linear"``.
        kernel, stride, padding, dilation: the conv's geometry (empty for linear).
        depthwise: one filter per channel (in = out = groups).
        spatial: the input's size without batch and channels (H, W for conv2d; leading token dims for linear).
        positions: output positions per sample (H_out * W_out; tokens for linear), for MACs.
    """

    kind: str
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    depthwise: bool
    spatial: tuple[int, ...]
    positions: int

    @classmethod
    def of(cls, layer: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> LayerShape:
        """The shape of ``layer`` seen with one sample's input/output shapes (no batch dim)."""
        if isinstance(layer, nn.Linear):
            return cls("linear", (), (), (), (), False, tuple(input_shape[:-1]), math.prod(output_shape[:-1]))
        assert isinstance(layer, (nn.Conv1d, nn.Conv2d)) and isinstance(layer.padding, tuple)
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
        return cls(f"conv{len(layer.kernel_size)}d", tuple(layer.kernel_size), tuple(layer.stride),
                   tuple(int(p) for p in layer.padding), tuple(layer.dilation), depthwise,
                   tuple(input_shape[1:]), math.prod(output_shape[1:]))

    def key(self, cin: int, cout: int) -> str:
        """A stable text key for one table entry."""
        geometry = "x".join(map(str, self.kernel)) + f"s{self.stride}p{self.padding}d{self.dilation}"
        dw = "dw" if self.depthwise else ""
        return f"{self.kind}{dw}|{geometry}|{self.spatial}|{cin}->{cout}".replace(" ", "")

    def macs(self, cin: int, cout: int) -> int:
        """Multiply-accumulates of one sample (as :func:`nasforge.prune.model_macs` counts them)."""
        per_output = 1 if self.depthwise else cin
        return cout * self.positions * per_output * math.prod(self.kernel or (1,))

    def module(self, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
        """A stand-alone layer of this shape (with bias: a following BatchNorm folds into it) and its input shape."""
        if self.kind == "linear":
            return nn.Linear(cin, cout), (*self.spatial, cin)
        conv = nn.Conv1d if self.kind == "conv1d" else nn.Conv2d
        groups = cin if self.depthwise else 1
        layer = conv(cin, cout if not self.depthwise else cin, self.kernel, self.stride, self.padding,
                     self.dilation, groups=groups)
        return layer, (cin, *self.spatial)


class LayerLatencyTable:
    """Measured latency of isolated layers, measured on first use and remembered.

    Args:
        measure: ``f(layer, input_shape) -> ms`` on the device (e.g. :func:`nasforge.export.layer_latency`).
        path: a JSON file to read entries from and write new ones to (atomically); entries from another device
            name are refused.
        device: the device's name, recorded in the file.
    """

    def __init__(self, measure: LayerMeasure, *, path: str | Path | None = None, device: str | None = None) -> None:
        self.measure = measure
        self.device = device or str(getattr(measure, "device_name", "custom"))
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, float] = {}
        self.measured = 0
        self.seconds = 0.0
        if self.path is not None and self.path.is_file():
            self.entries = self._read(self.path)

    def _read(self, path: Path) -> dict[str, float]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"layer latency table {path} is unreadable ({type(exc).__name__}); delete it to "
                              "measure again") from None
        if not isinstance(data, dict) or data.get("format") != LAYER_TABLE_FORMAT:
            raise ConfigError(f"{path} is not a nasforge layer latency table (format {LAYER_TABLE_FORMAT})")
        if data.get("device") != self.device:
            raise ConfigError(f"layer latency table {path} was measured on {data.get('device')!r}, not "
                              f"{self.device!r}; use another file or delete it")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(isinstance(v, (int, float)) for v in entries.values()):
            raise ConfigError(f"layer latency table {path} is damaged: its entries are not key -> ms")
        return {str(k): float(v) for k, v in entries.items()}

    def latency(self, shape: LayerShape, cin: int, cout: int) -> float:
        """ms of a layer of ``shape`` with ``cin`` -> ``cout`` channels (measured now if not yet known)."""
        key = shape.key(cin, cout)
        if key not in self.entries:
            layer, input_shape = shape.module(cin, cout)
            start = time.perf_counter()
            with torch.no_grad():
                self.entries[key] = float(self.measure(layer.eval(), input_shape))
            self.seconds += time.perf_counter() - start
            self.measured += 1
        return self.entries[key]

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the table (to ``path`` or the table's own file); None when there is nowhere to write."""
        target = Path(path) if path is not None else self.path
        if target is None:
            return None
        atomic_write_json(target, {"format": LAYER_TABLE_FORMAT, "device": self.device, "entries": self.entries})
        return target

    def summary(self) -> dict[str, Any]:
        """Counts for the report: entries known, measured in this run, seconds spent measuring."""
        return {"device": self.device, "entries": len(self.entries), "measured": self.measured,
                "measure_seconds": round(self.seconds, 2)}
