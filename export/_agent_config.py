"""The profiling agent's settings, token file and upload validation (see :mod:`nasforge.export._agent`).

Nothing here imports PyTorch: the agent runs on boards that have only onnxruntime, onnx and numpy.
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge.errors import ConfigError, ExportError
from nasforge.io import atomic_write

from ._latency import list_profilers

if TYPE_CHECKING:
    import onnx

__all__ = [
    "AgentConfig",
    "MIN_TOKEN_CHARS",
    "check_self_contained_onnx",
    "is_loopback",
    "one_line",
    "read_token_file",
    "write_token_file",
]

MIN_TOKEN_CHARS = 16
_MIB = 1024 * 1024
# Backends that do not measure an ONNX file (torch-cpu takes an nn.Module; remote would forward the upload).
_NOT_ONNX_BACKENDS = frozenset({"torch-cpu", "remote"})


# ---------------------------------------------------------------------------------------------------- tokens


def read_token_file(path: str | os.PathLike[str]) -> str:
    """Read the shared secret from ``path`` (surrounding whitespace stripped).

    Raises:
        ConfigError: the file is missing or unreadable, readable by group or others (POSIX), empty, or holds a
            token shorter than ``MIN_TOKEN_CHARS`` characters.
    """
    path = Path(path)
    make = f"create one with `nasforge agent token --out {path}`"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist; {make}") from None
    except OSError as err:
        raise ConfigError(f"cannot read token file {path} ({err.strerror}); {make}") from None
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"token file {path} is readable by other users (mode {mode & 0o777:o}); run `chmod 600 {path}`"
        )
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read token file {path} ({reason}); {make}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty; {make}")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"the token in {path} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} ({make})"
        )
    return token


def write_token_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a new random token (``secrets.token_urlsafe(32)``) to ``path`` atomically, mode 0600.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is false, or it cannot be written (the reason quoted).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --force to replace its token (running agents keep the old)")
    token = secrets.token_urlsafe(32)

    def write(fh: Any) -> None:
        if os.name == "posix":
            os.fchmod(fh.fileno(), 0o600)
        fh.write((token + "\n").encode("ascii"))

    try:
        return atomic_write(path, write)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"cannot write the token file {path} ({reason}); pass an --out path in a folder you can write to"
        ) from None


# ------------------------------------------------------------------------------------------------ validation


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph`` and its subgraphs: initializers and tensor attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_self_contained_onnx(data: bytes) -> onnx.ModelProto:
    """Parse ``data`` as an ONNX model that keeps all its weights inside and passes ``onnx.checker``.

    Nothing is unpickled: the bytes go to protobuf only.

    Raises:
        ExportError: a one-line reason (not ONNX, external data, checker failure).
    """
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise ExportError("the file is empty, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ExportError(f"the file is not an ONNX model (protobuf cannot parse it: {one_line(err)})") from None
    if not model.HasField("graph"):
        raise ExportError("the file is not an ONNX model (it has no graph)")
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ExportError(
                f"the model keeps tensor '{tensor.name}' in an external data file; send one self-contained "
                "file (export_onnx writes one; onnx.save(model, path, save_as_external_data=False))"
            )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as err:
        raise ExportError(f"the model fails onnx.checker: {one_line(err)}") from None
    return model


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """First non-empty line of a message, shortened to ``limit`` characters."""
    text = str(err)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line or (type(err).__name__ if isinstance(err, BaseException) else "unknown error")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------- config


def _seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value!r} is invalid; pass a finite number of seconds > 0")


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Settings of the profiling agent.

    Attributes:
        token: the shared secret clients send as ``Authorization: Bearer TOKEN`` (at least 16 characters).
        host: address to listen on; loopback by default (reach it through ``ssh -L``).
        port: TCP port; 0 picks a free one (see ``AgentServer.url``).
        max_bytes: largest accepted upload.
        timeout_s: wall-clock limit of one measurement (its child process is killed after it).
        read_timeout_s: an upload must arrive within ``max(read_timeout_s, its size / 1 MiB/s)`` of the start
            of its body (else 408), so a slow or stalled client holds the one job slot for a bounded time.
        cache_dir: where results are also kept as JSON across restarts (``None``: in memory only).
        backends: profilers clients may ask for; each must be registered and measure ONNX files.
        allow_remote: listen on a non-loopback ``host`` (the traffic, token included, is not encrypted);
            without it such a host is refused.
    """

    token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8765
    max_bytes: int = 64 * _MIB
    timeout_s: float = 300.0
    read_timeout_s: float = 10.0
    cache_dir: str | Path | None = None
    backends: tuple[str, ...] = ("ort-cpu",)
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or len(self.token.strip()) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"the agent's token must have at least {MIN_TOKEN_CHARS} characters; "
                "create one with `nasforge agent token --out FILE`"
            )
        self._check_address()
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ConfigError(f"max_bytes={self.max_bytes!r} is invalid; pass an int >= 1")
        _seconds("timeout_s", self.timeout_s)
        _seconds("read_timeout_s", self.read_timeout_s)
        object.__setattr__(self, "backends", _check_backends(self.backends))

    def _check_address(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host={self.host!r} is invalid; pass an address such as 127.0.0.1")
        if not is_loopback(self.host) and not self.allow_remote:
            raise ConfigError(
                f"host {self.host!r} is not a loopback address: the agent would be reachable from other "
                "machines over unencrypted HTTP (token included); keep --host 127.0.0.1 and reach it through "
                "`ssh -L 8765:127.0.0.1:8765 BOARD`, or pass --allow-remote (allow_remote=True) to listen there"
            )
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port!r} is invalid; pass an int in [0, 65535]")


def _check_backends(backends: str | tuple[str, ...]) -> tuple[str, ...]:
    names = (backends,) if isinstance(backends, str) else tuple(backends)
    if not names:
        raise ConfigError("the agent offers no backend; pass backends=('ort-cpu',)")
    from . import _profilers  # noqa: F401  (registers ort-cpu)

    known = list_profilers()
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown latency backend {name!r}; known: {', '.join(known)}")
        if name in _NOT_ONNX_BACKENDS:
            raise ConfigError(f"backend {name!r} does not measure ONNX files; the agent offers ort-cpu")
    return names
