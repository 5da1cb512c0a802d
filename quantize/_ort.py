"""INT8 ONNX files through onnxruntime's quantization tool: static (QDQ, calibrated) and dynamic."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ConfigError, ExportError
from nasforge.io import atomic_write
from nasforge.onnx_io import first_line, load_onnx, single_input_spec
from nasforge.runlock import remove_stale_temps, temp_prefix

from ._config import QuantConfig
from ._groups import fold_float_inputs, name_nodes, operator_groups
from ._inputs import ArrayReader
from ._methods import get_method
from ._targets import get_target

__all__ = ["OrtQuantization", "copy_metadata", "linear_mac_share", "quantize_onnx", "write_dynamic", "write_static"]

_CALIBRATE = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass(frozen=True)
class OrtQuantization:
    """What :func:`quantize_onnx` wrote: the settings actually used, how many compute nodes were quantized, and
    the graph's operator groups (:func:`nasforge.quantize._groups.operator_groups`) with their node counts."""

    path: Path
    method: str
    reduce_range: bool
    quantized_nodes: int
    float_nodes: int
    settings: dict[str, Any]
    groups: dict[str, int] = field(default_factory=dict)


def linear_mac_share(model: Any) -> float:
    """Share of the weight parameters held by MatMul/Gemm (vs Conv) initializers; 0 without any."""
    inits = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    conv = sum(inits.get(n.input[1], 0) for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1)
    linear = sum(inits.get(i, 0) for n in model.graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input[:2])
    total = conv + linear
    return linear / total if total else 0.0


def resolve_method(config: QuantConfig, model: Any) -> str:
    """``static`` or ``dynamic`` (``auto``: dynamic when MatMul/Gemm hold most weights); ``qat`` ends as static."""
    return get_method(config.method).resolve(config, model).name


def _preprocess(src: Path, tmp: Path) -> tuple[Path, dict[str, list[str]]]:
    """Shape inference and graph optimisation before quantization (onnxruntime's recommended step); every node
    named (inlined functions such as hard-swish come out unnamed); ``(the file, its operator groups)``."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception as err:  # noqa: BLE001  onnxruntime raises bare Exception subclasses from many layers
        raise ExportError(f"cannot prepare '{src}' for quantization: {first_line(err)}") from err
    model = onnx.load(str(out))
    if name_nodes(model):
        onnx.save(model, str(out))
    return out, operator_groups(model)


def write_dynamic(pre: Path, staged: Path, config: QuantConfig, *, reduce_range: bool) -> dict[str, Any]:
    """onnxruntime's dynamic quantization (int8 weights) of ``pre`` into ``staged``; no settings to add."""
    from onnxruntime import quantization as q

    q.quantize_dynamic(str(pre), str(staged), per_channel=config.per_channel, reduce_range=reduce_range,
                       weight_type=q.QuantType.QInt8, nodes_to_exclude=list(config.exclude_nodes))
    return {}


def write_static(pre: Path, staged: Path, config: QuantConfig, *, reduce_range: bool, calib_x: np.ndarray | None,
                 input_name: str, fixed_batch: int | None) -> dict[str, Any]:
    """onnxruntime's static Q/DQ quantization of ``pre`` into ``staged``, calibrated on ``calib_x``; the
    calibration settings used."""
    from onnxruntime import quantization as q

    symmetric = get_target(config.target).symmetric
    act = q.QuantType.QInt8 if symmetric or config.activation_type == "int8" else q.QuantType.QUInt8
    extra: dict[str, Any] = {"CalibMovingAverage": False}
    if config.calibration == "percentile":
        extra["CalibPercentile"] = float(config.percentile)
    if symmetric:  # e.g. TensorRT's explicit quantization: zero point 0, int8 both sides, float biases
        extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False)
    reader = ArrayReader(input_name, calib_x, fixed_batch=fixed_batch)  # type: ignore[arg-type]
    q.quantize_static(str(pre), str(staged), reader, quant_format=q.QuantFormat.QDQ,
                      per_channel=config.per_channel, reduce_range=reduce_range, activation_type=act,
                      weight_type=q.QuantType.QInt8, nodes_to_exclude=list(config.exclude_nodes),
                      calibrate_method=getattr(q.CalibrationMethod, _CALIBRATE[config.calibration]),
                      extra_options=extra)
    return {"calibration": config.calibration, "activation_type": act.name,
            "calib_samples": int(len(calib_x)), "symmetric": symmetric}  # type: ignore[arg-type]


def quantize_onnx(src: str | Path, dst: str | Path, config: QuantConfig, *, reduce_range: bool,
                  calib_x: np.ndarray | None = None) -> OrtQuantization:
    """Write an INT8 version of the ONNX file ``src`` to ``dst`` (atomically).

    Args:
        config: the settings (``method`` ``auto`` is resolved here; ``qat`` quantizes statically).
        reduce_range: 7-bit weights (see :mod:`nasforge.quantize._capabilities`).
        calib_x: calibration inputs already shaped for the model (static only).

    Raises:
        ConfigError: static quantization without calibration data.
        ExportError: ``src`` is not a valid ONNX model, or onnxruntime fails to quantize it.
    """
    src, dst = Path(src), Path(dst)
    model = load_onnx(src, check=True)
    spec = single_input_spec(model, src)
    method = get_method(config.method).resolve(config, model)
    if method.calibrated and (calib_x is None or len(calib_x) == 0):
        raise ConfigError(f"{method.name} INT8 quantization needs calibration data; pass --data SPEC (or use "
                          "--method dynamic)")
    settings: dict[str, Any] = {"method": method.name, "per_channel": config.per_channel,
                                "reduce_range": reduce_range, "format": method.quant_format}
    folder = dst.parent if dst.parent.is_dir() else None  # else the system's: nothing is left next to dst
    if folder is not None:
        remove_stale_temps(folder)  # folders left by quantizations that were killed (never a live one's)
    with tempfile.TemporaryDirectory(prefix=temp_prefix(dst.name), suffix=".quantize", dir=folder) as tmp:
        pre, groups = _preprocess(src, Path(tmp))
        floating = _float_nodes(config, groups)
        config = dataclasses.replace(config, exclude_nodes=floating)
        if config.float_groups:
            settings["float_groups"] = list(config.float_groups)
        staged = Path(tmp) / "int8.onnx"
        try:
            settings.update(method.write(pre, staged, config, reduce_range=reduce_range, calib_x=calib_x,
                                         input_name=spec.name,
                                         fixed_batch=spec.dims[0] if isinstance(spec.dims[0], int) else None))
        except (ConfigError, ExportError):
            raise
        except Exception as err:  # noqa: BLE001  onnxruntime's quantizer raises many unrelated types
            raise ExportError(f"onnxruntime could not quantize '{src}': {first_line(err)}") from err
        out = load_onnx(staged, check=False)
        fold_float_inputs(out, floating)
        copy_metadata(model, out, settings)
        atomic_write(dst, lambda fh: fh.write(out.SerializeToString()))
    settings["quantized_nodes"], settings["float_nodes"] = _count_nodes(out)
    return OrtQuantization(dst, method.name, reduce_range, settings["quantized_nodes"], settings["float_nodes"],
                           settings, {g: len(names) for g, names in groups.items()})


def _float_nodes(config: QuantConfig, groups: dict[str, list[str]]) -> tuple[str, ...]:
    """``config.exclude_nodes`` plus the nodes of ``config.float_groups`` (a group the graph lacks adds none)."""
    extra = [n for g in config.float_groups for n in groups.get(g, [])]
    return tuple(dict.fromkeys([*config.exclude_nodes, *extra]))


def copy_metadata(src: Any, out: Any, settings: dict[str, Any]) -> None:
    """Keep the FP32 file's metadata (architecture, normalisation, ...) and record how it was quantized."""
    import json

    props = {p.key: p.value for p in src.metadata_props}
    props["nasforge_quantization"] = json.dumps(settings, sort_keys=True)
    del out.metadata_props[:]
    for key, value in props.items():
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value


_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
              "QLinearConv", "QLinearMatMul"}
_COMPUTE = {"Conv", "MatMul", "Gemm", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"}


def _count_nodes(model: Any) -> tuple[int, int]:
    """(compute nodes whose weights are quantized, compute nodes left in float) of a quantized graph; a float
    node may still read a dequantized activation."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    quantized = float_ = 0
    for n in model.graph.node:
        if n.op_type not in _COMPUTE:
            continue
        if n.op_type in _QUANT_OPS or any(producers.get(i) in _QUANT_OPS for i in n.input[1:2]):
            quantized += 1
        else:
            float_ += 1
    return quantized, float_


def ensure_onnx_path(path: str | Path) -> Any:
    """The checked ``ModelProto`` of the ONNX file ``path``; else a one-line error that says what was expected.

    Raises:
        ExportError: missing file, or not an ONNX model (e.g. a PyTorch checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no ONNX file at '{path}'; export one first (nasforge export ... --out DIR)")
    with path.open("rb") as fh:
        head = fh.read(2)
    if head[:2] == b"PK":
        raise ExportError(f"'{path}' is a PyTorch checkpoint (zip), not an ONNX file; export it first "
                          "(nasforge export / nasforge prune write model.onnx)")
    return load_onnx(path, check=True)
