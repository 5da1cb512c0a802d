"""`nasforge prune --model`: the user's own model, built by a Python factory (a .py file or an importable module),
pruned, reported and exported like a zoo model; the saved model.pt re-loads only with --model given again; a
torch.export program (.pt2) is refused without being opened."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from inprocess_cli import run_cli
from torch import nn

from nasforge.prune import load_pruned

FACTORY = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def make_model(num_classes, in_channels, width=16):
    return Net(num_classes, in_channels, width)


def make_pair(num_classes):
    class Pair(Net):
        def forward(self, x):
            return super().forward(x), x
    return Pair(num_classes, 1)


def make_dict():
    return {"not": "a module"}


NOT_CALLABLE = 3
'''
QUICK = ("--finetune-epochs", "0", "--device", "none", "--no-export")


def _factory_file(folder: Path, name: str = "mynet.py") -> Path:
    path = folder / name
    path.write_text(FACTORY)
    return path


def _make_net(width: int = 16) -> nn.Module:
    namespace: dict[str, object] = {}
    exec(compile(FACTORY, "factory", "exec"), namespace)  # the test's own source text, as the user's file
    return namespace["make_model"](10, 1, width)  # type: ignore[operator]


def _prune(*args: str) -> tuple[int, str, str]:
    res = run_cli("prune", *args, env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    return res.returncode, res.stdout, res.stderr


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A factory model pruned end to end (report, ONNX); returns (output folder, the --model spec)."""
    folder = tmp_path_factory.mktemp("user")
    spec = f"{_factory_file(folder)}:make_model?width=16"
    torch.manual_seed(0)
    torch.save(_make_net().state_dict(), folder / "w.pt")
    out = folder / "out"
    rc, stdout, stderr = _prune("--model", spec, "--data", "digits", "--weights", str(folder / "w.pt"),
                                "--target", "macs=0.5", "--finetune-epochs", "1", "--device", "none",
                                "--out", str(out), "--json")
    assert rc == 0, stderr[-2000:]
    report = json.loads(stdout)
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert report["onnx"]["max_abs_diff"] < 1e-4
    return out, spec.split("?")[0]


def test_factory_file_end_to_end(pruned: tuple[Path, str]) -> None:
    out, spec = pruned
    for name in ("model.pt", "model.onnx", "report.json", "report.md", "widths.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["job"]["model"].startswith(spec) and report["job"]["source"] is None
    assert {"before", "finetuned", "test_before", "test_after"} <= set(report["accuracy"])
    assert report["widths"]["features.0"][1] < report["widths"]["features.0"][0]  # channels removed
    assert f"# Pruning report: {spec}" in (out / "report.md").read_text()
    # the model.pt records the factory (never imported from there) and reloads from an unpruned instance
    model, state = load_pruned(out / "model.pt", model=_make_net())
    assert state["base"] == {"kind": "factory", "spec": spec,
                             "kwargs": {"width": 16, "num_classes": 10, "in_channels": 1}}
    x = torch.randn(3, 1, 16, 16)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = np.concatenate([sess.run(None, {"input": x[i : i + 1].numpy()})[0] for i in range(3)])
    assert np.abs(onnx_out - model(x).detach().numpy()).max() < 1e-4
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]


def test_reprune_needs_the_factory_again(pruned: tuple[Path, str], tmp_path: Path) -> None:
    out, spec = pruned
    rc, _, stderr = _prune(str(out / "model.pt"), "--target", "params=0.8", *QUICK, "--out", str(tmp_path / "a"))
    assert rc != 0 and len(stderr.strip().splitlines()) == 1
    assert f"was pruned from your factory {spec}: pass --model {spec}" in stderr
    rc, _, stderr = _prune(str(out / "model.pt"), "--model", spec, "--target", "params=0.8", *QUICK,
                           "--out", str(tmp_path / "b"))
    assert rc == 0, stderr[-2000:]
    first = json.loads((out / "report.json").read_text())
    second = json.loads((tmp_path / "b" / "report.json").read_text())
    assert len(second["history"]) > len(first["history"])
    assert second["params_after"] <= 0.8 * first["params_after"]
    model, _ = load_pruned(tmp_path / "b" / "model.pt", model=_make_net())  # the whole history replays
    assert sum(p.numel() for p in model.parameters()) == second["params_after"]
    with pytest.raises(ValueError, match="pruned from your factory"):
        load_pruned(tmp_path / "b" / "model.pt")


def test_module_factory_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "nf_user_nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    _factory_file(package, "cnn.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, _, stderr = _prune("--model", "nf_user_nets.cnn:Net?width=8", "--data", "digits", "--train-epochs", "1",
                           *QUICK, "--out", str(tmp_path / "out"))
    assert rc == 0, stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    state = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert state["base"]["spec"] == "nf_user_nets.cnn:Net" and state["base"]["kwargs"]["width"] == 8


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    spec = f"{_factory_file(tmp_path)}:make_model?width=8"
    torch.save(_make_net(16).state_dict(), tmp_path / "w16.pt")
    rc, _, stderr = _prune("--model", spec, "--data", "digits", "--weights", str(tmp_path / "w16.pt"), *QUICK,
                           "--out", str(tmp_path / "out"))
    assert rc != 0 and len(stderr.strip().splitlines()) == 1
    assert "does not fit the model: size mismatch for features.0.weight" in stderr


@pytest.mark.parametrize(("target", "message"), [
    ("{file}:make_net", "has no 'make_net'; callables there: Net, make_dict, make_model, make_pair"),
    ("{file}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable (type int)"),
    ("{file}:make_dict", "returned a dict, not a torch.nn.Module"),
    ("{file}:make_pair", "forward returns a tuple, not one tensor"),
    ("{folder}/absent.py:make_model", "absent.py' does not exist"),
    ("nf_no_such_package.nets:make_model", "module 'nf_no_such_package.nets' is not importable"),
    ("{file}", "must be FILE.py:FUNCTION or package.module:FUNCTION"),
])
def test_factory_errors_are_one_line(tmp_path: Path, target: str, message: str) -> None:
    spec = target.format(file=_factory_file(tmp_path), folder=tmp_path)
    rc, _, stderr = _prune("--model", spec, "--data", "digits", "--train-epochs", "1", *QUICK,
                           "--out", str(tmp_path / "out"))
    assert rc != 0 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr
    assert not (tmp_path / "out" / "model.pt").exists()


def test_exported_program_is_refused_unopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = torch.export.export(_make_net().eval(), (torch.randn(2, 1, 16, 16),))
    torch.export.save(program, tmp_path / "net.pt2")
    # why: the loaded program's layers are aten calls on bare parameters, no Conv2d left for channel pruning
    loaded = torch.export.load(tmp_path / "net.pt2").module()
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) for m in loaded.modules())

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a .pt2 must be refused before torch.export.load unpickles it")

    monkeypatch.setattr(torch.export, "load", no_load)
    for args in (["--model", str(tmp_path / "net.pt2")], [str(tmp_path / "net.pt2")]):
        rc, _, stderr = _prune(*args, "--data", "digits", *QUICK, "--out", str(tmp_path / "out"))
        assert rc != 0 and len(stderr.strip().splitlines()) == 1, stderr
        assert "is a torch.export program (.pt2), which cannot be pruned" in stderr
        assert "--model file.py:make_model --weights state_dict.pt" in stderr


def test_model_flag_is_refused_with_other_sources(tmp_path: Path) -> None:
    spec = f"{_factory_file(tmp_path)}:make_model"
    rc, _, stderr = _prune("zoo:resnet8", "--model", spec, "--data", "digits", *QUICK, "--out", str(tmp_path / "o"))
    assert rc != 0 and "--model goes alone, or with a model.pt pruned from that model" in stderr
    rc, _, stderr = _prune("--data", "digits", *QUICK, "--out", str(tmp_path / "o"))
    assert rc != 0 and "nothing to prune: give SOURCE" in stderr


def test_qat_of_a_factory_model_takes_model_again(pruned: tuple[Path, str], tmp_path: Path) -> None:
    out, spec = pruned
    args = ("quantize", str(out / "model.onnx"), "--method", "qat", "--qat-epochs", "1", "--calib-samples", "64")
    res = run_cli(*args, "--out", str(tmp_path / "a.onnx"), env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert f"pass --model {spec}" in res.stderr
    res = run_cli(*args, "--model", spec, "--out", str(tmp_path / "b.onnx"), "--json", env={"OMP_NUM_THREADS": "1"},
                  torch_threads=1)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["qat"]["epochs"] == 1 and (tmp_path / "b.onnx").is_file()
