"""The command line: exit codes, one-line errors, `space` commands, `--debug`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nasforge.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasforge", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_version() -> None:
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("nasforge ")


def test_space_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "list", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert {"mbv3-small", "ofa-mbv3-w1.0", "ofa-mbv3-w1.2"} <= set(names)


def test_space_describe_ofa_reference_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    largest = json.dumps({"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5})
    assert main(["space", "describe", "ofa-mbv3-w1.0", "--arch", largest, "--resolution", "224",
                 "--num-classes", "1000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["params"], out["macs"]) == (7_664_760, 566_170_656)
    smallest = json.dumps({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 128})
    assert main(["space", "describe", "ofa-mbv3-w1.0", "--arch", smallest, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 3_410_792


def test_space_describe_reads_arch_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = tmp_path / "a.json"
    arch.write_text(json.dumps({"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5}))
    assert main(["space", "describe", "ofa-mbv3-w1.2", "--arch", str(arch), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 843_101_040


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["space", "describe", "nope"], "unknown supernet"),
        (["space", "describe", "mbv3-small", "--arch", '{"ks": [9]}'], "'ks'"),
        (["space", "describe", "mbv3-small", "--arch", "{bad json"], "not valid JSON"),
        (["space", "describe", "mbv3-small", "--arch", "missing.json"], "does not exist"),
        (["run", "--config", "missing.yaml"], "does not exist"),
        (["run", "--resume"], "--out"),
        (["run", "--epochs", "0", "--out", "x"], "epochs=0"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert needle in lines[0]


def test_debug_shows_traceback(tmp_path: Path) -> None:
    res = run_cli("space", "describe", "nope", "--debug", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_unknown_config_key_exit_2(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochz: 3\n")
    res = run_cli("run", "--config", "c.yaml", "--out", "r", cwd=tmp_path)
    assert res.returncode == 2 and "epochz" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("spec", ["folder:does-not-exist", "cifar10:nowhere", "imagenet", "digits?bogus=1"])
def test_bad_data_spec_exit_2_and_nothing_written(tmp_path: Path, spec: str) -> None:
    (tmp_path / "c.yaml").write_text(f"data:\n  spec: '{spec}'\n")
    res = run_cli("run", "--config", "c.yaml", "--out", "r", "--quiet", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_bad_supernet_option_exit_2_and_nothing_written(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("supernet:\n  options: {stem_widht: 8}\n")
    res = run_cli("run", "--config", "c.yaml", "--out", "r", "--quiet", cwd=tmp_path)
    assert res.returncode == 2 and "stem_widht" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()
