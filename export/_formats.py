"""Deliverable formats of an exported subnet (``nasforge export --format``): one base, one registry.

Every format starts from the verified ONNX file (:func:`~nasforge.export.export_onnx`, parity-checked against
PyTorch); a format then adds what it ships beside that file. ``onnx`` adds nothing; ``tensorrt`` builds an engine
next to it (``model.engine``). Registering a format needs no import of torch, onnx or TensorRT: a format imports
its runtime only when it writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from nasforge.registry import Registry

__all__ = ["ExportFormat", "get_export_format", "list_export_formats", "register_export_format"]

_F = TypeVar("_F", bound="type[ExportFormat]")
_FORMATS: Registry[type[ExportFormat]] = Registry("export format")


class ExportFormat(ABC):
    """A deliverable built from a verified ONNX file. Subclasses are registered with
    :func:`register_export_format`, which sets ``name``; the constructor takes no arguments."""

    name: ClassVar[str]
    #: one line for help texts
    description: ClassVar[str] = ""

    @abstractmethod
    def finish(self, onnx_path: Path) -> dict[str, Any] | None:
        """Turn the verified ONNX file at ``onnx_path`` into this format's artefact.

        Returns:
            A JSON-ready record of what was written beside the ONNX file, or None when nothing was.

        Raises:
            MissingDependencyError: the format's runtime is not installed.
            ConfigError / ExportError: it cannot be built here (no GPU, a layer the runtime refuses), in one line.
        """


def register_export_format(name: str) -> Callable[[_F], _F]:
    """Class decorator registering an :class:`ExportFormat` subclass as ``name``."""

    return _FORMATS.class_decorator(name, ExportFormat, "register_export_format")


def list_export_formats() -> list[str]:
    """Names of the registered formats, sorted."""
    return _FORMATS.names()


def get_export_format(name: str) -> ExportFormat:
    """The format registered as ``name``; :class:`ConfigError` listing the known ones otherwise."""
    return _FORMATS.get(name)()


@register_export_format("onnx")
class OnnxFormat(ExportFormat):
    """The verified ONNX file itself."""

    description = "the verified ONNX file (onnxruntime, and any ONNX runtime)"

    def finish(self, onnx_path: Path) -> dict[str, Any] | None:
        return None


@register_export_format("tensorrt")
class TensorrtFormat(ExportFormat):
    """The ONNX file plus a TensorRT engine built from it next to it (``.engine``)."""

    description = "the ONNX file plus a TensorRT engine beside it (needs nasforge[tensorrt] and an NVIDIA GPU)"

    def finish(self, onnx_path: Path) -> dict[str, Any] | None:
        from ._tensorrt import TrtBuildConfig, build_engine

        return build_engine(onnx_path, onnx_path.with_suffix(".engine"), TrtBuildConfig()).to_dict()
