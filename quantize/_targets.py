"""Quantization targets, the ``--target`` names: one base (:class:`QuantTarget`) and one registry.

A target says what the INT8 file must look like for the runtime that will run it and how that file is checked:
``ort`` (onnxruntime's CPU kernels: asymmetric uint8 activations, ``reduce_range`` decided from the CPU) and
``tensorrt`` (TensorRT's explicit quantization: symmetric int8 Q/DQ, zero points 0, float biases, full 8-bit
weights; the file is checked for TensorRT in Python, :mod:`nasforge.quantize._trt`, with no TensorRT needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nasforge.errors import ConfigError
from nasforge.registry import Registry

from ._capabilities import RangeDecision

if TYPE_CHECKING:
    from ._config import QuantConfig

__all__ = ["QuantTarget", "get_target", "list_targets", "register_target"]


class QuantTarget:
    """One quantization target. Subclasses set the class attributes and override what differs.

    Attributes:
        name: the ``--target`` name.
        description: one line for docs.
        symmetric: int8 activations and weights with zero points 0 and float biases (else onnxruntime's default
            asymmetric scheme with the configured ``activation_type``).
        dynamic: the target runs dynamically quantized files (``auto`` may pick ``dynamic`` for it).
        onnxruntime_kernels: the target runs onnxruntime's integer kernels, so the checks compare them with the
            simulated quantization (saturation); else only the simulated quantization is checked.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    symmetric: ClassVar[bool] = False
    dynamic: ClassVar[bool] = True
    onnxruntime_kernels: ClassVar[bool] = True

    def validate(self, config: QuantConfig) -> None:
        """Refuse (:class:`ConfigError`, one line) settings the target cannot run."""

    def fixed_range(self) -> RangeDecision | None:
        """The ``reduce_range`` the target always uses (None: the user's choice, else the target CPU's)."""
        return None

    def report(self, int8: Path) -> dict[str, Any] | None:
        """What the report adds about the INT8 file for this target (None: nothing)."""
        return None


_TARGETS: Registry[QuantTarget] = Registry("quantization target")


def register_target(target: QuantTarget) -> QuantTarget:
    """Register ``target`` under ``target.name`` (a taken name is a :class:`ConfigError`)."""
    return _TARGETS.add(target.name, target)


def list_targets() -> list[str]:
    """Names of the registered targets, sorted."""
    return _TARGETS.names()


def get_target(name: str) -> QuantTarget:
    """The target called ``name`` (:class:`ConfigError` listing the known ones otherwise)."""
    return _TARGETS.get(name)


class _Ort(QuantTarget):
    name = "ort"
    description = "onnxruntime (CPU kernels; reduce_range from the CPU's flags)"


class _TensorRT(QuantTarget):
    name = "tensorrt"
    description = "TensorRT explicit quantization (symmetric int8 Q/DQ, zero points 0)"
    symmetric = True
    dynamic = False
    onnxruntime_kernels = False

    def validate(self, config: QuantConfig) -> None:
        if config.method == "dynamic":
            raise ConfigError("TensorRT has no dynamic quantization; use method 'static' (or 'qat') with "
                              "target 'tensorrt'")
        if config.reduce_range:
            raise ConfigError("reduce_range is an onnxruntime x86 workaround; TensorRT wants full 8-bit "
                              "weights: drop reduce_range for target 'tensorrt'")

    def fixed_range(self) -> RangeDecision | None:
        return RangeDecision(False, "target tensorrt: full 8-bit symmetric weights")

    def report(self, int8: Path) -> dict[str, Any] | None:
        from ._trt import tensorrt_plans, tensorrt_qdq_problems

        return {"problems": tensorrt_qdq_problems(int8), "plans": tensorrt_plans(int8)}


for _target in (_Ort(), _TensorRT()):
    register_target(_target)
