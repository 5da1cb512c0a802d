"""`nasforge prune` and `nasforge prune meta-train` end to end, in-process (`python -m nasforge` itself is covered by
tests/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from inprocess_cli import run_cli

from nasforge.cli import main
from nasforge.prune import load_pruned
from nasforge.supernets import create_supernet
from nasforge.supernets.checkpoint import save_checkpoint

DATA = "shapes?n=300&classes=4"
ZOO = "zoo:resnet8?widths=[8,8,16]"


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned")
    res = run_cli("prune", ZOO, "--data", DATA, "--train-epochs", "1", "--finetune-epochs", "1", "--target", "macs=2x",
                  "--out", str(out), "--json", env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert report["onnx"]["max_abs_diff"] < 1e-4
    return out


def test_prune_command_outputs(pruned_dir: Path) -> None:
    for name in ("model.pt", "model.onnx", "report.json", "report.md", "widths.png"):
        assert (pruned_dir / name).is_file(), name
    report = json.loads((pruned_dir / "report.json").read_text())
    assert {"before", "pruned", "finetuned", "test_before", "test_after"} <= set(report["accuracy"])
    assert report["latency_before_ms"] > 0 and report["latency_after_ms"] > 0 and report["device"] == "cpu"
    assert report["speedup_per_macs_reduction"] == pytest.approx(report["speedup"] / report["macs_reduction"])
    assert "| MACs |" in (pruned_dir / "report.md").read_text()
    # the saved model reloads without unpickling classes and matches the exported ONNX file
    model, state = load_pruned(pruned_dir / "model.pt")
    x = torch.randn(3, 3, 32, 32)
    sess = ort.InferenceSession(str(pruned_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = np.concatenate([sess.run(None, {"input": x[i : i + 1].numpy()})[0] for i in range(3)])
    assert np.abs(onnx_out - model(x).detach().numpy()).max() < 1e-4
    assert state["base"]["name"] == "resnet8"


def test_prune_a_pruned_model_further(pruned_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "again"
    assert main(["prune", str(pruned_dir / "model.pt"), "--target", "params=0.7", "--finetune-epochs", "0",
                 "--device", "none", "--no-export", "--out", str(out)]) == 0
    first = json.loads((pruned_dir / "report.json").read_text())
    second = json.loads((out / "report.json").read_text())
    assert len(second["history"]) > len(first["history"])
    assert second["params_after"] <= 0.7 * first["params_after"]
    model, _ = load_pruned(out / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == second["params_after"]
    assert not (out / "model.onnx").exists()


def test_latency_aware_allocation_from_the_cli(pruned_dir: Path, tmp_path: Path) -> None:
    """--allocate latency prunes by a per-layer table measured on --device and keeps the table for a rerun."""
    out = tmp_path / "aware"
    res = run_cli("prune", ZOO, "--data", DATA, "--train-epochs", "1", "--finetune-epochs", "0", "--target", "macs=2x",
                  "--allocate", "latency", "--out", str(out), "--json", env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert 0.3 * report["macs_before"] <= report["macs_after"] <= 0.5 * report["macs_before"]
    assert report["extra"]["allocation"] == "latency" and report["extra"]["layer_table"]["measured"] > 0
    table = json.loads((out / "layer_latency.json").read_text())
    assert table["device"] == "cpu" and len(table["entries"]) == report["extra"]["layer_table"]["entries"]
    assert "measured latency saved per importance" in (out / "report.md").read_text()
    model, _ = load_pruned(out / "model.pt")
    assert all(w % 4 == 0 for n, w in ((n, m.out_channels) for n, m in model.named_modules()
                                       if isinstance(m, torch.nn.Conv2d)))


def test_prune_a_supernet_subnet(tmp_path: Path) -> None:
    tiny = {"num_classes": 10, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
            "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5],
            "expand_ratios": [2, 4], "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 32,
            "feature_width": 32}
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "supernet.pt", create_supernet("mbv3-small", **tiny), "mbv3-small", tiny)
    (run / "train.json").write_text(json.dumps({"data": "digits", "image_size": 16}))
    out = tmp_path / "out"
    assert main(["prune", str(run), "--arch", "largest", "--target", "macs=0.7", "--finetune-epochs", "0",
                 "--device", "none", "--no-export", "--out", str(out)]) == 0  # ONNX parity: test_prune_command_outputs
    report = json.loads((out / "report.json").read_text())
    assert report["macs_after"] <= 0.7 * report["macs_before"]
    model, state = load_pruned(out / "model.pt")
    assert state["base"]["kind"] == "subnet" and model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("argv, message", [
    (["prune", ZOO, "--data", DATA, "--target", "macs=3", "--out", "{out}"], "keep a fraction"),
    (["prune", ZOO, "--target", "macs=0.5", "--out", "{out}"], "needs --data"),
    (["prune", "zoo:resnet7", "--data", DATA, "--out", "{out}"], "unknown zoo model"),
    (["prune", ZOO, "--data", DATA, "--out", "{out}"], "no trained weights"),
    (["prune", ZOO, "--data", DATA, "--weights", "{bad}", "--out", "{out}"], "corrupt or not a state dict"),
    (["prune", "{bad}", "--out", "{out}"], "not a nasforge"),
    (["prune", ZOO, "--data", DATA, "--weights", "{bad}", "--criterion", "gmn", "--out", "{out}"], "corrupt"),
    (["prune", ZOO, "--data", DATA, "--allocate", "latency", "--device", "none", "--out", "{out}"],
     "measures layers on --device"),
    (["prune", ZOO, "--data", DATA, "--allocate", "latency", "--layer-table", "{bad}", "--out", "{out}"],
     "layer latency table"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    out = tmp_path / "out"
    args = [a.format(out=out, bad=bad) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not out.exists()


def test_meta_train_command_and_gmn_criterion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metanet = tmp_path / "mn.pt"
    assert main(["prune", "meta-train", "--model", "resnet8?widths=[8,8,16]", "--data", DATA, "--networks", "1",
                 "--train-epochs", "1", "--meta-steps", "2", "--out", str(metanet)]) == 0
    assert metanet.is_file() and "best step" in capsys.readouterr().out
    nets = sorted((tmp_path / "mn-networks").glob("*.pt"))
    assert len(nets) == 2  # one to train on, one to validate checkpoints on
    out = tmp_path / "gmn"
    assert main(["prune", ZOO, "--data", DATA, "--weights", str(nets[0]), "--criterion", "gmn", "--metanet",
                 str(metanet), "--finetune-epochs", "1", "--device", "none", "--no-export", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["criterion"] == "gmn" and report["extra"]["metanet"]["edges"] > 0
    assert report["macs_after"] <= 0.5 * report["macs_before"]
