"""Models built by the user's own Python code, for ``nasforge prune --model``.

A factory spec is ``path/to/file.py:make_model`` or ``package.module:make_model`` (importable from ``sys.path``),
optionally followed by ``?key=value&...`` (JSON values, as zoo options) passed to the factory as keyword
arguments. ``num_classes`` and ``in_channels`` (from the dataset) are passed too when the factory names them as
parameters and the spec does not set them. The factory may be a function or a class; it must return an
``nn.Module`` whose forward takes one image batch and returns one logits tensor ``(N, num_classes)``.

Importing the file runs it: that is the user's own code, named on the command line. A path read from a saved
file is never imported: a ``model.pt`` pruned from a factory model records the spec (base kind ``factory``), and
re-loading it needs ``--model`` given again.

A ``torch.export`` program (``.pt2``) is refused, before it is opened (:func:`refuse_exported_program`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.options import parse_key_values

__all__ = ["FACTORY_KIND", "FactorySpec", "parse_factory_spec", "build_factory_model", "check_model_output",
           "factory_model", "rebuild_factory_base", "refuse_exported_program"]

#: the ``base`` kind recorded in a ``model.pt`` pruned from a factory model
FACTORY_KIND = "factory"

_FORM = "FILE.py:FUNCTION or package.module:FUNCTION (optionally ?key=value&...)"
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_AUTO_KWARGS = ("num_classes", "in_channels")


@dataclass(frozen=True)
class FactorySpec:
    """A parsed ``--model`` value: where the factory lives, its name, and the keyword arguments given."""

    target: str
    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        """Whether the factory lives in a ``.py`` file (else in an importable module)."""
        return self.target.endswith(".py")

    @property
    def name(self) -> str:
        """``target:function``, without the keyword arguments (what ``--model`` must name again to re-load)."""
        return f"{self.target}:{self.function}"


def refuse_exported_program(text: str) -> None:
    """Raise a ConfigError when ``text`` names a ``torch.export`` program (``.pt2``), saying why and what to pass.

    Tried with Torch-Pruning 1.6 and torch 2.13: ``torch.export.load(path).module()`` is a GraphModule whose
    forward calls aten ops on bare parameters; its submodules are plain ``Module`` parameter holders, not Conv2d /
    BatchNorm2d / Linear, so no forward hook fires (MACs count 0), Torch-Pruning finds no prunable layer (a
    MetaPruner step removes no channel) and ``.eval()`` raises NotImplementedError. The file is not opened:
    ``torch.export.load`` is not pickle-free (its docs warn it "uses pickle under the hood"; in torch 2.13
    ``pt2_archive/_package.py`` reads pickled weights and constants with ``torch.load(weights_only=False)`` and
    ``pickle.loads``).
    """
    if text.split("?")[0].lower().endswith(".pt2"):
        raise ConfigError(f"{text!r} is a torch.export program (.pt2), which cannot be pruned: it holds traced aten "
                          "ops on bare parameters, no Conv2d/BatchNorm/Linear layers to remove channels from (and "
                          "torch.export.load unpickles); pass the Python code that builds the model instead: --model "
                          "file.py:make_model --weights state_dict.pt")


def parse_factory_spec(text: str) -> FactorySpec:
    """Parse a ``--model`` value (see the module docstring).

    Raises:
        ConfigError: a ``.pt2`` file, no ``:FUNCTION``, a target that is neither a ``.py`` path nor a module name,
            or an option that is not ``key=value``.
    """
    refuse_exported_program(text)
    head, _, query = text.partition("?")
    target, sep, function = head.rpartition(":")
    if not sep or not target or not function:
        raise ConfigError(f"--model {text!r} must be {_FORM}, e.g. --model models/net.py:make_model")
    if not re.fullmatch(_MODULE_NAME, function):
        raise ConfigError(f"--model {text!r}: {function!r} is not a Python name; write {_FORM}")
    if not target.endswith(".py") and not re.fullmatch(_MODULE_NAME, target):
        raise ConfigError(f"--model {text!r}: {target!r} is neither a .py file nor a module name; write {_FORM}")
    kwargs = parse_key_values(filter(None, query.split("&")), lambda part: (
        f"--model option {part!r} in {text!r} must be key=value, e.g. {head}?width=32"))
    return FactorySpec(target, function, kwargs)


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"--model file {str(path)!r} does not exist; give the path of the .py file that defines "
                          "the factory")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"nasforge_user_model_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        with _on_sys_path(str(path.resolve().parent), first=True):  # as `python file.py`: it may import its siblings
            spec.loader.exec_module(module)
    except Exception as exc:  # the user's own code may raise anything; say where, keep the chain for --debug
        sys.modules.pop(name, None)
        raise ConfigError(f"--model: running {str(path)!r} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    return module


@contextlib.contextmanager
def _on_sys_path(folder: str, first: bool) -> Iterator[None]:
    """``folder`` on ``sys.path`` for the block only (first, or last so that installed packages win)."""
    if folder in sys.path:
        yield
        return
    sys.path.insert(0 if first else len(sys.path), folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def _import_module(name: str) -> ModuleType:
    try:
        with _on_sys_path(os.getcwd(), first=False):  # as `python -m`: a package in the working folder imports
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"--model: module {name!r} is not importable (not installed, not in the working "
                              "folder, not on PYTHONPATH); give a .py file path instead, or fix the name") from None
        raise ConfigError(f"--model: importing {name!r} failed: {_first_line(exc)}") from exc
    except Exception as exc:  # the user's own code may raise anything
        raise ConfigError(f"--model: importing {name!r} failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def _factory(spec: FactorySpec) -> Callable[..., Any]:
    module = _import_file(Path(spec.target)) if spec.is_file else _import_module(spec.target)
    obj: Any = module
    for part in spec.function.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise ConfigError(f"--model {spec.name}: {spec.target} has no {spec.function!r}; callables there: "
                              f"{', '.join(public[:12]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model {spec.name}: {spec.function!r} is not callable (type {type(obj).__name__}); "
                          "name the function or class that returns the nn.Module")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


def build_factory_model(spec: FactorySpec, *, num_classes: int | None = None, in_channels: int | None = None,
                        kwargs: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Import the factory of ``spec`` and call it; returns ``(model in eval mode, the keyword arguments used)``.

    Args:
        num_classes, in_channels: the dataset's, passed where the factory names them and the spec does not.
        kwargs: keyword arguments to call with instead (re-loading a saved model: the recorded ones).

    Raises:
        ConfigError: the file or module cannot be found or imported, it has no such callable, the call fails, or it
            returns something other than an ``nn.Module``.
    """
    factory = _factory(spec)
    if kwargs is None:
        kwargs = dict(spec.kwargs)
        params = _parameters(factory)
        for key, value in zip(_AUTO_KWARGS, (num_classes, in_channels), strict=True):
            if value is not None and key in params and key not in kwargs:
                kwargs[key] = value
    kwargs = dict(kwargs)
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's own code may raise anything
        raise ConfigError(f"--model {spec.name}: calling it with {kwargs} failed: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec.name} returned a {type(model).__name__}, not a torch.nn.Module; return the "
                          "model (unpruned, e.g. `return MyNet(num_classes)`)")
    return model.eval(), kwargs


def _parameters(factory: Callable[..., Any]) -> set[str]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass only what the spec says
        return set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_model_output(model: nn.Module, example: torch.Tensor, num_classes: int, name: str) -> None:
    """Check that ``model(example)`` returns one logits tensor ``(N, num_classes)``; ConfigError otherwise."""
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as exc:  # the user's own forward may raise anything
        raise ConfigError(f"--model {name}: forward on a batch of shape {tuple(example.shape)} failed: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"--model {name}: forward returns a {type(out).__name__}, not one tensor; nasforge prune "
                          f"needs one logits tensor (N, {num_classes}): wrap the model so forward returns it")
    if tuple(out.shape) != (example.shape[0], num_classes):
        raise ConfigError(f"--model {name}: forward returns shape {tuple(out.shape)} for a batch of "
                          f"{example.shape[0]}; expected logits ({example.shape[0]}, {num_classes}) for the dataset's "
                          f"{num_classes} classes (pass num_classes through the factory)")


def factory_model(spec: FactorySpec, num_classes: int, in_channels: int, example: torch.Tensor
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """The user's model for a dataset of ``num_classes`` classes and ``in_channels`` channels, its output checked
    on ``example``; returns ``(model in eval mode, the base record a pruned model.pt keeps)``."""
    model, kwargs = build_factory_model(spec, num_classes=num_classes, in_channels=in_channels)
    check_model_output(model, example, num_classes, spec.name)
    return model, {"kind": FACTORY_KIND, "spec": spec.name, "kwargs": kwargs}


def rebuild_factory_base(base: dict[str, Any], model_spec: str | None, path: str | Path
                         ) -> tuple[nn.Module | None, dict[str, Any]]:
    """The unpruned model of the pruned-model file ``path`` whose recorded base is ``base``, when that is a factory
    model: built by ``--model model_spec`` (the recorded keyword arguments, updated by the spec's own), never by
    the spec read from the file. Returns ``(model or None for other kinds, the base to record)``.

    Raises:
        ConfigError: a factory model without ``model_spec``, or ``model_spec`` given for another kind of base.
    """
    if base.get("kind") != FACTORY_KIND:
        if model_spec is not None:
            raise ConfigError(f"--model {model_spec}: {path} was not pruned from a factory model (its base is "
                              f"{base.get('kind')!r}); drop --model")
        return None, base
    if model_spec is None:
        raise ConfigError(f"{path} was pruned from your factory {base.get('spec')}: pass --model {base.get('spec')}")
    spec = parse_factory_spec(model_spec)
    model, kwargs = build_factory_model(spec, kwargs={**dict(base.get("kwargs") or {}), **spec.kwargs})
    return model, {**base, "spec": spec.name, "kwargs": kwargs}
