"""``nasforge quantize``: the command end to end, QAT from a zoo source, and bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from inprocess_cli import run_cli

from nasforge.cli import main


def test_quantize_command(cnn, tmp_path: Path) -> None:
    _, fp32 = cnn
    out = tmp_path / "int8" / "model.int8.onnx"
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  quick: {backend: ort-cpu, runs: 20, warmup: 2}\n")
    res = run_cli("quantize", str(fp32), "--device", "quick", "--devices", str(devices), "--batch", "1,4",
                  "--calibration", "percentile", "--out", str(out), env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| accuracy (" in res.stdout and "| batch | FP32 p50 ms |" in res.stdout
    assert "reduce_range=" in res.stderr  # the decision and its reason are logged
    report = json.loads((tmp_path / "int8" / "model.int8.report.json").read_text())
    assert report["method"] == "static"  # a conv model, auto method; the dataset came from the file's metadata
    assert report["settings"]["calibration"] == "percentile"
    assert report["check"]["accuracy_drop"] <= 0.02 and not report["check"]["saturation"]
    assert set(report["latency"]) == {"1", "4"}
    assert (tmp_path / "int8" / "model.int8.report.md").read_text().startswith("# INT8 quantization")
    onnx.checker.check_model(onnx.load(str(out)))


def test_qat_from_a_zoo_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nasforge.data import load_data
    from nasforge.export import export_onnx
    from nasforge.prune import create_model

    data = "shapes?n=300&classes=4"
    splits = load_data(data, seed=0)
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=4, in_channels=3, widths=[8, 8, 16]).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    export_onnx(net, splits.val.x[:1], tmp_path / "m.onnx", exporter="torchscript", dynamic_batch=True,
                metadata={"dataset": data})
    assert main(["quantize", str(tmp_path / "m.onnx"), "--method", "qat", "--source", "zoo:resnet8?widths=[8,8,16]",
                 "--weights", str(tmp_path / "w.pt"), "--qat-epochs", "1", "--device", "none", "--json",
                 "--out", str(tmp_path / "q.onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["qat"]["epochs"] == 1 and report["qat"]["layers"] >= 8
    assert report["check"]["rel_l2"] < 0.25


@pytest.mark.parametrize(("argv", "message"), [
    (["{text}", "--data", "digits"], "not a valid ONNX"),
    (["{pt}", "--data", "digits"], "PyTorch checkpoint"),
    (["{missing}", "--data", "digits"], "no ONNX file"),
    (["{plain}", "--method", "static"], "--data is missing"),
    (["{plain}", "--data", "digits", "--batch", "0"], "--batch"),
    (["{plain}", "--data", "nosuchdata"], "nosuchdata"),
    (["{plain}", "--data", "digits", "--device", "nosuchdevice"], "unknown device"),
    (["{plain}", "--data", "digits", "--engine", "x.engine"], "--target tensorrt"),
    (["{plain}", "--data", "digits", "--method", "qat"], "--source"),
    (["{plain}", "--data", "digits", "--float", "dw"], "float group 'dw' is unknown"),
])
def test_bad_input_is_one_line(cnn, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                               message: str) -> None:
    _, fp32 = cnn
    plain = tmp_path / "plain.onnx"  # the CNN without its recorded dataset
    model = onnx.load(str(fp32))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    (tmp_path / "text.onnx").write_text("hello")
    (tmp_path / "ckpt.pt").write_bytes(b"PK\x03\x04zip")
    paths = {"text": tmp_path / "text.onnx", "pt": tmp_path / "ckpt.pt", "missing": tmp_path / "nope.onnx",
             "plain": plain}
    out = tmp_path / "out.onnx"
    args = ["quantize", *[a.format(**paths) for a in argv], "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not out.exists()
