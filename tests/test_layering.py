"""The layering of ARCHITECTURE.md, checked on the source: imports point down the pipeline, never into another
package's private modules.

Layers, bottom to top: the foundation (``nasforge.errors``, ``io``, ``registry``, ``runlock``, ``distributed``,
``progress``, ``_version``, ``onnx_io``, ``nasforge.data``), then ``supernets``, ``nas``, ``prune`` / ``quantize``, ``export``
(with ``nasforge.devices``), and the plumbing at the top (the CLI, configs, the run pipeline and the single-command
jobs). A module may import its own layer and the ones below. The known exceptions are listed here, each to be
removed by the redesign (issue 20); the test fails on a new exception and on a listed one that is gone, so the
list stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("supernets", "nas", "prune", "quantize", "export", "nasforge")
FOUNDATION = frozenset({"errors", "io", "registry", "runlock", "runfolder", "distributed", "progress", "_version",
                        "data", "onnx_io"})
LAYER = {"foundation": 0, "supernets": 1, "nas": 2, "prune": 3, "quantize": 3, "export": 4, "plumbing": 5}

#: upward imports still to remove: quantize reaches export for device fingerprints (its reduce_range decision),
#: the target device of a quantization, TensorRT build planning and the ONNX export of a QAT model
ALLOWED_UPWARD = frozenset({
    ("quantize/_api.py", "nasforge.devices"),
    ("quantize/_api.py", "nasforge.export"),
    ("quantize/_capabilities.py", "nasforge.export"),
    ("quantize/_qat.py", "nasforge.export"),
    ("quantize/_trt.py", "nasforge.export"),
})
#: private modules of another package still imported (none left: the ONNX input helpers are nasforge.onnx_io)
ALLOWED_PRIVATE: frozenset[tuple[str, str]] = frozenset()


def _layer(package: str, module: str) -> str:
    """Layer of ``module`` (a ``nasforge.X.Y`` name without the ``nasforge.`` prefix split off), ``package`` being
    its top folder."""
    if package != "nasforge":
        return package
    head = module.split(".")[0]
    if head in FOUNDATION:
        return "foundation"
    return "export" if head == "devices" else "plumbing"


def _imports() -> list[tuple[str, str, str, str]]:
    """``(file, its layer, imported module, the imported module's layer)`` for every ``nasforge`` import."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            own = "/".join(path.relative_to(ROOT / package).with_suffix("").parts)
            own_layer = _layer(package, own.replace("/", "."))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("nasforge."):
                    parts = node.module.split(".")[1:]
                    target = parts[0] if parts[0] in PACKAGES[:-1] else "nasforge"
                    rest = parts[1:] if target != "nasforge" else parts
                    found.append((rel, own_layer, node.module, _layer(target, ".".join(rest))))
    return found


def test_imports_point_down_the_pipeline() -> None:
    upward = {(f, mod) for f, layer, mod, target in _imports() if LAYER[target] > LAYER[layer]}
    assert upward - ALLOWED_UPWARD == set(), "new upward imports (pass a callable down instead)"
    assert ALLOWED_UPWARD - upward == set(), "these exceptions are gone: remove them from ALLOWED_UPWARD"


def _private(file: str, module: str) -> bool:
    """Whether ``file`` imports a private module of a package other than its own."""
    parts = module.split(".")[1:]
    if parts[0] in PACKAGES[:-1]:  # nasforge.<package>.<...>
        return parts[0] != file.split("/")[0] and any(p.startswith("_") for p in parts[1:])
    return file.split("/")[0] != "nasforge" and parts[0].startswith("_") and parts[0] != "_version"


def test_no_package_reaches_into_another_packages_private_modules() -> None:
    private = {(f, mod) for f, _, mod, _ in _imports() if _private(f, mod)}
    assert private - ALLOWED_PRIVATE == set(), "import the package's public name instead (add it to its __all__)"
    assert ALLOWED_PRIVATE - private == set(), "these exceptions are gone: remove them from ALLOWED_PRIVATE"


def test_the_layer_table_covers_every_package() -> None:
    layers = {layer for _, layer, _, _ in _imports()}
    assert layers <= set(LAYER) and {"supernets", "nas", "prune", "quantize", "export", "plumbing"} <= layers
