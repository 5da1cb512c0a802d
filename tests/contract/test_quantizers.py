"""Contract of the quantization plug-in families: every registered method (the ``--method`` names), on every
registered target (``--target``) it supports, turns a tiny exported FP32 ONNX model into an INT8 file that onnxruntime runs, through
:func:`nasforge.quantize.quantize`, with its report.

A target whose runtime is needed to build the file would be skipped with the reason when that runtime is
absent; ``tensorrt`` needs none (its Q/DQ file is written by onnxruntime's quantizer and checked in Python).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nasforge.data import DataSplits, load_data
from nasforge.errors import ConfigError
from nasforge.quantize import (
    METHODS,
    TARGETS,
    QuantConfig,
    QuantMethod,
    QuantTarget,
    get_method,
    get_target,
    list_methods,
    list_targets,
    quantize,
    report_paths,
    run_onnx,
)

#: runtimes a target needs to write its INT8 file (none today: both are written by onnxruntime's quantizer)
RUNTIMES: dict[str, str | None] = {"ort": None, "tensorrt": None}


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data("shapes?n=120&classes=4", image_size=8, seed=0)


@pytest.fixture(scope="module")
def fp32(data: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    from nasforge.export import export_onnx

    model = _tiny()
    path = tmp_path_factory.mktemp("fp32") / "tiny.onnx"
    export_onnx(model, data.val.x[:1], path, exporter="torchscript", dynamic_batch=True,
                check_inputs=[data.val.x[:4]])
    return model, path


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in list_methods():
        for target in list_targets():
            try:
                QuantConfig(method=name, target=target)
            except ConfigError:
                continue  # a combination the config refuses (tensorrt has no dynamic quantization)
            cases.append((name, target))
    return cases


def test_the_registry_matches_the_cli_names() -> None:
    assert sorted(METHODS) == list_methods() and sorted(TARGETS) == list_targets()
    assert all(isinstance(get_method(n), QuantMethod) and get_method(n).name == n for n in list_methods())
    assert all(isinstance(get_target(n), QuantTarget) and get_target(n).name == n for n in list_targets())


@pytest.mark.parametrize(("name", "target"), _cases())
def test_method_writes_an_int8_file_onnxruntime_runs(name: str, target: str, data: DataSplits,
                                                     fp32: tuple[nn.Module, Path], tmp_path: Path) -> None:
    runtime = RUNTIMES.get(target)
    if runtime is not None and importlib.util.find_spec(runtime) is None:
        pytest.skip(f"target {target!r} needs the {runtime} Python package to write its INT8 file; not installed")
    model, src = fp32
    out = tmp_path / "tiny.int8.onnx"
    config = QuantConfig(method=name, target=target, calib_samples=32)
    report = quantize(src, out, data=data, config=config, device=None, check_samples=32, torch_model=model,
                      qat_options={"epochs": 1, "batch_size": 32})
    assert report.method in list_methods() and report.settings["quantized_nodes"] > 0
    assert all(p.is_file() for p in report_paths(out))
    logits = run_onnx(out, data.val.x[:8].numpy())
    assert logits.shape == (8, 4) and np.isfinite(logits).all()
    assert (report.tensorrt is not None) == (target == "tensorrt")  # the report's TensorRT section
    if report.tensorrt is not None:
        assert report.tensorrt["problems"] == []


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).needs_data])
def test_methods_that_need_data_refuse_to_run_without(name: str, fp32: tuple[nn.Module, Path],
                                                      tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"--method {name} needs calibration data"):
        quantize(fp32[1], tmp_path / "x.int8.onnx", config=QuantConfig(method=name), device=None)
