"""Atomic file writes: a crash never leaves a half-written checkpoint, study or result behind."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from nasforge.runlock import remove_stale_temps, temp_prefix

__all__ = ["TORCH_LOAD_ERRORS", "load_torch_file", "atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "atomic_torch_save", "sha256_file"]


# What torch.load(weights_only=True) raises on a damaged or foreign file: its unpickler fails with whatever error
# the first bad opcode or zip record hits. Catch this tuple to turn any of them into a one-line error.
TORCH_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError,
                     LookupError, AssertionError, TypeError, struct.error)


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain data, nothing unpickled.

    PyTorch's own warnings about the file (e.g. "Detected pickle protocol 4" on a foreign pickle) are silenced:
    callers turn a bad file into one line (catch :data:`TORCH_LOAD_ERRORS`), which the warning would precede.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(Path(path), map_location="cpu", weights_only=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, fsync it, then rename it over ``path``.

    The temporary file's name carries this process's PID (:func:`nasforge.runlock.temp_prefix`); those left
    in the folder by killed processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (tensors and plain containers only; loaded with weights_only)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
