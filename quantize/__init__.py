"""INT8 quantization that knows its target.

One verb, :func:`quantize`, turns an FP32 ONNX file (an exported subnet or a pruned model) into an INT8 ONNX file
and checks it: FP32 vs INT8 accuracy on the validation split, relative L2 output error against FP32 and
against a simulated-quantization reference (a saturation flag when the INT8 kernels are far worse), and latency
before and after on the chosen device. Settings are a :class:`QuantConfig`:

- ``static``: onnxruntime post-training quantization in QDQ format, activations calibrated on the task's
  training samples (MinMax, Entropy or Percentile), per-channel weights;
- ``dynamic``: weights only, for Linear/MatMul-heavy models (``auto`` picks it for them);
- ``qat``: fake-quant finetuning in PyTorch (:func:`qat_finetune`), then static;
- ``policy="selective"`` (the default when a device is given): operator groups INT8 does not speed up on the
  device (depthwise convolutions, squeeze-excite, hard-swish, ...) stay in float, found by measuring variants
  on it, and the FP32 model is kept when no INT8 variant is faster at every batch size (:func:`run_selection`);
- ``target="tensorrt"``: the symmetric int8 Q/DQ graph TensorRT's explicit quantization wants (TensorRT 11 reads
  the precision from it; TensorRT 10 builds it with the INT8 flag).

Methods and targets are plug-in families, one base and one registry each: :class:`QuantMethod`
(:func:`list_methods`, the ``--method`` names) and :class:`QuantTarget` (:func:`list_targets`, ``--target``).

``reduce_range`` (7-bit weights) is decided from the target's CPU flags (:func:`choose_reduce_range`): on for x86
without VNNI, where onnxruntime's u8s8 kernels can saturate, off elsewhere.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._api import QuantReport, decide_range, quantize, read_report, report_paths
from ._capabilities import RangeDecision, choose_reduce_range, device_fingerprint, has_vnni
from ._checks import OutputCheck, check_outputs, relative_l2, run_onnx
from ._config import CALIBRATIONS, METHODS, POLICIES, TARGETS, QuantConfig
from ._groups import GROUP_DESCRIPTIONS, operator_groups
from ._inputs import fit_inputs
from ._methods import QuantJob, QuantMethod, get_method, list_methods, register_method
from ._ort import OrtQuantization, ensure_onnx_path, linear_mac_share, quantize_onnx
from ._selective import Selection, Trial, run_selection, select_groups
from ._targets import QuantTarget, get_target, list_targets, register_target
from ._trt import tensorrt_plans, tensorrt_qdq_problems

if TYPE_CHECKING:
    from ._qat import prepare_qat, qat_finetune, strip_qat

_LAZY = {"prepare_qat": "._qat", "qat_finetune": "._qat", "strip_qat": "._qat"}

__all__ = [
    "CALIBRATIONS",
    "GROUP_DESCRIPTIONS",
    "METHODS",
    "POLICIES",
    "TARGETS",
    "OrtQuantization",
    "OutputCheck",
    "QuantConfig",
    "QuantJob",
    "QuantMethod",
    "QuantTarget",
    "QuantReport",
    "RangeDecision",
    "Selection",
    "check_outputs",
    "choose_reduce_range",
    "decide_range",
    "device_fingerprint",
    "fit_inputs",
    "get_method",
    "get_target",
    "has_vnni",
    "linear_mac_share",
    "list_methods",
    "list_targets",
    "prepare_qat",
    "qat_finetune",
    "quantize",
    "quantize_onnx",
    "read_report",
    "register_method",
    "register_target",
    "relative_l2",
    "report_paths",
    "run_onnx",
    "strip_qat",
    "tensorrt_plans",
    "tensorrt_qdq_problems",
    "Trial",
    "operator_groups",
    "run_selection",
    "select_groups",
    "ensure_onnx_path",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
