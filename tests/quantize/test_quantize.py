"""INT8 quantization: numeric bounds on real quantized models in onnxruntime, the reduce_range choice, QAT."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest

from nasforge.errors import ConfigError, DataError, ExportError
from nasforge.export import environment_fingerprint
from nasforge.quantize import (
    QuantConfig,
    check_outputs,
    choose_reduce_range,
    decide_range,
    has_vnni,
    quantize,
    read_report,
    report_paths,
    run_onnx,
    tensorrt_qdq_problems,
)

X86 = {"machine": "x86_64", "cpu": {"model": "Some x86", "flags": ["sse4_2", "avx", "avx2", "fma"]}}
THIS_CPU = environment_fingerprint(1)
_RAW_FLAGS = set(next((line.partition(":")[2].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("flags")), [])) if Path("/proc/cpuinfo").is_file() else set()
# from /proc/cpuinfo directly, not through nasforge's decision
THIS_X86_WITHOUT_VNNI = (platform.machine().lower() in ("x86_64", "amd64")
                         and not _RAW_FLAGS & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(("fingerprint", "backend", "expected"), [
    (X86, "ort-cpu", True),
    ({**X86, "cpu": {"flags": [*X86["cpu"]["flags"], "avx512f", "avx512_vnni"]}}, "ort-cpu", False),
    ({**X86, "cpu": {"flags": [*X86["cpu"]["flags"], "avx_vnni"]}}, "ort-cpu", False),
    ({**X86, "cpu": {"flags": [*X86["cpu"]["flags"], "amx_int8", "amx_tile"]}}, "ort-cpu", False),
    ({"machine": "aarch64", "cpu": {"model": "Cortex-A76", "flags": ["neon", "asimd", "asimddp"]}}, "ort-cpu", False),
    (X86, "ort-cuda", False),
    (X86, "tensorrt", False),
])
def test_reduce_range_follows_the_target_cpu(fingerprint: dict, backend: str, expected: bool) -> None:
    decision = choose_reduce_range(fingerprint, backend=backend)
    assert decision.reduce_range is expected
    assert decision.reason


def test_reduce_range_auto_explicit_and_tensorrt() -> None:
    auto = decide_range(QuantConfig(), None, X86)
    assert auto.reduce_range is True and "VNNI" in auto.reason
    assert decide_range(QuantConfig(reduce_range=False), None, X86).reduce_range is False
    assert decide_range(QuantConfig(target="tensorrt"), None, X86).reduce_range is False
    # this machine: decided from its own /proc/cpuinfo flags
    here = decide_range(QuantConfig(), None, None)
    assert here.reduce_range is THIS_X86_WITHOUT_VNNI
    assert has_vnni(THIS_CPU["cpu"]["flags"]) is bool(_RAW_FLAGS & {"avx512_vnni", "avx_vnni", "amx_int8"})


def test_bad_configs_are_one_line_errors() -> None:
    for kwargs in ({"method": "fast"}, {"calibration": "kl"}, {"calib_samples": 0}, {"percentile": 50},
                   {"target": "tensorrt", "method": "dynamic"}, {"target": "tensorrt", "reduce_range": True}):
        with pytest.raises(ConfigError) as err:
            QuantConfig(**kwargs)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_int8_stays_close_to_fp32(cnn, digits, tmp_path: Path, calibration: str) -> None:
    _, fp32 = cnn
    out = tmp_path / "model.int8.onnx"
    report = quantize(fp32, out, data=digits, config=QuantConfig(method="static", calibration=calibration),
                      device=None)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    check = report.check
    assert check["fp32_accuracy"] > 0.9
    assert check["accuracy_drop"] <= 0.02
    assert check["rel_l2"] < 0.08
    assert check["saturation"] is False
    # the INT8 kernels stay within a hair of the simulated quantization when reduce_range is on
    assert abs(check["rel_l2"] - check["simulated_rel_l2"]) < 0.01
    assert report.settings["calibration"] == calibration and report.settings["calib_samples"] == 256
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["dataset"] == "digits" and json.loads(meta["nasforge_quantization"])["method"] == "static"
    assert read_report(report_paths(out)[0])["check"]["rel_l2"] == pytest.approx(check["rel_l2"])


@pytest.mark.skipif(not THIS_X86_WITHOUT_VNNI, reason="needs an x86 CPU without VNNI (saturating u8s8 kernels)")
def test_full_range_weights_saturate_on_this_cpu_and_are_flagged(cnn, digits, tmp_path: Path) -> None:
    _, fp32 = cnn
    bad = quantize(fp32, tmp_path / "full.onnx", data=digits, config=QuantConfig(method="static",
                   reduce_range=False), device=None)
    good = quantize(fp32, tmp_path / "auto.onnx", data=digits, config=QuantConfig(method="static"), device=None)
    assert good.range_decision["reduce_range"] is True
    assert bad.check["saturation"] is True and good.check["saturation"] is False
    assert bad.check["rel_l2"] > 3 * bad.check["simulated_rel_l2"]
    assert bad.check["rel_l2"] > 3 * good.check["rel_l2"]
    assert "Saturation" in report_paths(tmp_path / "full.onnx")[1].read_text()


def test_dynamic_for_a_linear_model(mlp, digits, tmp_path: Path) -> None:
    out = tmp_path / "mlp.int8.onnx"
    report = quantize(mlp, out, data=digits, device=None)  # auto: MatMul/Gemm hold every weight
    assert report.method == "dynamic"
    assert _ops(out) & {"MatMulInteger", "DynamicQuantizeLinear"}
    assert report.check["accuracy_drop"] <= 0.02 and report.check["rel_l2"] < 0.03
    # without data, dynamic still runs; the checks use random inputs and report no accuracy
    blind = quantize(mlp, tmp_path / "blind.onnx", device=None)
    assert blind.check["int8_accuracy"] is None and blind.check["rel_l2"] < 0.05


def test_tensorrt_target_writes_symmetric_int8_qdq(cnn, digits, tmp_path: Path) -> None:
    _, fp32 = cnn
    out = tmp_path / "trt.onnx"
    report = quantize(fp32, out, data=digits, config=QuantConfig(target="tensorrt"), device=None)
    assert report.tensorrt["problems"] == []
    assert report.tensorrt["plans"]["tensorrt10"]["builder_flags"] == ["INT8"]
    assert report.tensorrt["plans"]["tensorrt11"]["strongly_typed"] is True
    assert report.check["accuracy_drop"] <= 0.02
    model = onnx.load(str(out))
    zps = [i for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert zps and all(z.data_type == onnx.TensorProto.INT8 for z in zps)
    # the onnxruntime-flavoured (asymmetric uint8) file is not what TensorRT wants, and the check says so
    ort_file = tmp_path / "ort.onnx"
    quantize(fp32, ort_file, data=digits, config=QuantConfig(method="static"), device=None, write_report=False)
    assert any("zero point" in p for p in tensorrt_qdq_problems(ort_file))
    assert tensorrt_qdq_problems(fp32) and "no QuantizeLinear" in tensorrt_qdq_problems(fp32)[0]


def test_latency_is_measured_on_the_device(cnn, digits, tmp_path: Path) -> None:
    from nasforge.devices import Device

    _, fp32 = cnn
    device = Device(name="quick", backend="ort-cpu", runs=20, warmup=3)
    report = quantize(fp32, tmp_path / "m.onnx", data=digits, config=QuantConfig(method="static"), device=device,
                      batches=(1, 8))
    assert set(report.latency) == {"1", "8"}
    for row in report.latency.values():
        assert row["fp32_ms"] > 0 and row["int8_ms"] > 0
        assert row["speedup"] == pytest.approx(row["fp32_ms"] / row["int8_ms"])
    assert report.device["name"] == "quick"


def test_a_fixed_batch_file_names_the_batches_it_cannot_time(cnn, digits, tmp_path: Path) -> None:
    from nasforge.devices import Device
    from nasforge.errors import ConfigError
    from nasforge.export import export_onnx

    model, _ = cnn
    fixed = tmp_path / "fixed.onnx"
    export_onnx(model, digits.val.x[:1], fixed, exporter="torchscript", metadata={"dataset": "digits"})
    device = Device(name="quick", backend="ort-cpu", runs=5, warmup=1)
    said: list[str] = []
    report = quantize(fixed, tmp_path / "q.onnx", data=digits, config=QuantConfig(method="static"), device=device,
                      batches=(1, 32), write_report=False, log=said.append)
    assert set(report.latency) == {"1"}
    assert any("fixed batch of 1: batch 32 skipped" in line and "--dynamic-batch" in line for line in said), said
    with pytest.raises(ConfigError, match="fixed batch of 1, so --batch 32 cannot be timed"):
        quantize(fixed, tmp_path / "q32.onnx", data=digits, config=QuantConfig(method="static"), device=device,
                 batches=(32,))
    assert not (tmp_path / "q32.onnx").exists()


def test_qat_finetunes_then_quantizes(cnn, digits, tmp_path: Path) -> None:
    model, fp32 = cnn
    out = tmp_path / "qat.onnx"
    report = quantize(fp32, out, data=digits, config=QuantConfig(method="qat"), torch_model=model, device=None,
                      qat_options={"epochs": 1})
    assert report.method == "static" and report.qat is not None
    assert report.qat["layers"] == 4  # three convs (BN folded in) and the classifier
    assert report.qat["fake_quant_accuracy_after"] >= report.qat["fake_quant_accuracy_before"] - 0.02
    assert report.check["accuracy_drop"] <= 0.02 and not report.check["saturation"]
    assert Path(report.qat["fp32_onnx"]).is_file()
    with pytest.raises(ConfigError, match="PyTorch model"):
        quantize(fp32, tmp_path / "x.onnx", data=digits, config=QuantConfig(method="qat"), device=None)


def test_bad_inputs_are_clear_errors(cnn, digits, tmp_path: Path) -> None:
    _, fp32 = cnn
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(ExportError, match="not a valid ONNX"):
        quantize(text, tmp_path / "o.onnx", data=digits, device=None)
    zipped = tmp_path / "model.pt"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ExportError, match="PyTorch checkpoint"):
        quantize(zipped, tmp_path / "o.onnx", data=digits, device=None)
    with pytest.raises(ExportError, match="no ONNX file"):
        quantize(tmp_path / "missing.onnx", tmp_path / "o.onnx", data=digits, device=None)
    with pytest.raises(ConfigError, match="calibration data"):
        quantize(fp32, tmp_path / "o.onnx", config=QuantConfig(method="static"), device=None)
    with pytest.raises(ConfigError, match="input file"):
        quantize(fp32, fp32, data=digits, device=None)
    from nasforge.data import load_data

    rgb = load_data("shapes?n=200&classes=4", image_size=8, seed=0)
    with pytest.raises(DataError, match="channels"):
        quantize(fp32, tmp_path / "o.onnx", data=rgb, config=QuantConfig(method="static"), device=None)
    assert not (tmp_path / "o.onnx").exists()


def test_check_outputs_flags_only_real_divergence(cnn, digits, tmp_path: Path) -> None:
    _, fp32 = cnn
    x = digits.val.x[:64].numpy()
    same = check_outputs(fp32, fp32, x, digits.val.y[:64].numpy())
    assert same.rel_l2 < 1e-6 and same.saturation is False and same.accuracy_drop == 0
    assert run_onnx(fp32, x).shape == (64, 10) and np.isfinite(run_onnx(fp32, x)).all()
