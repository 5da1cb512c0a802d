"""The edge-board profiling agent: an HTTP server that measures uploaded ONNX files where it runs.

``nasforge agent serve --token-file F`` runs it on the board (it needs onnxruntime, onnx, numpy and nasforge
installed without its dependencies, not PyTorch: ``pip install --no-deps nasforge`` plus the ``agent`` extra's
list); ``nasforge profile MODEL --remote URL --token-file F`` (or the ``remote`` profiler) sends a model and
gets the same :class:`LatencyResult` JSON that a local backend gives.

Endpoints, all JSON (http.server's own refusals of malformed requests too), errors as ``{"error": "..."}`` and
never a traceback:

* ``GET /info``: agent version, ``max_bytes``, ``timeout_s``, ``read_timeout_s``, ``max_threads``, the
  backends it offers, ``busy``, onnxruntime's providers and the :func:`environment_fingerprint` (CPU model and
  flags, runtime versions).
* ``POST /profile?batch=1&runs=200&warmup=20&threads=1&backend=ort-cpu`` (also ``max_cv``, ``max_remeasure``,
  ``input_shape=3,224,224``, ``fresh=1`` to measure again rather than answer from the cache), the body being the
  ``.onnx`` file: the latency result plus ``model_sha256`` and ``cached``. ``threads`` goes up to the board's
  usable CPU cores.

Security: the bearer token is compared in constant time (401 otherwise, also on ``/info``); ``Content-Length``
is required (411), must be decimal digits (400) and is checked against ``max_bytes`` before a byte of the body
is read (413); the body must arrive within ``max(read_timeout_s, size / 1 MiB/s)`` (408), so a trickling
client holds the one job slot for a bounded time; it must be a self-contained ONNX model that passes
``onnx.checker`` (422); nothing is unpickled; one measurement at a time (429 with ``Retry-After``); each
measurement runs in a child process with a timeout (504), on a copy of the model in a private temporary folder
removed afterwards; a model the board's runtime cannot run (a custom operator, a fixed batch size) is the
client's error (422), any other failure of the child 500; results are cached by the model's SHA-256, the
settings and the CPU and runtime versions; the server listens on loopback only, unless ``allow_remote`` (CLI
``--allow-remote``) says otherwise (and then it warns).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from nasforge._version import __version__

from ._agent_config import (
    MIN_TOKEN_CHARS,
    AgentConfig,
    check_self_contained_onnx,
    is_loopback,
    read_token_file,
    write_token_file,
)
from ._agent_http import AgentServer

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

_MIB = 1024 * 1024


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
        f"max {mib:.3g} MiB, timeout {config.timeout_s:g} s, read timeout {config.read_timeout_s:g} s); "
        "stop with Ctrl-C"
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
