"""The README's set-up commands stay true: the CPU-build advice comes before the first install, and CI runs the
test command the README gives."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _first_block() -> tuple[int, str]:
    match = re.search(r"```bash\n(.*?)```", README, re.S)
    assert match, "README has no bash block"
    return match.start(), match.group(1)


def test_cpu_build_advice_precedes_the_first_install() -> None:
    start, block = _first_block()
    assert "pip install -e ." in block.splitlines()[0]
    advice = README.find("download.pytorch.org/whl/cpu")
    assert 0 <= advice < start, "a reader following the README top-down would pull a CUDA build of torch first"


def test_ci_runs_the_readme_test_command() -> None:
    _, block = _first_block()
    test_line = block.splitlines()[1].split("#")[0].strip()
    assert test_line == 'pip install -e ".[dev]" && python -m pytest -q'
    assert test_line in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
