"""The checks every quantization gets: accuracy, output error against FP32 and against simulated quantization.

The *simulated* reference runs the same INT8 file with graph optimisation off: onnxruntime then executes each
QuantizeLinear/DequantizeLinear node literally and every Conv/MatMul in float, which is exact fake quantization
(the rounding of the chosen scales, none of the integer kernels' arithmetic). The optimised session fuses them
into integer kernels (QLinearConv, ...). When the integer kernels' error is far above the simulated one, the
difference is the kernels' arithmetic: on x86 without VNNI, 16-bit saturation. That is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.onnx_io import open_session

__all__ = ["OutputCheck", "check_outputs", "relative_l2", "run_onnx"]


def run_onnx(path: str | Path, x: np.ndarray, *, optimization: str = "all", batch: int = 256,
             threads: int | None = None) -> np.ndarray:
    """Outputs of the ONNX file on ``x`` (first output), in batches (batch 1 for a fixed-batch-1 model)."""
    sess = open_session(path, threads=threads, optimization=optimization)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        if fixed and len(chunk) < fixed:  # pad the last batch of a fixed-batch model
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
        outs.append(sess.run(None, {inp.name: chunk})[0][: len(x) - i])
    return np.concatenate(outs)


def relative_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """``||a - ref|| / ||ref||`` over the whole array (0 when both are zero)."""
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(np.asarray(a, dtype=np.float64) - ref))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


@dataclass(frozen=True)
class OutputCheck:
    """FP32 vs INT8 on one labelled set.

    Attributes:
        samples: how many inputs.
        fp32_accuracy, int8_accuracy, simulated_accuracy: top-1 accuracy (``None`` without labels).
        rel_l2: relative L2 error of the INT8 outputs (integer kernels) against FP32.
        simulated_rel_l2: the same for the simulated-quantization reference.
        saturation: ``rel_l2`` exceeds ``factor`` x ``simulated_rel_l2`` + ``margin``.
    """

    samples: int
    fp32_accuracy: float | None
    int8_accuracy: float | None
    simulated_accuracy: float | None
    rel_l2: float
    simulated_rel_l2: float
    saturation: bool

    @property
    def accuracy_drop(self) -> float | None:
        """FP32 minus INT8 accuracy, in points of accuracy as a fraction (0.005 = half a point)."""
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return self.fp32_accuracy - self.int8_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "fp32_accuracy": self.fp32_accuracy, "int8_accuracy": self.int8_accuracy,
                "simulated_accuracy": self.simulated_accuracy, "accuracy_drop": self.accuracy_drop,
                "rel_l2": self.rel_l2, "simulated_rel_l2": self.simulated_rel_l2, "saturation": self.saturation}


def _accuracy(out: np.ndarray, y: np.ndarray | None) -> float | None:
    if y is None or out.ndim != 2:
        return None
    return float((out.argmax(1) == y).mean())


def check_outputs(fp32: str | Path, int8: str | Path, x: np.ndarray, y: np.ndarray | None = None, *,
                  factor: float = 1.5, margin: float = 0.01, kernels: bool = True) -> OutputCheck:
    """Run the FP32 file, the INT8 file and its simulated-quantization reference on ``x`` and compare.

    ``kernels=False`` (a TensorRT target, whose integer kernels are not onnxruntime's CPU ones) reports the
    simulated outputs as the INT8 ones.
    """
    ref = run_onnx(fp32, x)
    sim = run_onnx(int8, x, optimization="disable")
    out = run_onnx(int8, x) if kernels else sim
    rel, sim_rel = relative_l2(out, ref), relative_l2(sim, ref)
    y = None if y is None else np.asarray(y)
    return OutputCheck(samples=int(len(x)), fp32_accuracy=_accuracy(ref, y), int8_accuracy=_accuracy(out, y),
                       simulated_accuracy=_accuracy(sim, y), rel_l2=rel, simulated_rel_l2=sim_rel,
                       saturation=rel > factor * sim_rel + margin)
