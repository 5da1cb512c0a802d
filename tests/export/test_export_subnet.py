"""Subnet export: every registered space's corners, and `export_subnet` from checkpoints and run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nasforge.deploy import export_subnet
from nasforge.errors import ArchitectureError, ConfigError, ExportError
from nasforge.export import export_onnx, read_metadata
from nasforge.export._slim import slim_onnx
from nasforge.io import sha256_file
from nasforge.supernets import create_supernet, list_supernets
from nasforge.supernets.checkpoint import save_checkpoint

SMALL = {"num_classes": 10, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
         "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5],
         "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 48,
         "feature_width": 64}


@pytest.mark.parametrize("name", list_supernets())
def test_corner_subnets_of_every_space_export_with_parity(name: str, tmp_path: Path) -> None:
    net = create_supernet(name)
    space = net.space
    for corner in (space.smallest(), space.largest()):
        sub = net.extract(corner).eval()
        shape = net.input_shape(corner)
        if shape[-1] > 64:  # ImageNet spaces: the smallest resolution keeps the test fast
            corner = space.canonical(corner.replace(r=min(space.dim("r").choices)))
            sub, shape = net.extract(corner).eval(), net.input_shape(corner)
        x = torch.randn(1, *shape)
        path = tmp_path / f"{name}.onnx"
        res = export_onnx(sub, x, path, dynamic_batch=True, exporter="torchscript", atol=1e-3,
                          check_inputs=[torch.randn(3, *shape)])
        assert res.max_abs_diff < 1e-3 and res.parity_inputs >= 4
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: np.random.randn(5, *shape).astype(np.float32)})[0]
        assert out.shape[0] == 5


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run-like folder: checkpoint plus the train.json that records its dataset."""
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "supernet.pt", create_supernet("mbv3-small", **SMALL), "mbv3-small", SMALL)
    (folder / "train.json").write_text(json.dumps({"data": "digits", "image_size": 16}))
    return folder


def test_export_from_a_run_folder_carries_metadata(run_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.onnx"
    res = export_subnet(run_folder, out, arch="smallest", dynamic_batch=True, real_inputs=4, exporter="torchscript")
    meta = read_metadata(out)
    assert json.loads(meta["architecture"]) == res.arch.to_dict()
    assert meta["source_checkpoint_sha256"] == sha256_file(run_folder / "supernet.pt")
    assert meta["dataset"] == "digits" and meta["dynamic_batch"] == "true"
    assert len(json.loads(meta["normalization_mean"])) == 1 and "nasforge_version" in meta
    assert res.real_inputs == 5 and res.max_abs_diff < 1e-4  # 4 real images one by one, and as one batch
    assert json.loads(meta["input_shape"]) == [1, 1, 12, 12]  # the smallest resolution of this space


def test_export_from_a_subnet_folder_and_resolution(run_folder: Path, tmp_path: Path) -> None:
    sub = run_folder / "subnets" / "0"
    sub.mkdir(parents=True)
    net = create_supernet("mbv3-small", **SMALL)
    (sub / "arch.json").write_text(net.space.smallest().to_json())
    res = export_subnet(sub, tmp_path / "a.onnx", resolution=16, real_inputs=2, exporter="torchscript")
    assert res.arch["r"] == 16 and res.input_shape == (1, 1, 16, 16)
    with pytest.raises(ConfigError, match="resolutions"):
        export_subnet(run_folder, tmp_path / "b.onnx", resolution=20)


def test_bad_export_requests_are_clear(run_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchitectureError):
        export_subnet(run_folder, tmp_path / "x.onnx", arch='{"ks": [9, 9, 9, 9]}')
    with pytest.raises(ConfigError, match="neither"):
        export_subnet(run_folder, tmp_path / "x.onnx", arch="nope.txt")
    with pytest.raises(ConfigError, match="must end in .onnx"):
        export_subnet(run_folder, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="--format"):
        export_subnet(run_folder, tmp_path / "x.onnx", fmt="tflite")
    bare = tmp_path / "bare.pt"
    bare.write_bytes((run_folder / "supernet.pt").read_bytes())
    with pytest.raises(ConfigError, match="--data"):
        export_subnet(bare, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_slimming_is_kept_only_when_it_helps(tmp_path: Path) -> None:
    class Foldable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = torch.ones(4) * 2.0 + 1.0  # constant arithmetic the exporter keeps as nodes
            return (x @ self.w) * scale + torch.zeros(4)

    x = torch.randn(2, 4)
    path = tmp_path / "f.onnx"
    export_onnx(Foldable().eval(), x, path, exporter="torchscript", metadata={"tag": "kept"})
    report = slim_onnx(path, [x.numpy()])
    assert report["kept"] and report["nodes_after"] < report["nodes_before"]  # the constants are folded
    assert report["max_abs_diff"] <= 1e-4 and read_metadata(path)["tag"] == "kept"
    again = path.read_bytes()
    second = slim_onnx(path, [x.numpy()])  # nothing left to remove: the file stays as it is
    assert not second["kept"] and second["reason"] and path.read_bytes() == again
    with pytest.raises(ExportError):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx")
        slim_onnx(bad, [x.numpy()])
