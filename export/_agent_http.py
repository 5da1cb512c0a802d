"""The profiling agent's HTTP server and request handler (see :mod:`nasforge.export._agent` for the protocol).

Nothing here imports PyTorch.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from nasforge._version import __version__
from nasforge.errors import ConfigError, NasforgeError
from nasforge.io import atomic_write_json

from ._agent_config import AgentConfig, check_self_contained_onnx, is_loopback, one_line
from ._latency import check_measure_args, environment_fingerprint

__all__ = ["AgentServer", "usable_cpus"]

_MIB = 1024 * 1024
_MIN_UPLOAD_RATE = _MIB  # bytes per second an upload may not fall below (past read_timeout_s)
_INT_PARAMS = ("batch", "runs", "warmup", "threads", "max_remeasure", "fresh")
_DEFAULTS: dict[str, Any] = {
    "backend": "ort-cpu",
    "batch": 1,
    "runs": 200,
    "warmup": 20,
    "threads": 1,
    "max_cv": 0.1,
    "max_remeasure": 2,
    "input_shape": None,
    "fresh": 0,  # 1: measure again even if a cached result exists (repeated measurements of one model)
}
_ROUTES = {"/info": "GET", "/profile": "POST"}
_CACHE_ENTRIES = 1024
_WORKER = "nasforge.export._agent_worker"
_WORKER_INPUT_ERROR = 2  # the worker's exit code for a NasforgeError: the model or its settings
_DIGITS = re.compile(r"[0-9]+")


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


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

    def read_deadline(self, length: int) -> float:
        """Seconds an upload of ``length`` bytes may take: ``max(read_timeout_s, length / 1 MiB/s)``."""
        return max(self.config.read_timeout_s, length / _MIN_UPLOAD_RATE)

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
                "read_timeout_s": self.config.read_timeout_s,
                "max_threads": usable_cpus(),
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
        """Measure the model ``data`` in a child process.

        Raises:
            _Reply: 504 past ``timeout_s``; 422 when the model cannot be measured here (an operator this
                onnxruntime lacks, a fixed batch size...); 500 when the worker fails otherwise.
        """
        folder = tempfile.mkdtemp(prefix="nasforge-agent-")  # mode 0700
        try:
            model = Path(folder) / "model.onnx"
            fd = os.open(model, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            proc = self._run_worker(model, settings, folder)
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                last = lines[-1] if lines else f"the worker exited with code {proc.returncode}"
                last = last.replace(f"'{model}'", str(model)).replace(str(model), "the uploaded model")
                status = 422 if proc.returncode == _WORKER_INPUT_ERROR else 500
                raise _Reply(status, f"the measurement failed: {one_line(last)}")
            return _worker_result(proc.stdout)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _run_worker(self, model: Path, settings: dict[str, Any], folder: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", _WORKER, str(model), json.dumps(settings)]
        try:
            return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=self.config.timeout_s, cwd=folder)
        except subprocess.TimeoutExpired:
            raise _Reply(
                504,
                f"the measurement took longer than the agent's limit of {self.config.timeout_s:g} s and "
                "was stopped; ask for fewer runs or start the agent with a larger --timeout",
            ) from None


def _worker_result(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = None
    if not isinstance(result, dict) or "median_ms" not in result:
        raise _Reply(500, "the measurement failed: the worker printed no result")
    return result


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
        settings[key] = _setting(key, value)
    _check_settings(settings, config)
    return settings


def _setting(key: str, value: str) -> Any:
    try:
        if key in _INT_PARAMS:
            return int(value)
        if key == "max_cv":
            return float(value)
        if key == "input_shape":
            shape = [int(d) for d in value.split(",")]
            if not all(d >= 1 for d in shape):
                raise ValueError
            return shape
        return value
    except ValueError:
        raise _Reply(400, f"query parameter {key}={value[:50]!r} is invalid") from None


def _check_settings(settings: dict[str, Any], config: AgentConfig) -> None:
    if settings["backend"] not in config.backends:
        raise _Reply(
            400,
            f"backend {settings['backend'][:50]!r} is not offered by this agent; it offers "
            f"{', '.join(config.backends)}",
        )
    if settings["fresh"] not in (0, 1):
        raise _Reply(400, "fresh must be 0 (a cached result may answer) or 1 (measure again)")
    try:
        check_measure_args(**{k: settings[k] for k in ("batch", "runs", "warmup", "threads", "max_cv",
                                                        "max_remeasure")})
    except ConfigError as err:
        raise _Reply(400, str(err)) from None
    cpus = usable_cpus()
    if settings["threads"] > cpus:
        raise _Reply(400, f"threads={settings['threads']} is more than this board's {cpus} usable CPU core(s); "
                          f"pass threads from 1 to {cpus}")
    if settings["max_cv"] != settings["max_cv"] or settings["max_cv"] == float("inf"):
        raise _Reply(400, "max_cv must be a finite number >= 0 (e.g. 0.1)")


class _Handler(BaseHTTPRequestHandler):
    """One request: route, authenticate, answer JSON, log one line (never the token)."""

    server: AgentServer
    server_version = f"nasforge-agent/{__version__}"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # no HTTP/0.9: every answer, a refusal too, has a status line and headers
    timeout = 60  # seconds per socket read of the request line and headers (the body has its own deadline)

    def setup(self) -> None:
        super().setup()
        self._start = time.monotonic()
        self._note = ""

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def _other(self) -> None:
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _other

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (malformed request line or headers, HTTP version) as JSON too."""
        reason = message or self.responses.get(code, ("error",))[0]
        self._send(code, {"error": f"malformed HTTP request: {one_line(reason, 200)}; the agent takes "
                                   "HTTP/1.x GET /info and POST /profile"})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: :meth:`_send` logs one line per request itself."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
        self.server.log(f"nasforge agent: {self.client_address[0]} {format % args}")

    def _dispatch(self, method: str) -> None:
        self._start = time.monotonic()
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
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise _Reply(411, "a Content-Length header is required")
        raw = values[0].strip()
        if len(values) > 1 or not _DIGITS.fullmatch(raw):
            shown = ", ".join(repr(v[:30]) for v in values[:3])
            raise _Reply(400, f"Content-Length {shown} is not a byte count; send one header of decimal digits")
        length = int(raw)
        limit = self.server.config.max_bytes
        if length > limit:
            raise _Reply(
                413,
                f"the file has {length} bytes, more than the agent's limit of {limit} bytes "
                f"({limit / _MIB:.3g} MiB); start the agent with a larger --max-mb",
            )
        return length

    def _read_body(self, length: int) -> bytes:
        """The ``length`` bytes of the body, read within :meth:`AgentServer.read_deadline` (408 past it)."""
        allowed = self.server.read_deadline(length)
        deadline = time.monotonic() + allowed
        chunks: list[bytes] = []
        got = 0
        while got < length:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(length - got, _MIB))  # one recv: bytes are counted as they come
            except TimeoutError:
                raise _Reply(408, f"the upload sent {got} of {length} bytes in {allowed:.3g} s; the agent "
                                  "reads an upload within max(--read-timeout, 1 s per MiB): send it over a "
                                  "faster link, or start the agent with a larger --read-timeout") from None
            except OSError:
                chunk = b""  # reset by the client
            if not chunk:
                raise _Reply(400, f"the upload stopped after {got} of {length} bytes (the connection was "
                                  "closed); send the whole file")
            chunks.append(chunk)
            got += len(chunk)
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
            return self._measure(self._read_body(length), settings)
        finally:
            self.server.job_lock.release()

    def _measure(self, data: bytes, settings: dict[str, Any]) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        fresh = bool(settings.pop("fresh", 0))
        key = self.server.cache_key(sha, settings)
        cached = None if fresh else self.server.cache_get(key)
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
            f"nasforge agent: {self.client_address[0]} {self.command or '-'} {getattr(self, 'path', '-')[:200]} "
            f"{status} {time.monotonic() - self._start:.2f}s" + (f" ({note})" if note else "")
        )
