"""The wheel contains every subpackage: build it, install it in a fresh venv, import everything."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"nasforge": "nasforge", "nas": "nasforge.nas", "prune": "nasforge.prune", "quantize": "nasforge.quantize",
          "supernets": "nasforge.supernets", "export": "nasforge.export"}


def _all_subpackages() -> list[str]:
    names = []
    for folder, pkg in MAPPED.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder).parts
            names.append(".".join((pkg, *rel)))
    return names


def test_every_package_folder_is_listed_in_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    missing = [name for name in _all_subpackages() if f'"{name}"' not in text]
    assert not missing, f"pyproject.toml does not list {missing}; the wheel would drop them"


@pytest.mark.slow
def test_wheel_installs_and_imports_every_subpackage(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(ROOT)], check=True, cwd=tmp_path)
    wheels = list(wheel_dir.glob("nasforge-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies come from this environment, appended AFTER the fresh site-packages (its .pth files,
    # such as an editable install's finder, are not processed), so nasforge itself must come from the wheel.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    names = _all_subpackages()
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    m = importlib.import_module(n)\n"
        f"    assert m.__file__.startswith({str(env_dir)!r}), (n, m.__file__)\n"
        "import nasforge.cli; print('ok', len(sys.modules))\n"
    )
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")
    cli = subprocess.run([str(env_dir / "bin" / "nasforge"), "--version"], capture_output=True, text=True)
    assert cli.returncode == 0 and "nasforge" in cli.stdout
