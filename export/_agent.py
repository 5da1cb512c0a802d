"""The edge-board profiling agent: an HTTP server that measures uploaded ONNX files where it runs.

``nasforge agent serve --token-file F`` runs it on the board (it needs onnxruntime, onnx, numpy and nasforge's
light core, not PyTorch); ``nasforge profile MODEL --remote URL --token-file F`` (or the ``remote`` profiler)
sends a model and gets the same :class:`LatencyResult` JSON that a local backend gives.

Endpoints, all JSON, errors as ``{"error": "..."}`` and never a traceback:

* ``GET /info``: agent version, ``max_bytes``, ``timeout_s``, the backends it offers, ``busy``, onnxruntime's
  providers and the :func:`environment_fingerprint` (CPU model and flags, runtime versions).
* ``POST /profile?batch=1&runs=200&warmup=20&threads=1&backend=ort-cpu`` (also ``max_cv``, ``max_remeasure``,
  ``input_shape=3,224,224``), the body being the ``.onnx`` file: the latency result plus ``model_sha256`` and
  ``cached``.

Security: the bearer token is compared in constant time (401 otherwise, also on ``/info``); ``Content-Length``
is required (411) and checked against ``max_bytes`` before a byte of the body is read (413); the body must
be a self-contained ONNX model that passes ``onnx.checker`` (422); nothing is unpickled; one measurement at a
time (429 with ``Retry-After``); each measurement runs in a child process with a timeout (504), on a copy of
the model in a private temporary folder removed afterwards; results are cached by the model's SHA-256, the
settings and the CPU and runtime versions; the server listens on loopback unless told otherwise (and warns if
not).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from nasforge._version import __version__
from nasforge.errors import ConfigError, ExportError, NasforgeError
from nasforge.io import atomic_write, atomic_write_json

from ._latency import check_measure_args, environment_fingerprint, list_profilers

if TYPE_CHECKING:
    import onnx

__all__ = [
    "AgentConfig",
    "AgentServer",
    "MIN_TOKEN_CHARS",
    "check_self_contained_onnx",
    "is_loopback",
    "make_server",
    "read_token_file",
    "serve",
    "write_token_file",
]

MIN_TOKEN_CHARS = 16
_MIB = 1024 * 1024
# Backends that do not measure an ONNX file (torch-cpu takes an nn.Module; remote would forward the upload).
_NOT_ONNX_BACKENDS = frozenset({"torch-cpu", "remote"})
_INT_PARAMS = ("batch", "runs", "warmup", "threads", "max_remeasure")
_DEFAULTS: dict[str, Any] = {
    "backend": "ort-cpu",
    "batch": 1,
    "runs": 200,
    "warmup": 20,
    "threads": 1,
    "max_cv": 0.1,
    "max_remeasure": 2,
    "input_shape": None,
}
_ROUTES = {"/info": "GET", "/profile": "POST"}
_CACHE_ENTRIES = 1024
_WORKER = "nasforge.export._agent_worker"


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
        ConfigError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --force to replace its token (running agents keep the old)")
    token = secrets.token_urlsafe(32)

    def write(fh: Any) -> None:
        if os.name == "posix":
            os.fchmod(fh.fileno(), 0o600)
        fh.write((token + "\n").encode("ascii"))

    return atomic_write(path, write)


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
        reason = _one_line(err)
        raise ExportError(f"the file is not an ONNX model (protobuf cannot parse it: {reason})") from None
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
        raise ExportError(f"the model fails onnx.checker: {_one_line(err)}") from None
    return model


def _one_line(err: BaseException | str, limit: int = 300) -> str:
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


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Settings of the profiling agent.

    Attributes:
        token: the shared secret clients send as ``Authorization: Bearer TOKEN`` (at least 16 characters).
        host: address to listen on; loopback by default (reach it through ``ssh -L``).
        port: TCP port; 0 picks a free one (see ``AgentServer.url``).
        max_bytes: largest accepted upload.
        timeout_s: wall-clock limit of one measurement (its child process is killed after it).
        cache_dir: where results are also kept as JSON across restarts (``None``: in memory only).
        backends: profilers clients may ask for; each must be registered and measure ONNX files.
    """

    token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8765
    max_bytes: int = 64 * _MIB
    timeout_s: float = 300.0
    cache_dir: str | Path | None = None
    backends: tuple[str, ...] = ("ort-cpu",)

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or len(self.token.strip()) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"the agent's token must have at least {MIN_TOKEN_CHARS} characters; "
                "create one with `nasforge agent token --out FILE`"
            )
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host={self.host!r} is invalid; pass an address such as 127.0.0.1")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port!r} is invalid; pass an int in [0, 65535]")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ConfigError(f"max_bytes={self.max_bytes!r} is invalid; pass an int >= 1")
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ConfigError(f"timeout_s={self.timeout_s!r} is invalid; pass a number of seconds > 0")
        backends = (self.backends,) if isinstance(self.backends, str) else tuple(self.backends)
        if not backends:
            raise ConfigError("the agent offers no backend; pass backends=('ort-cpu',)")
        from . import _profilers  # noqa: F401  (registers ort-cpu)

        known = list_profilers()
        for name in backends:
            if name not in known:
                raise ConfigError(f"unknown latency backend {name!r}; known: {', '.join(known)}")
            if name in _NOT_ONNX_BACKENDS:
                raise ConfigError(f"backend {name!r} does not measure ONNX files; the agent offers ort-cpu")
        object.__setattr__(self, "backends", backends)


# ---------------------------------------------------------------------------------------------------- server


class _Reply(Exception):
    """Ends a request with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP server (one thread per connection, one measurement at a time).

    Attributes:
        config: its :class:`AgentConfig`.
        url: ``http://HOST:PORT`` it listens on (the real port when ``config.port`` is 0).
        counts: requests received per ``"METHOD /path"`` (other paths count as ``"METHOD (other path)"``).
        job_lock: held while a ``/profile`` request reads, validates and measures its model.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: AgentConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or _stderr_log
        self.job_lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._token = config.token.strip().encode("utf-8")
        self._state_lock = threading.Lock()
        self._cache: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._info: dict[str, Any] | None = None
        if config.cache_dir is not None:
            try:
                Path(config.cache_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as err:
                reason = err.strerror or err
                raise ConfigError(f"cannot create the cache folder {config.cache_dir} ({reason})") from None
        if ":" in config.host.strip("[]"):
            self.address_family = socket.AF_INET6
        try:
            super().__init__((config.host.strip("[]"), config.port), _Handler)
        except OSError as err:
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port} ({err.strerror or err}); pick another --port "
                "or --host"
            ) from None
        if not is_loopback(config.host):
            self.log(
                f"nasforge agent: warning: listening on {config.host}, reachable from other machines; the "
                "traffic (token included) is not encrypted: prefer --host 127.0.0.1 and an SSH tunnel "
                f"(ssh -L {self.port}:127.0.0.1:{self.port} BOARD)"
            )

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host (slow on some boards)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.config.host, self.server_address[1]

    @property
    def port(self) -> int:
        """The port listened on."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the agent."""
        host = self.config.host.strip("[]")
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def check_token(self, given: bytes) -> bool:
        """Constant-time comparison of ``given`` with the agent's token."""
        return hmac.compare_digest(given, self._token)

    def count(self, key: str) -> None:
        with self._state_lock:
            self.counts[key] += 1

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` answers (computed once, ``busy`` live)."""
        if self._info is None:
            try:
                import onnxruntime

                providers: list[str] | None = list(onnxruntime.get_available_providers())
            except ImportError:
                providers = None
            self._info = {
                "agent": "nasforge",
                "version": __version__,
                "max_bytes": self.config.max_bytes,
                "timeout_s": self.config.timeout_s,
                "backends": list(self.config.backends),
                "providers": providers,
                "fingerprint": environment_fingerprint(1),
            }
        return {**self._info, "busy": self.job_lock.locked()}

    # cache: in memory (LRU) and, with config.cache_dir, as JSON files (read back with json only)

    def cache_key(self, sha: str, settings: dict[str, Any]) -> str:
        """Key of a result: the model's SHA-256, the settings, the CPU and the runtime versions."""
        fingerprint = self.info()["fingerprint"]
        scope = {"settings": settings, "cpu": fingerprint["cpu"], "versions": fingerprint["versions"]}
        canonical = json.dumps(scope, sort_keys=True, separators=(",", ":"))
        return f"{sha}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"

    def _cache_file(self, key: str) -> Path | None:
        return None if self.config.cache_dir is None else Path(self.config.cache_dir) / f"{key}.json"

    def cache_get(self, key: str) -> dict[str, Any] | None:
        with self._state_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return dict(self._cache[key])
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(value, dict) or "median_ms" not in value:
            return None
        self._remember(key, value)
        return dict(value)

    def cache_put(self, key: str, value: dict[str, Any]) -> None:
        self._remember(key, value)
        path = self._cache_file(key)
        if path is not None:
            try:
                atomic_write_json(path, value)
            except OSError as err:
                self.log(f"nasforge agent: cannot write the cache file {path}: {err}")

    def _remember(self, key: str, value: dict[str, Any]) -> None:
        with self._state_lock:
            self._cache[key] = dict(value)
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)

    def measure(self, data: bytes, settings: dict[str, Any]) -> dict[str, Any]:
        """Measure the model ``data`` in a child process; raises :class:`_Reply` (504, 500) on failure."""
        folder = tempfile.mkdtemp(prefix="nasforge-agent-")  # mode 0700
        try:
            model = Path(folder) / "model.onnx"
            fd = os.open(model, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            command = [sys.executable, "-m", _WORKER, str(model), json.dumps(settings)]
            try:
                proc = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    errors="replace",
                    timeout=self.config.timeout_s,
                    cwd=folder,
                )
            except subprocess.TimeoutExpired:
                raise _Reply(
                    504,
                    f"the measurement took longer than the agent's limit of {self.config.timeout_s:g} s and "
                    "was stopped; ask for fewer runs or start the agent with a larger --timeout",
                ) from None
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                last = lines[-1] if lines else f"the worker exited with code {proc.returncode}"
                last = last.replace(f"'{model}'", str(model)).replace(str(model), "the uploaded model")
                raise _Reply(500, f"the measurement failed: {_one_line(last)}")
            lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
            try:
                result = json.loads(lines[-1])
            except (IndexError, ValueError):
                result = None
            if not isinstance(result, dict) or "median_ms" not in result:
                raise _Reply(500, "the measurement failed: the worker printed no result")
            return result
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _parse_settings(query: str, config: AgentConfig) -> dict[str, Any]:
    """Measurement settings from the query string; raises :class:`_Reply` 400 with a one-line reason."""
    settings = dict(_DEFAULTS)
    seen: set[str] = set()
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=20)
    except ValueError:
        raise _Reply(400, f"cannot parse the query string {query[:100]!r}") from None
    for key, value in pairs:
        if key not in _DEFAULTS:
            raise _Reply(400, f"unknown query parameter {key!r}; known: {', '.join(_DEFAULTS)}")
        if key in seen:
            raise _Reply(400, f"query parameter {key!r} is given twice")
        seen.add(key)
        try:
            if key in _INT_PARAMS:
                settings[key] = int(value)
            elif key == "max_cv":
                settings[key] = float(value)
            elif key == "input_shape":
                settings[key] = [int(d) for d in value.split(",")]
                if not all(d >= 1 for d in settings[key]):
                    raise ValueError
            else:
                settings[key] = value
        except ValueError:
            raise _Reply(400, f"query parameter {key}={value[:50]!r} is invalid") from None
    if settings["backend"] not in config.backends:
        raise _Reply(
            400,
            f"backend {settings['backend'][:50]!r} is not offered by this agent; it offers "
            f"{', '.join(config.backends)}",
        )
    try:
        check_measure_args(**{k: settings[k] for k in ("batch", "runs", "warmup", "threads", "max_cv",
                                                        "max_remeasure")})
    except ConfigError as err:
        raise _Reply(400, str(err)) from None
    if settings["max_cv"] != settings["max_cv"] or settings["max_cv"] == float("inf"):
        raise _Reply(400, "max_cv must be a finite number >= 0 (e.g. 0.1)")
    return settings


class _Handler(BaseHTTPRequestHandler):
    """One request: route, authenticate, answer JSON, log one line (never the token)."""

    server: AgentServer
    server_version = f"nasforge-agent/{__version__}"
    sys_version = ""
    timeout = 60  # seconds per socket read: a stalled upload cannot hold the job slot for long

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def _other(self) -> None:
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _other

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: :meth:`_send` logs one line per request itself."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
        self.server.log(f"nasforge agent: {self.client_address[0]} {format % args}")

    def _dispatch(self, method: str) -> None:
        self._start = time.monotonic()
        self._note = ""
        path = urlsplit(self.path).path
        self.server.count(f"{method} {path}" if path in _ROUTES else f"{method} (other path)")
        try:
            allowed = _ROUTES.get(path)
            if allowed is None:
                raise _Reply(404, f"no endpoint {path[:100]}; the agent serves GET /info and POST /profile")
            if method != allowed:
                raise _Reply(405, f"{path} takes {allowed}, not {method}", {"Allow": allowed})
            self._authenticate()
            self._send(200, self.server.info() if path == "/info" else self._profile())
        except _Reply as reply:
            self._send(reply.status, {"error": reply.message}, reply.headers)
        except Exception:  # a bug: the operator gets the traceback, the client one line
            self.server.log("nasforge agent: internal error\n" + traceback.format_exc().rstrip())
            self._send(500, {"error": "internal error in the agent; see its log"})

    def _authenticate(self) -> None:
        scheme, _, given = self.headers.get("Authorization", "").strip().partition(" ")
        ok = self.server.check_token(given.strip().encode("utf-8", "surrogateescape"))
        if scheme.lower() != "bearer" or not ok:
            raise _Reply(
                401,
                "missing or wrong token; send 'Authorization: Bearer TOKEN' with the agent's token",
                {"WWW-Authenticate": 'Bearer realm="nasforge-agent"'},
            )

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise _Reply(411, "chunked uploads are not accepted; send the file with a Content-Length header")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _Reply(411, "a Content-Length header is required")
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            raise _Reply(400, f"Content-Length {raw[:30]!r} is not a byte count")
        limit = self.server.config.max_bytes
        if length > limit:
            raise _Reply(
                413,
                f"the file has {length} bytes, more than the agent's limit of {limit} bytes "
                f"({limit / _MIB:.3g} MiB); start the agent with a larger --max-mb",
            )
        return length

    def _read_body(self, length: int) -> bytes:
        chunks, left = [], length
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, _MIB))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except OSError:  # socket timeout or reset
            pass
        if left > 0:
            raise _Reply(400, f"the upload stopped after {length - left} of {length} bytes")
        return b"".join(chunks)

    def _profile(self) -> dict[str, Any]:
        settings = _parse_settings(urlsplit(self.path).query, self.server.config)
        length = self._content_length()
        if not self.server.job_lock.acquire(blocking=False):
            raise _Reply(
                429,
                "the agent is busy with another measurement; retry in a few seconds",
                {"Retry-After": "5"},
            )
        try:
            data = self._read_body(length)
            sha = hashlib.sha256(data).hexdigest()
            key = self.server.cache_key(sha, settings)
            cached = self.server.cache_get(key)
            if cached is not None:
                self._note = "cached"
                return {**cached, "model_sha256": sha, "cached": True}
            try:
                check_self_contained_onnx(data)
            except NasforgeError as err:
                raise _Reply(422, str(err)) from None
            result = self.server.measure(data, settings)
            self.server.cache_put(key, result)
            self._note = f"median {result['median_ms']:.3f} ms"
            return {**result, "model_sha256": sha, "cached": False}
        finally:
            self.server.job_lock.release()

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(payload) + "\n").encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:  # the client went away
            pass
        self.close_connection = True
        note = payload.get("error") if status >= 400 else self._note
        self.server.log(
            f"nasforge agent: {self.client_address[0]} {self.command} {self.path[:200]} {status} "
            f"{time.monotonic() - self._start:.2f}s" + (f" ({note})" if note else "")
        )


def make_server(config: AgentConfig, *, log: Callable[[str], None] | None = None) -> AgentServer:
    """Bind the agent's server (not yet serving: call ``serve_forever``, e.g. in a thread).

    Args:
        config: the agent's settings.
        log: receives one line per request and the warnings (default: stderr).

    Raises:
        ConfigError: the address cannot be bound, or ``cache_dir`` cannot be created.
    """
    return AgentServer(config, log)


def serve(config: AgentConfig, *, log: Callable[[str], None] | None = None) -> None:
    """Run the agent until Ctrl-C (or SIGTERM)."""
    server = make_server(config, log=log)
    mib = config.max_bytes / _MIB
    server.log(
        f"nasforge agent {__version__} listening on {server.url} (backends {', '.join(config.backends)}, "
        f"max {mib:.3g} MiB, timeout {config.timeout_s:g} s); stop with Ctrl-C"
    )
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM (systemd, kill) stops it like Ctrl-C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.log("nasforge agent: stopped")
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

