"""Selective quantization (issue 22): INT8 only where it pays on the device, FP32 where nothing does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nasforge.data import DataSplits
from nasforge.devices import Device
from nasforge.quantize import (
    QuantConfig,
    operator_groups,
    quantize,
    quantize_onnx,
    run_selection,
    select_groups,
)
from nasforge.quantize._groups import name_nodes


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))


def _mobile(c: int = 16) -> nn.Module:
    """A MobileNetV3-like block stack: stem, pointwise, depthwise, hard-swish, squeeze-excite, residual, head."""
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.Hardswish(),
                                      nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c), nn.Hardswish(),
                                      _SqueezeExcite(2 * c), nn.Conv2d(2 * c, c, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.Hardswish(), Block(), Block(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def _export(model: nn.Module, digits: DataSplits, path: Path) -> Path:
    from nasforge.export import export_onnx

    export_onnx(model.eval(), digits.val.x[:1], path, exporter="torchscript", dynamic_batch=True)
    return path


def _dims(path: Path) -> tuple:
    from nasforge.onnx_io import single_input_spec

    return single_input_spec(onnx.load(str(path)), path).dims


@pytest.fixture(scope="module")
def mobile(digits: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _export(_mobile(), digits, tmp_path_factory.mktemp("mobile") / "mobile.onnx")


def test_operator_groups_of_a_mobile_block(mobile: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = mobile.with_name("pre.onnx")
    quant_pre_process(str(mobile), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    name_nodes(model)
    groups = operator_groups(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert set(groups) == {"stem", "depthwise", "squeeze-excite", "swish", "residual-add", "conv", "linear"}
    assert len(groups["stem"]) == 1 and len(groups["depthwise"]) == 2 and len(groups["residual-add"]) == 2
    assert len(groups["conv"]) == 4 and len(groups["linear"]) == 1  # expand + project of each block
    se_ops = sorted(ops[n] for n in groups["squeeze-excite"])
    assert se_ops.count("Conv") == 4 and se_ops.count("Mul") == 2  # 2 x (reduce, expand) and the gating products
    assert {ops[n] for n in groups["swish"]} <= {"HardSwish", "HardSigmoid", "Mul"}
    assert len({n for names in groups.values() for n in names}) == sum(map(len, groups.values()))  # disjoint


def _cost(path: Path) -> float:
    """A synthetic device where INT8 slows depthwise convolutions down and speeds the others up, read from the
    written file itself: a convolution is INT8 when its weight comes from a DequantizeLinear."""
    model = onnx.load(str(path))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    cost = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            depthwise = any(a.name == "group" and a.i > 1 for a in node.attribute)
            int8 = producers.get(node.input[1]) == "DequantizeLinear"
            cost += {(True, True): 3.0, (True, False): 1.0, (False, True): 1.0, (False, False): 2.0}[
                (depthwise, int8)]
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            cost += 0.01
    return cost


def test_a_mixed_model_keeps_depthwise_convolutions_in_float(mobile: Path, digits: DataSplits,
                                                             tmp_path: Path) -> None:
    from nasforge.quantize import fit_inputs

    fp32_cost = _cost(mobile)
    calib = fit_inputs(digits.train.head(64), _dims(mobile), "mobile")

    def write(out: Path, config: QuantConfig):  # noqa: ANN202
        return quantize_onnx(mobile, out, config, reduce_range=True, calib_x=calib)

    def measure(path: Path, _screening: bool) -> dict[str, dict[str, float]]:
        c = _cost(path)
        return {"1": {"fp32_ms": fp32_cost, "int8_ms": c, "speedup": fp32_cost / c}}

    dst = tmp_path / "mixed.onnx"
    written, latency, selection = run_selection(mobile, dst, QuantConfig(method="static"), write, measure)
    assert selection.choice == "mixed" and list(selection.float_groups) == ["depthwise"]
    assert "raised the worst-batch speed-up" in selection.float_groups["depthwise"]
    assert latency["1"]["speedup"] == pytest.approx(fp32_cost / _cost(dst)) and latency["1"]["speedup"] > 1.0
    model = onnx.load(str(dst))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            assert all(i in inits for i in node.input[1:]), "a float depthwise conv reads float constants"
        elif node.op_type == "Conv":
            assert producers.get(node.input[1]) == "DequantizeLinear"
    assert written.path == dst and not list(tmp_path.glob("*.select"))  # no variant files left behind


def test_a_model_int8_cannot_speed_up_comes_back_fp32_with_the_reason(digits: DataSplits, tmp_path: Path) -> None:
    torch.manual_seed(0)  # a few hundred MACs: the quantize/dequantize work costs more than INT8 saves
    tiny = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                         nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    src = _export(tiny, digits, tmp_path / "tiny.onnx")
    out = tmp_path / "tiny.int8.onnx"
    device = Device(name="quick", backend="ort-cpu", runs=30, warmup=5)
    report = quantize(src, out, data=digits, config=QuantConfig(method="static"), device=device, batches=(1, 8))
    assert report.choice == "fp32"
    assert "FP32 model is kept" in report.selection["reason"]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["nasforge_quantization"])["kept"] == "fp32"
    assert all(row["speedup"] == 1.0 for row in report.latency.values())
    md = out.with_name("tiny.int8.report.md").read_text()
    assert "## Selective quantization" in md and "**FP32**" in md and "| all INT8 |" in md
    assert report.check["rel_l2"] == pytest.approx(0.0, abs=1e-6)


def test_selective_never_ships_a_variant_below_the_bar(mobile: Path, digits: DataSplits, tmp_path: Path) -> None:
    device = Device(name="quick", backend="ort-cpu", runs=20, warmup=3)
    out = tmp_path / "m.int8.onnx"
    report = quantize(mobile, out, data=digits, config=QuantConfig(method="static"), device=device, batches=(1,))
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    if report.choice == "fp32":
        assert "QuantizeLinear" not in ops
    else:  # the shipped variant was measured afresh and cleared the bar
        assert "QuantizeLinear" in ops and report.latency["1"]["speedup"] >= 1.03
        assert report.selection["trials"][-1]["latency"] == report.latency


def test_policy_all_and_no_device_quantize_everything(mobile: Path, digits: DataSplits, tmp_path: Path) -> None:
    report = quantize(mobile, tmp_path / "a.onnx", data=digits, config=QuantConfig(method="static"), device=None)
    assert report.selection is None and report.choice == "int8"
    assert "needs a device to measure on" in (tmp_path / "a.report.md").read_text()
    device = Device(name="quick", backend="ort-cpu", runs=5, warmup=1)
    report = quantize(mobile, tmp_path / "b.onnx", data=digits, config=QuantConfig(method="static", policy="all"),
                      device=device)
    assert report.selection is None and report.settings["float_nodes"] == 0


def test_float_groups_are_left_in_float_and_validated(mobile: Path, digits: DataSplits, tmp_path: Path) -> None:
    from nasforge.errors import ConfigError
    from nasforge.quantize import fit_inputs

    calib = fit_inputs(digits.train.head(32), _dims(mobile), "mobile")
    result = quantize_onnx(mobile, tmp_path / "f.onnx", QuantConfig(method="static", float_groups=("depthwise",)),
                           reduce_range=True, calib_x=calib)
    assert result.groups["depthwise"] == 2 and result.settings["float_groups"] == ["depthwise"]
    assert result.float_nodes == 2
    with pytest.raises(ConfigError, match="float group 'dw' is unknown"):
        QuantConfig(float_groups=("dw",))
    with pytest.raises(ConfigError, match="policy"):
        QuantConfig(policy="some")


def test_greedy_selection_stops_on_noise() -> None:
    from nasforge.quantize import Trial

    speed = {(): 1.10, ("a",): 1.11, ("b",): 1.30, ("b", "a"): 1.31, ("b", "c"): 1.0, ("c",): 0.9}
    seen: list[tuple[str, ...]] = []

    def run(groups: tuple[str, ...]) -> Trial:
        seen.append(groups)
        return Trial(groups, {"1": {"fp32_ms": 1.0, "int8_ms": 1 / speed[groups], "speedup": speed[groups]}})

    selection, best = select_groups(["a", "b", "c"], run, min_speedup=1.03)
    assert best.float_groups == ("b",) and selection.choice == "mixed"  # +0.8% for "a" is within the tolerance
    assert seen == [(), ("a",), ("b",), ("c",), ("b", "a"), ("b", "c")]
    selection, _ = select_groups(["a", "b", "c"], run, min_speedup=1.5)
    assert selection.choice == "fp32" and "1.50x" in selection.reason
    np.testing.assert_equal(selection.float_groups, {})
    # measured again, "b" in float is no faster than all-INT8: the step is not taken
    again = {(): 1.20, ("b",): 1.21}
    selection, best = select_groups(["a", "b", "c"], run, min_speedup=1.03, confirm=lambda g: Trial(
        g, {"1": {"fp32_ms": 1.0, "int8_ms": 1 / again[g], "speedup": again[g]}}))
    assert best.float_groups == () and best.worst == 1.20 and selection.choice == "int8"


def test_a_variant_the_quantizer_cannot_write_is_skipped(mobile: Path, digits: DataSplits, tmp_path: Path) -> None:
    from nasforge.errors import ExportError
    from nasforge.quantize import fit_inputs

    calib = fit_inputs(digits.train.head(32), _dims(mobile), "mobile")
    fp32_cost = _cost(mobile)

    def write(out: Path, config: QuantConfig):  # noqa: ANN202
        if "depthwise" in config.float_groups:
            raise ExportError("onnxruntime could not quantize 'mobile.onnx': simulated failure")
        return quantize_onnx(mobile, out, config, reduce_range=True, calib_x=calib)

    def measure(path: Path, _screening: bool) -> dict[str, dict[str, float]]:
        c = _cost(path)
        return {"1": {"fp32_ms": fp32_cost, "int8_ms": c, "speedup": fp32_cost / c}}

    said: list[str] = []
    _, _, selection = run_selection(mobile, tmp_path / "m.onnx", QuantConfig(method="static"), write, measure,
                                    said.append)
    failed = [t for t in selection.trials if t.error]
    assert failed and all("depthwise" in t.float_groups and t.worst == 0.0 for t in failed)
    assert "depthwise" not in selection.float_groups and (tmp_path / "m.onnx").is_file()
    assert any("simulated failure" in line and "skipped" in line for line in said)
    assert "not written: onnxruntime could not quantize" in "\n".join(selection.markdown())
