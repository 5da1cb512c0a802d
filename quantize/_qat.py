"""Quantization-aware training in plain PyTorch: fake-quant finetuning that matches onnxruntime's INT8 scheme.

BatchNorm is folded into the convolutions first (onnxruntime quantizes the folded weights, so QAT must see the
same ones). Each Conv/Linear then computes with fake-quantized weights (symmetric int8 per output channel, or
7-bit with ``reduce_range``) on fake-quantized inputs (asymmetric uint8 per tensor, ranges tracked by an
exponential moving average of min/max). Gradients pass the rounding straight through. After finetuning the
fake quantization is removed, the finetuned FP32 model is exported, and :func:`nasforge.quantize.quantize`
writes its Q/DQ graph with calibrated ranges. Core PyTorch ops only (``torch.fake_quantize_*``): no torchao.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nasforge.errors import ConfigError

if TYPE_CHECKING:
    from nasforge.data import DataSplits

__all__ = ["prepare_qat", "qat_finetune", "qat_to_onnx", "strip_qat"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


class _WeightFakeQuant(nn.Module):
    """Symmetric per-output-channel (or per-tensor) fake quantization of a weight."""

    def __init__(self, per_channel: bool, qmax: int) -> None:
        super().__init__()
        self.per_channel, self.qmax = per_channel, qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.detach().reshape(w.shape[0], -1).abs()
        if self.per_channel:
            scale = (flat.amax(1) / self.qmax).clamp_min(1e-8)
            zero = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax, self.qmax)
        scale = float(flat.max().clamp_min(1e-8)) / self.qmax
        return torch.fake_quantize_per_tensor_affine(w, scale, 0, -self.qmax, self.qmax)


class _ActFakeQuant:
    """Forward pre-hook: asymmetric uint8 fake quantization of a layer's input with EMA min/max ranges."""

    def __init__(self, momentum: float = 0.05) -> None:
        self.momentum = momentum
        self.low: float | None = None
        self.high: float | None = None

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        if module.training or self.low is None:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if self.low is None or self.high is None:
                self.low, self.high = lo, hi
            else:
                self.low += self.momentum * (lo - self.low)
                self.high += self.momentum * (hi - self.high)
        low, high = min(self.low, 0.0), max(self.high, 0.0)  # type: ignore[type-var]
        scale = max((high - low) / 255.0, 1e-8)
        zero = int(min(255, max(0, round(-low / scale))))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])


def _fold_bn(model: nn.Module) -> tuple[nn.Module, bool]:
    """``model`` with every Conv-BN pair folded (eval-mode fusion through torch.fx); unchanged if untraceable."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval()), True
    except Exception:  # noqa: BLE001  torch.fx raises many types on untraceable models; QAT still works unfolded
        return copy.deepcopy(model), False


def prepare_qat(model: nn.Module, *, per_channel: bool = True, reduce_range: bool = False) -> tuple[nn.Module, int]:
    """A copy of ``model`` with BN folded and fake quantization on every Conv/Linear; returns it and the count."""
    work, _ = _fold_bn(model)
    qmax = 63 if reduce_range else 127
    count = 0
    for module in work.modules():
        if isinstance(module, _LAYERS):
            parametrize.register_parametrization(module, "weight", _WeightFakeQuant(per_channel, qmax))
            module._nasforge_qat_hook = module.register_forward_pre_hook(_ActFakeQuant())  # type: ignore[assignment]
            count += 1
    if count == 0:
        raise ConfigError("the model has no Conv/Linear layer to quantize")
    return work, count


def strip_qat(model: nn.Module) -> nn.Module:
    """Remove the fake quantization in place (the trained float weights stay); returns ``model``."""
    for module in model.modules():
        if isinstance(module, _LAYERS) and parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            module._nasforge_qat_hook.remove()  # type: ignore[operator]
            del module._nasforge_qat_hook
    return model


def qat_finetune(model: nn.Module, data: DataSplits, *, epochs: int = 2, lr: float = 0.001, batch_size: int = 64,
                 per_channel: bool = True, reduce_range: bool = False, seed: int = 0,
                 input_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Finetune ``model`` (not modified) under fake quantization; returns the finetuned FP32 model and a record.

    Args:
        epochs, lr, batch_size, seed: the finetuning (SGD with a cosine schedule, as pruning's finetune).
        input_fn: maps a batch of the data to the model's input (e.g. resizing); identity by default.

    Raises:
        ConfigError: ``epochs`` < 1 or a model without Conv/Linear layers.
    """
    from nasforge.data import Split
    from nasforge.prune import evaluate_accuracy, train_classifier

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"QAT epochs={epochs!r} is invalid; pass an int >= 1")
    fit = input_fn or (lambda t: t)
    train = Split(fit(data.train.x), data.train.y)
    val = Split(fit(data.val.x), data.val.y)
    work, layers = prepare_qat(model, per_channel=per_channel, reduce_range=reduce_range)
    with torch.no_grad():  # initialise the activation ranges on one training batch
        work.eval()(train.x[:batch_size])
    before = evaluate_accuracy(work, val)
    losses = train_classifier(work, train, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.0, seed=seed,
                              augment=False,
                              on_epoch=(lambda e, loss: log(f"  QAT epoch {e + 1}/{epochs}: loss {loss:.4f}"))
                              if log else None)
    after = evaluate_accuracy(work.eval(), val)
    strip_qat(work)
    record = {"epochs": epochs, "lr": lr, "layers": layers, "fake_quant_accuracy_before": before,
              "fake_quant_accuracy_after": after, "fp32_accuracy_after": evaluate_accuracy(work, val),
              "losses": [float(v) for v in losses], "reduce_range": reduce_range, "per_channel": per_channel}
    return work.eval(), record


def qat_to_onnx(model: nn.Module, data: DataSplits, path: str | Path, *, reduce_range: bool, per_channel: bool,
                example_shape: Sequence[int | None], log: Callable[[str], None] | None = None,
                **options: Any) -> dict[str, Any]:
    """Finetune ``model`` with :func:`qat_finetune` and export the result as the FP32 ONNX file ``path``."""
    from nasforge.export import export_onnx

    from ._inputs import fit_inputs

    def input_fn(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(fit_inputs(t, example_shape, "the model"))

    tuned, record = qat_finetune(model, data, per_channel=per_channel, reduce_range=reduce_range,
                                 input_fn=input_fn, log=log, **options)
    example = input_fn(data.val.x[:1])
    dynamic = example_shape[0] is None
    export_onnx(tuned, example, path, exporter="torchscript", dynamic_batch=dynamic,
                check_inputs=[input_fn(data.val.x[:4])] if dynamic else [], atol=1e-3)
    record["fp32_onnx"] = str(path)
    return record
