"""ONNX export: parity with PyTorch in real onnxruntime, metadata, self-contained files, atomic failure."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

import nasforge
from nasforge.errors import ConfigError, ExportError
from nasforge.export import ExportResult, check_parity, export_onnx, read_metadata

EXPORTERS = ["dynamo", "torchscript"]


class Branchy(torch.nn.Module):
    """Data-dependent control flow: tracing bakes in the branch taken by the example input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 10:
            return x * 2
        return -x


def _ort_run(path: Path, x: torch.Tensor) -> np.ndarray:
    """Run the exported file in a fresh onnxruntime session (independent of nasforge's parity code)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _torch_run(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.fixture(scope="module", params=EXPORTERS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, make_net, input_shape):
    """(exporter, path, result, model) per exporter; the exported model is left in train mode."""
    model = make_net()
    path = tmp_path_factory.mktemp(request.param) / "net.onnx"
    result = export_onnx(
        model, torch.randn(1, *input_shape), path, exporter=request.param, metadata={"arch": "ks3-e4"}
    )
    return request.param, path, result, model


def test_export_matches_pytorch(exported, make_net, input_shape) -> None:
    exporter, path, result, model = exported
    assert isinstance(result, ExportResult)
    assert result.path == path and result.exporter == exporter
    assert result.opset == 18 and result.parity_inputs == 3
    assert result.input_shape == (1, *input_shape) and result.dynamic_batch is False
    assert 0.0 <= result.max_abs_diff < 1e-5
    onnx.checker.check_model(str(path))
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(42))
    assert np.abs(_ort_run(path, x) - _torch_run(make_net(), x)).max() < 1e-5
    assert json.loads(json.dumps(result.to_dict()))["path"] == str(path)


def test_export_restores_train_mode(exported) -> None:
    *_, model = exported
    assert all(module.training for module in model.modules())


def test_metadata_round_trips(exported, input_shape) -> None:
    exporter, path, _, _ = exported
    meta = read_metadata(path)
    assert meta["arch"] == "ks3-e4"
    assert meta["nasforge_version"] == nasforge.__version__
    assert json.loads(meta["input_shape"]) == [1, *input_shape]
    assert meta["input_name"] == "input" and meta["exporter"] == exporter
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]


def test_export_is_one_self_contained_file(exported, tmp_path: Path, make_net, input_shape) -> None:
    _, path, _, _ = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.onnx"]  # no .data, no temp leftovers
    model = onnx.load(str(path), load_external_data=False)
    assert len(model.graph.initializer) > 0
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    moved = tmp_path / "elsewhere.onnx"
    moved.write_bytes(path.read_bytes())
    x = torch.randn(1, *input_shape)
    assert np.abs(_ort_run(moved, x) - _torch_run(make_net(), x)).max() < 1e-5


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dynamic_batch_runs_at_other_batch_sizes(
    exporter: str, tmp_path: Path, make_net, input_shape
) -> None:
    path = tmp_path / "dyn.onnx"
    result = export_onnx(
        make_net(), torch.randn(1, *input_shape), path, exporter=exporter, dynamic_batch=True
    )
    assert result.dynamic_batch and result.parity_inputs == 4 and result.max_abs_diff < 1e-5
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim0.HasField("dim_value")
    for batch in (1, 7):
        x = torch.randn(batch, *input_shape)
        out = _ort_run(path, x)
        assert out.shape == (batch, 10)
        assert np.abs(out - _torch_run(make_net(), x)).max() < 1e-5


def test_check_inputs_are_counted(tmp_path: Path, example: torch.Tensor, make_net, input_shape) -> None:
    extra = [torch.randn(1, *input_shape), torch.full((1, *input_shape), 3.0)]
    result = export_onnx(make_net(), example, tmp_path / "n.onnx", exporter="torchscript", check_inputs=extra)
    assert result.parity_inputs == 5


def test_check_parity_detects_a_different_model(static_onnx: Path, example: torch.Tensor, make_net) -> None:
    assert check_parity(make_net(seed=0), static_onnx, [example]) < 1e-5
    assert check_parity(make_net(seed=1), static_onnx, [example, torch.randn_like(example)]) > 1e-2


def test_parity_failure_keeps_the_existing_file(tmp_path: Path, example: torch.Tensor, make_net) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(make_net(), example, path, exporter="torchscript")
    good = path.read_bytes()
    with pytest.raises(ExportError, match=r"differs from PyTorch by .* > atol 0.0001"):
        export_onnx(Branchy(), torch.randn(1, 4) + 100, path, exporter="torchscript")
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_parity_failure_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="was not written"):
        export_onnx(Branchy(), torch.randn(1, 4) + 100, tmp_path / "b.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_exporter_failure_is_one_quiet_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    filters = list(warnings.filters)
    with pytest.raises(ExportError) as info:
        export_onnx(Branchy(), torch.randn(1, 4) + 100, tmp_path / "b.onnx", exporter="dynamo")
    assert "dynamo exporter failed" in str(info.value) and "\n" not in str(info.value)
    assert capfd.readouterr() == ("", "")
    assert warnings.filters == filters
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"this is not an onnx model", bytes(range(256)) * 4, b""])
def test_invalid_file_is_a_one_line_export_error(
    tmp_path: Path, content: bytes, example: torch.Tensor, make_net
) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    for call in (lambda: read_metadata(path), lambda: check_parity(make_net(), path, [example])):
        with pytest.raises(ExportError) as info:
            call()
        assert type(info.value) is ExportError and not isinstance(info.value, DecodeError)
        assert "\n" not in str(info.value) and "bad.onnx" in str(info.value)


def test_missing_file_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no ONNX file"):
        read_metadata(tmp_path / "absent.onnx")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exporter": "tflite"}, "exporter 'tflite' is unknown"),
        ({"atol": -1.0}, "atol -1.0"),
        ({"opset": 3}, "opset 3"),
        ({"metadata": {"input_name": "x"}}, "reserved"),
        ({"metadata": {"epochs": 3}}, "not str"),
        ({"check_inputs": [torch.randn(1, 3, 8, 8)]}, r"check_inputs\[0\]"),
    ],
)
def test_bad_arguments_raise_config_error(
    tmp_path: Path, example: torch.Tensor, kwargs: dict, match: str, make_net
) -> None:
    with pytest.raises(ConfigError, match=match):
        export_onnx(make_net(), example, tmp_path / "n.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


class _PooledGate(torch.nn.Module):
    """A squeeze-excite gate (spatial mean kept 4-D) and a channel mean that must stay a ReduceMean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))
        return y.mean(1).flatten(1) + y.mean((2, 3)).sum(1, keepdim=True)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_spatial_means_become_global_average_pools(tmp_path: Path, exporter: str) -> None:
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    model, x = _PooledGate().eval(), torch.randn(2, 1, 6, 6)
    ops = {}
    for rewrite in (True, False):
        path = tmp_path / f"m-{rewrite}.onnx"
        export_onnx(model, x, path, exporter=exporter, dynamic_batch=True, rewrite=rewrite)  # parity checked
        ops[rewrite] = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops[True].count("GlobalAveragePool") == 1  # the keepdim spatial mean only
    assert ops[True].count("ReduceMean") == ops[False].count("ReduceMean") - 1
    assert "GlobalAveragePool" not in ops[False]
