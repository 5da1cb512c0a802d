"""The typed settings of one quantization (:class:`QuantConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nasforge.errors import ConfigError

from ._groups import GROUP_DESCRIPTIONS
from ._targets import get_target

__all__ = ["ACTIVATION_TYPES", "CALIBRATIONS", "METHODS", "POLICIES", "TARGETS", "QuantConfig"]

METHODS = ("auto", "static", "dynamic", "qat")
CALIBRATIONS = ("minmax", "entropy", "percentile")
TARGETS = ("ort", "tensorrt")
ACTIVATION_TYPES = ("uint8", "int8")
POLICIES = ("selective", "all")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize one model.

    Attributes:
        method: ``"static"`` (post-training, activations calibrated, QDQ graph), ``"dynamic"`` (weights only,
            activations quantized at run time; for Linear/MatMul-heavy models), ``"qat"`` (fake-quant finetuning
            in PyTorch, then static) or ``"auto"`` (dynamic when MatMul/Gemm carry most MACs, else static).
        calibration: activation-range calibration of static quantization: ``"minmax"``, ``"entropy"`` or
            ``"percentile"``.
        calib_samples: how many training samples calibrate the activation ranges.
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights; ``None`` decides from the target CPU (on when an x86 CPU lacks VNNI, where
            8-bit weights can saturate the 16-bit intermediate sums of onnxruntime's u8s8 kernels).
        activation_type: ``"uint8"`` (fastest on onnxruntime's x86 kernels) or ``"int8"``.
        target: ``"ort"`` (onnxruntime) or ``"tensorrt"`` (symmetric int8 activations and weights, zero points
            0, per-channel weights, as TensorRT's explicit quantization wants; no reduce_range).
        percentile: the percentile of ``calibration="percentile"``.
        exclude_nodes: ONNX node names left in float.
        float_groups: operator groups left in float (``depthwise``, ``squeeze-excite``, ``swish``, ``stem``,
            ``residual-add``, ``conv``, ``linear``; see :data:`nasforge.quantize.GROUP_DESCRIPTIONS`).
        policy: ``"selective"`` (measure on the device which groups INT8 speeds up, keep the others in float,
            and keep the FP32 model when no variant is at least ``min_speedup`` times faster at every batch
            size asked for) or ``"all"`` (quantize every group; also what happens without a device to measure).
        min_speedup: the speed-up, at every measured batch, an INT8 variant needs to be chosen over FP32 (a
            margin above 1.0 for timing noise).
        saturation_factor: flag saturation when the INT8 model's relative error exceeds this many times the
            simulated-quantization reference's (and by more than ``saturation_margin``).
        saturation_margin: absolute slack of that comparison.

    Raises:
        ConfigError: a field out of range (one line naming it and the choices).
    """

    method: str = "auto"
    calibration: str = "minmax"
    calib_samples: int = 256
    per_channel: bool = True
    reduce_range: bool | None = None
    activation_type: str = "uint8"
    target: str = "ort"
    percentile: float = 99.999
    exclude_nodes: tuple[str, ...] = ()
    float_groups: tuple[str, ...] = ()
    policy: str = "selective"
    min_speedup: float = 1.03
    saturation_factor: float = 1.5
    saturation_margin: float = 0.01

    def __post_init__(self) -> None:
        for name, choices in (("method", METHODS), ("policy", POLICIES), ("calibration", CALIBRATIONS),
                              ("target", TARGETS), ("activation_type", ACTIVATION_TYPES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"quantization {name} {getattr(self, name)!r} is unknown; pick one of {choices}")
        if isinstance(self.calib_samples, bool) or not isinstance(self.calib_samples, int) or self.calib_samples < 1:
            raise ConfigError(f"calib_samples={self.calib_samples!r} is invalid; pass an int >= 1 (e.g. 256)")
        if self.reduce_range not in (None, True, False):
            raise ConfigError(f"reduce_range={self.reduce_range!r} is invalid; pass None (auto), True or False")
        if not (isinstance(self.percentile, (int, float)) and 90.0 <= self.percentile <= 100.0):
            raise ConfigError(f"percentile={self.percentile!r} is invalid; pass a number in [90, 100] (e.g. 99.999)")
        if not (isinstance(self.saturation_factor, (int, float)) and self.saturation_factor >= 1.0):
            raise ConfigError(f"saturation_factor={self.saturation_factor!r} is invalid; pass a number >= 1")
        if not (isinstance(self.min_speedup, (int, float)) and 0 < self.min_speedup <= 10):
            raise ConfigError(f"min_speedup={self.min_speedup!r} is invalid; pass a number in (0, 10] (e.g. 1.03)")
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))
        object.__setattr__(self, "float_groups", tuple(self.float_groups))
        unknown = [g for g in self.float_groups if g not in GROUP_DESCRIPTIONS]
        if unknown:
            raise ConfigError(f"float group {unknown[0]!r} is unknown; pick from {tuple(GROUP_DESCRIPTIONS)}")
        get_target(self.target).validate(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["exclude_nodes"] = list(self.exclude_nodes)
        out["float_groups"] = list(self.float_groups)
        return out
