"""Quantization methods, the ``--method`` names: one base (:class:`QuantMethod`) and one registry.

``static`` and ``dynamic`` write the INT8 file with onnxruntime's quantizer (:mod:`nasforge.quantize._ort`);
``auto`` hands the model to one of them; ``qat`` finetunes the PyTorch model with fake quantization first
(:mod:`nasforge.quantize._qat`), then quantizes the finetuned model statically. :func:`nasforge.quantize.quantize`
and :func:`nasforge.quantize.quantize_onnx` dispatch through :func:`get_method`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nasforge.errors import ConfigError
from nasforge.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from ._config import QuantConfig

__all__ = ["QuantJob", "QuantMethod", "get_method", "list_methods", "register_method"]


@dataclass(frozen=True)
class QuantJob:
    """What a method may need beyond the ONNX file: the inputs of one :func:`nasforge.quantize.quantize` call.

    Attributes:
        src, dst: the FP32 ONNX file and the INT8 file to write.
        config: the settings; ``reduce_range`` as decided for the target.
        input_dims: the model input's dims (``None``/names for dynamic ones).
        data: the task's data (``DataSplits``) or None.
        torch_model: the PyTorch model behind ``src``, or None.
        options: keyword arguments of the method's own step (QAT: :func:`nasforge.quantize.qat_finetune`).
        log: progress lines.
    """

    src: Path
    dst: Path
    config: QuantConfig
    reduce_range: bool
    input_dims: Sequence[Any] = ()
    data: Any = None
    torch_model: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = lambda _msg: None


class QuantMethod:
    """One quantization method. Subclasses set the class attributes and override what differs.

    Attributes:
        name: the ``--method`` name.
        description: one line for docs.
        needs_data: :func:`nasforge.quantize.quantize` needs the task's data (calibration, finetuning).
        calibrated: activation ranges are calibrated on samples (``calib_x`` must not be empty).
        quant_format: the ONNX format written: ``"QDQ"`` (Q/DQ nodes) or ``"QOperator"`` (integer ops).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    calibrated: ClassVar[bool] = False
    quant_format: ClassVar[str] = "QDQ"

    def check(self, data: Any, torch_model: Any) -> None:
        """Refuse (:class:`ConfigError`, one line) inputs this method cannot work with, before any work."""
        if self.needs_data and data is None:
            raise ConfigError(f"--method {self.name} needs calibration data; pass --data SPEC (the task's dataset)")

    def resolve(self, config: QuantConfig, model: Any) -> QuantMethod:
        """The method that writes the INT8 file of ``model`` (an ONNX ModelProto): ``self`` unless it delegates."""
        return self

    def fp32_source(self, job: QuantJob) -> tuple[Path, dict[str, Any] | None]:
        """The FP32 ONNX file to quantize, and a record for the report (None: nothing to record)."""
        return job.src, None

    def write(self, pre: Path, staged: Path, config: QuantConfig, *, reduce_range: bool,
              calib_x: np.ndarray | None, input_name: str, fixed_batch: int | None) -> dict[str, Any]:
        """Write the INT8 file ``staged`` from the preprocessed FP32 file ``pre``; the settings it adds.

        Raises:
            ConfigError: this method only delegates (:meth:`resolve` it first).
        """
        raise ConfigError(f"quantization method {self.name!r} writes no file itself; resolve it first")


_METHODS: Registry[QuantMethod] = Registry("quantization method")


def register_method(method: QuantMethod) -> QuantMethod:
    """Register ``method`` under ``method.name`` (a taken name is a :class:`ConfigError`)."""
    return _METHODS.add(method.name, method)


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return _METHODS.names()


def get_method(name: str) -> QuantMethod:
    """The method called ``name`` (:class:`ConfigError` listing the known ones otherwise)."""
    return _METHODS.get(name)


class _Static(QuantMethod):
    name = "static"
    description = "post-training Q/DQ quantization, activation ranges calibrated on training samples"
    needs_data = True
    calibrated = True

    def write(self, pre: Path, staged: Path, config: QuantConfig, *, reduce_range: bool,
              calib_x: np.ndarray | None, input_name: str, fixed_batch: int | None) -> dict[str, Any]:
        from ._ort import write_static

        return write_static(pre, staged, config, reduce_range=reduce_range, calib_x=calib_x,
                            input_name=input_name, fixed_batch=fixed_batch)


class _Dynamic(QuantMethod):
    name = "dynamic"
    description = "weights only, activations quantized at run time (Linear/MatMul-heavy models)"
    quant_format = "QOperator"

    def write(self, pre: Path, staged: Path, config: QuantConfig, *, reduce_range: bool,
              calib_x: np.ndarray | None, input_name: str, fixed_batch: int | None) -> dict[str, Any]:
        from ._ort import write_dynamic

        return write_dynamic(pre, staged, config, reduce_range=reduce_range)


class _Auto(QuantMethod):
    name = "auto"
    description = "dynamic when MatMul/Gemm hold most weights (and the target runs dynamic files), else static"

    def resolve(self, config: QuantConfig, model: Any) -> QuantMethod:
        from ._ort import linear_mac_share
        from ._targets import get_target

        dynamic = linear_mac_share(model) > 0.5 and get_target(config.target).dynamic
        return get_method("dynamic" if dynamic else "static")


class _Qat(QuantMethod):
    name = "qat"
    description = "fake-quant finetuning of the PyTorch model, then static quantization of the result"
    needs_data = True

    def check(self, data: Any, torch_model: Any) -> None:
        super().check(data, torch_model)
        if torch_model is None:
            raise ConfigError("--method qat finetunes the PyTorch model behind the ONNX file; pass it (the CLI "
                              "takes --source: a pruned model.pt, RUN/subnets/K or zoo:NAME)")

    def resolve(self, config: QuantConfig, model: Any) -> QuantMethod:
        return get_method("static")

    def fp32_source(self, job: QuantJob) -> tuple[Path, dict[str, Any] | None]:
        from ._qat import qat_to_onnx

        path = job.dst.with_name(job.dst.stem + ".qat-fp32.onnx")
        record = qat_to_onnx(job.torch_model, job.data, path, reduce_range=job.reduce_range,
                             per_channel=job.config.per_channel, example_shape=job.input_dims, log=job.log,
                             **job.options)
        return path, record


for _method in (_Auto(), _Static(), _Dynamic(), _Qat()):
    register_method(_method)
