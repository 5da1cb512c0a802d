"""The shared plug-in registry behind every family, and the families wired to it."""

from __future__ import annotations

import pytest

from nasforge.data import list_datasets
from nasforge.errors import ConfigError, DataError
from nasforge.export import list_profilers
from nasforge.nas import list_searchers
from nasforge.registry import Registry
from nasforge.supernets import list_supernets
from nasforge.supernets.trainers import list_trainers


def test_add_get_names_and_errors() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    assert reg.decorator("a")(1) == 1
    assert reg.names() == ["a", "b"] and reg.get("b") == 2 and "a" in reg
    with pytest.raises(ConfigError, match="widget 'a' is already registered"):
        reg.add("a", 3)
    assert reg.get("a") == 1
    with pytest.raises(ConfigError, match="unknown widget 'c'; known: a, b"):
        reg.get("c")


def test_missing_error_type_and_copy_independence() -> None:
    reg: Registry[str] = Registry("dataset", missing=DataError)
    reg.add("x", "X")
    other = reg.copy()
    other.add("y", "Y")
    assert reg.names() == ["x"] and other.names() == ["x", "y"]
    with pytest.raises(DataError):
        reg.get("y")


def test_every_family_lists_its_builtins() -> None:
    assert {"mbv3-small", "ofa-mbv3-w1.0", "ofa-mbv3-w1.2"} <= set(list_supernets())
    assert "sandwich" in list_trainers()
    assert "optuna" in list_searchers()
    assert {"ort-cpu", "torch-cpu"} <= set(list_profilers())
    assert {"digits", "shapes", "cifar10", "folder"} <= set(list_datasets())


def test_announced_plug_in_is_imported_on_first_request(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A higher layer announces a plug-in by module name; the family's registry imports it when asked for it."""
    import nasforge.registry as registry

    monkeypatch.setattr(registry, "_ANNOUNCED", {})
    reg: Registry[int] = Registry("gadget", hints={"late": "import the_plugin first"})
    monkeypatch.setattr(registry, "_GADGETS", reg, raising=False)
    (tmp_path / "gadget_plugin_for_test.py").write_text(
        "import nasforge.registry\nnasforge.registry._GADGETS.add('late', 7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown gadget 'late'; import the_plugin first; known: $") as exc:
        reg.get("late")
    assert "\n" not in str(exc.value)
    registry.announce("gadget", "late", "gadget_plugin_for_test")
    assert reg.names() == ["late"] and "late" in reg
    assert reg.get("late") == 7 and reg.get("late") == 7
