"""Contract of the export-format plug-in family: every registered format (:func:`list_export_formats`).

Each one is constructible without arguments and finishes a verified ONNX file: ``onnx`` leaves the file as it
is (onnxruntime still runs it and matches PyTorch); a format whose runtime is missing here (``tensorrt`` without
TensorRT or a GPU) stops with a one-line MissingDependencyError or ConfigError, and the test skips with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nasforge.errors import ConfigError, ExportError, MissingDependencyError
from nasforge.export import (
    ExportFormat,
    export_onnx,
    get_export_format,
    list_export_formats,
    register_export_format,
)


@pytest.fixture(scope="module")
def verified_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 5)).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path_factory.mktemp("fmt") / "model.onnx"
    export_onnx(model, x, path, exporter="torchscript")
    return path, model, x


def test_the_cli_formats_are_registered() -> None:
    from nasforge.deploy import FORMATS

    assert {"onnx", "tensorrt"} <= set(list_export_formats()) and set(FORMATS) == set(list_export_formats())


@pytest.mark.parametrize("name", list_export_formats())
def test_every_format_finishes_a_verified_onnx_file(name: str, verified_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source, model, x = verified_onnx
    path = tmp_path / "model.onnx"
    path.write_bytes(source.read_bytes())
    fmt = get_export_format(name)
    assert isinstance(fmt, ExportFormat) and fmt.name == name and fmt.description
    try:
        record = fmt.finish(path)
    except (MissingDependencyError, ConfigError, ExportError) as err:
        message = str(err)
        assert message and "\n" not in message.strip(), "a refusal is one line"
        pytest.skip(f"export format {name!r} cannot build here: {message}")
    assert record is None or isinstance(record, dict)
    assert path.read_bytes() == source.read_bytes(), "the verified ONNX file is left as it was"
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), atol=1e-4)


def test_unknown_names_and_bad_registrations_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown export format 'nope'.*onnx"):
        get_export_format("nope")
    with pytest.raises(ConfigError, match="already registered"):
        register_export_format("onnx")(type("Again", (ExportFormat,), {"finish": lambda self, p: None}))
    with pytest.raises(ConfigError, match="decorate an ExportFormat subclass"):
        register_export_format("not-a-format")(object)  # type: ignore[arg-type]
