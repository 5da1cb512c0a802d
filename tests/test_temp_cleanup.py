"""Temporary files next to a destination name their process; the next export / quantize / atomic write removes
those of dead processes and never those of a live one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nasforge.export import export_onnx, read_metadata
from nasforge.io import atomic_write_json
from nasforge.quantize import QuantConfig, quantize
from nasforge.runlock import TEMP_PREFIX, host_tag, remove_stale_temps, temp_prefix

pytestmark = pytest.mark.skipif(os.name != "posix", reason="PID liveness of a finished child is tested on POSIX")


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftovers(folder: Path, dead_pid: int, name: str) -> dict[str, Path]:
    """What killed runs leave: a temporary folder (with a file in it) and an atomic-write temp file of a dead
    process, the same of this live process, and one made on another host (cannot be checked: kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = host_tag()
    paths = {
        "dead_dir": folder / f"{TEMP_PREFIX}{dead_pid}-{tag}-{name}-k1ll3d.export",
        "dead_file": folder / f"{TEMP_PREFIX}{dead_pid}-{tag}-{name}-abc123.tmp",
        "live_dir": folder / f"{temp_prefix(name)}running.export",
        "other_host": folder / f"{TEMP_PREFIX}{dead_pid}-{'0' * 8 if tag != '0' * 8 else '1' * 8}-{name}-x.tmp",
    }
    for key, path in paths.items():
        if key.endswith("dir"):
            path.mkdir()
            (path / name).write_bytes(b"partial")
        else:
            path.write_bytes(b"partial")
    return paths


def _check(paths: dict[str, Path]) -> None:
    assert not paths["dead_dir"].exists() and not paths["dead_file"].exists()
    assert paths["live_dir"].is_dir() and any(paths["live_dir"].iterdir())  # untouched, contents included
    assert paths["other_host"].is_file()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 4)).eval()


def test_temp_names_carry_the_pid() -> None:
    prefix = temp_prefix("model.onnx")
    assert prefix == f"{TEMP_PREFIX}{os.getpid()}-{host_tag()}-model.onnx-" and len(host_tag()) == 8
    assert len(temp_prefix("x" * 300)) < 120  # long destination names stay within NAME_MAX


def test_export_removes_dead_leftovers_only(tmp_path: Path, dead_pid: int) -> None:
    paths = _leftovers(tmp_path, dead_pid, "model.onnx")
    net, x = _net(), torch.randn(3, 16)
    result = export_onnx(net, x[:1], tmp_path / "model.onnx", exporter="torchscript", metadata={"k": "v"})
    _check(paths)
    assert result.max_abs_diff <= 1e-4 and read_metadata(tmp_path / "model.onnx")["k"] == "v"
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x[:1].numpy()})[0]
    np.testing.assert_allclose(got, net(x[:1]).detach().numpy(), atol=1e-5)
    own = [p.name for p in tmp_path.iterdir() if p.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-")]
    assert own == [paths["live_dir"].name]  # the export's own temporary folder is gone too


def test_quantize_removes_dead_leftovers_only(tmp_path: Path, dead_pid: int) -> None:
    src = tmp_path / "fp32" / "model.onnx"
    export_onnx(_net(), torch.randn(1, 16), src, exporter="torchscript", dynamic_batch=True,
                check_inputs=[torch.randn(4, 16)])
    dst = tmp_path / "int8" / "model.int8.onnx"
    paths = _leftovers(dst.parent, dead_pid, dst.name)
    report = quantize(src, dst, config=QuantConfig(method="dynamic"), device=None)
    _check(paths)
    assert report.method == "dynamic" and report.check["rel_l2"] < 0.1  # a working INT8 file, close to FP32
    assert "nasforge_quantization" in read_metadata(dst)
    assert sorted(p.name for p in dst.parent.iterdir() if not p.name.startswith(".")) == [
        "model.int8.onnx", "model.int8.report.json", "model.int8.report.md"]


def test_atomic_write_removes_dead_temp_files(tmp_path: Path, dead_pid: int) -> None:
    paths = _leftovers(tmp_path, dead_pid, "summary.json")
    atomic_write_json(tmp_path / "summary.json", {"ok": True})
    _check(paths)
    assert (tmp_path / "summary.json").read_text() == '{\n  "ok": true\n}\n'
    assert remove_stale_temps(tmp_path) == [] and remove_stale_temps(tmp_path / "missing") == []
