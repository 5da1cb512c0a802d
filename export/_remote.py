"""Client of the profiling agent: the ``remote`` latency backend and :func:`agent_info`.

``get_profiler("remote", url="http://127.0.0.1:8765", token_file="agent.token").measure("model.onnx")`` asks
the agent (``nasforge agent serve``) for ``GET /info`` first, refuses locally (nothing uploaded) a file larger
than the agent accepts or one that is not a self-contained ONNX model, then posts the file and returns the
agent's :class:`LatencyResult` (its ``fingerprint`` describes the board that measured). The base
:class:`Profiler` checks the settings and the model's kind; the agent runs the measurement protocol on the
board. HTTP failures become one-line :class:`ConfigError` / :class:`ExportError` messages that say what to do. Environment proxies are
ignored and redirects refused, so the token only ever goes to the URL given.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from nasforge.errors import ConfigError, ExportError, NasforgeError

from ._agent import check_self_contained_onnx, read_token_file
from ._latency import LatencyResult, MeasureSettings, ModelKind, Profiler, register_profiler

if TYPE_CHECKING:
    import torch

__all__ = ["RemoteProfiler", "agent_info"]

_INFO_TIMEOUT_S = 30.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: the bearer token must not follow one to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _check_url(url: object) -> str:
    """Validate the agent's base URL; returns it without a trailing slash."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"url={url!r} is invalid; pass the agent's address, e.g. http://127.0.0.1:8765")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"agent URL {url!r} is invalid; pass http://HOST:PORT, e.g. http://127.0.0.1:8765")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError(f"agent URL {url!r} has an invalid port; pass http://HOST:PORT") from None
    return url.rstrip("/")


def _resolve_token(token: str | None, token_file: str | os.PathLike[str] | None) -> str:
    if (token is None) == (token_file is None):
        raise ConfigError("pass exactly one of token= or token_file= (the agent's shared secret)")
    if token_file is not None:
        return read_token_file(token_file)
    if not isinstance(token, str) or not token.strip():
        raise ConfigError("token is empty; pass the agent's token or token_file=")
    return token.strip()


def _server_message(err: urllib.error.HTTPError) -> str:
    """The agent's ``{"error": ...}`` message (one line), or the HTTP reason."""
    try:
        payload = json.loads(err.read(64 * 1024) or b"null")
    except (ValueError, OSError, http.client.HTTPException):
        payload = None
    message = payload.get("error") if isinstance(payload, dict) else None
    text = str(message) if message else f"HTTP {err.code} {err.reason}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _request(
    url: str, path: str, token: str, *, data: bytes | None = None, timeout: float, what: str
) -> dict[str, Any]:
    """Send one request to the agent; returns its JSON object or raises a one-line NasforgeError."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(
        url + path, data=data, headers=headers, method="GET" if data is None else "POST"
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        raise _http_error(err, url, what) from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ConnectionRefusedError):
            raise ConfigError(
                f"cannot reach the agent at {url} (connection refused); is `nasforge agent serve` running "
                "there, and the SSH tunnel open (ssh -L PORT:127.0.0.1:PORT BOARD)?"
            ) from None
        if isinstance(reason, TimeoutError):
            raise ExportError(f"the agent at {url} did not answer within {timeout:g} s ({what})") from None
        if isinstance(reason, (ConnectionResetError, BrokenPipeError)):
            raise ExportError(_closed(url)) from None
        raise ConfigError(f"cannot reach the agent at {url} ({reason}); check --remote") from None
    except TimeoutError:
        raise ExportError(f"the agent at {url} did not answer within {timeout:g} s ({what})") from None
    except (ConnectionError, http.client.HTTPException, OSError):
        raise ExportError(_closed(url)) from None
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ConfigError(f"{url} did not answer like a nasforge agent ({what}); check --remote")
    return payload


def _closed(url: str) -> str:
    return (
        f"the agent at {url} closed the connection (busy, restarted, or the file is over its size limit); "
        "retry, and check the agent's log"
    )


def _http_error(err: urllib.error.HTTPError, url: str, what: str) -> NasforgeError:
    """One-line error for an HTTP status from the agent, saying what to do."""
    message = _server_message(err)
    code = err.code
    if code == 401:
        return ConfigError(
            f"the agent at {url} rejected the token (401); pass the --token-file holding the agent's token"
        )
    if code == 413:
        return ConfigError(f"{what}: the file is too large for the agent (413: {message})")
    if code == 422:
        return ExportError(
            f"{what}: the agent cannot measure this model (422: {message}); fix the model or the settings "
            "(a self-contained file from nasforge.export.export_onnx, standard operators, its batch size)"
        )
    if code == 408:
        return ExportError(f"{what}: the upload was too slow for the agent (408: {message})")
    if code == 429:
        retry = err.headers.get("Retry-After") if err.headers else None
        return ExportError(
            f"the agent at {url} is busy with another measurement (429); retry in {retry or 'a few'} s"
        )
    if code == 504:
        return ExportError(f"{what}: {message} (504)")
    if code == 400:
        return ConfigError(f"{what}: the agent refused the settings (400: {message})")
    if code in (404, 405) or 300 <= code < 400:
        return ConfigError(f"{url} does not answer like a nasforge agent (HTTP {code}); check --remote")
    if code == 500:
        return ExportError(f"{what} on the agent at {url}: {message}")
    return ExportError(f"{what}: the agent answered HTTP {code}: {message}")


def agent_info(
    url: str,
    token: str | None = None,
    *,
    token_file: str | os.PathLike[str] | None = None,
    timeout: float = _INFO_TIMEOUT_S,
) -> dict[str, Any]:
    """``GET /info`` of the agent at ``url``: version, ``max_bytes``, backends, ``busy`` and its fingerprint.

    Raises:
        ConfigError: bad URL or token, agent unreachable, or not a nasforge agent.
        ExportError: the agent failed or timed out.
    """
    url = _check_url(url)
    info = _request(url, "/info", _resolve_token(token, token_file), timeout=timeout, what="GET /info")
    if not isinstance(info.get("max_bytes"), int) or not isinstance(info.get("fingerprint"), dict):
        raise ConfigError(f"{url} did not answer like a nasforge agent (GET /info); check --remote")
    return info


def _result_from(payload: dict[str, Any], url: str) -> LatencyResult:
    names = [f.name for f in dataclasses.fields(LatencyResult)]
    missing = [name for name in names if name not in payload]
    if missing:
        raise ExportError(
            f"the agent at {url} answered without {', '.join(missing)}; is it the same nasforge version?"
        )
    return LatencyResult(**{name: payload[name] for name in names})


@register_profiler("remote")
class RemoteProfiler(Profiler):
    """Measure on a board running ``nasforge agent serve``; the board's backend measures (default ort-cpu).

    Args:
        url: the agent's address, e.g. ``http://127.0.0.1:8765`` (through ``ssh -L`` for a board).
        token: the agent's shared secret, or
        token_file: a file holding it (mode 600). Without ``url`` and a token the profiler can be constructed
            (like every registered backend) but :meth:`measure` raises :class:`ConfigError`.
        timeout: seconds to wait for a measurement (the agent has its own limit too).

    Attributes:
        last_reply: the agent's last answer to ``POST /profile`` (with ``model_sha256`` and ``cached``).
    """

    caches = True
    model_kind = ModelKind.ONNX
    model_hint = "export it with nasforge.export.export_onnx first"

    def __init__(
        self,
        *,
        url: str | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        timeout: float = 600.0,
    ) -> None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} is invalid; pass a number of seconds > 0")
        self.timeout = float(timeout)
        self.last_reply: dict[str, Any] | None = None
        # Constructed without options (as every registered backend can be), it refuses to measure.
        unconfigured = url is None and token is None and token_file is None
        self.url = None if unconfigured else _check_url(url)
        self._token = None if unconfigured else _resolve_token(token, token_file)

    def __repr__(self) -> str:
        return f"RemoteProfiler(url={self.url!r})"

    def _target(self) -> tuple[str, str]:
        if self.url is None or self._token is None:
            raise ConfigError(
                "the remote backend needs the agent's address and token: get_profiler('remote', "
                "url='http://127.0.0.1:8765', token_file='agent.token')"
            )
        return self.url, self._token

    def info(self) -> dict[str, Any]:
        """The agent's ``GET /info``."""
        url, token = self._target()
        return agent_info(url, token, timeout=min(self.timeout, _INFO_TIMEOUT_S))

    def measure(
        self,
        model: str | Path | torch.nn.Module,
        *,
        input_shape: Sequence[int] | None = None,
        batch: int = 1,
        runs: int = 200,
        warmup: int = 20,
        threads: int = 1,
        max_cv: float = 0.1,
        max_remeasure: int = 2,
        backend: str = "ort-cpu",
        fresh: bool = False,
    ) -> LatencyResult:
        """Upload the ONNX file ``model`` and return the agent's measurement; see :meth:`Profiler.measure`.

        ``backend`` is the profiler the agent runs (one of its ``info()["backends"]``). The agent answers a
        model and settings it has measured before from its cache; ``fresh`` measures again (repeated
        measurements of one model).

        Raises:
            ConfigError: bad settings or token, agent unreachable, or the file exceeds the agent's limit.
            ExportError: the file is missing or not a self-contained ONNX model, the agent is busy, timed out
                or failed to measure.
        """
        settings = self._check(
            model, input_shape=input_shape, batch=batch, runs=runs, warmup=warmup, threads=threads,
            max_cv=max_cv, max_remeasure=max_remeasure,
        )
        return self._measure_checked(model, settings, backend=backend, fresh=fresh)

    def _subject(self) -> str:
        return "the remote backend"

    def _measure_checked(
        self, model: Any, settings: MeasureSettings, *, backend: str = "ort-cpu", fresh: bool = False
    ) -> LatencyResult:
        """The agent runs the protocol on the board: check the file against its limits, then post it."""
        url, token = self._target()
        path = Path(model)
        if not path.is_file():
            raise ExportError(f"no ONNX file at '{path}'; export one first with nasforge.export.export_onnx")
        data = self._checked_upload(path, backend)
        reply = _request(
            url,
            "/profile?" + urlencode(_query(settings, backend, fresh)),
            token,
            data=data,
            timeout=self.timeout,
            what=f"profiling '{path}'",
        )
        self.last_reply = reply
        return _result_from(reply, url)

    def _checked_upload(self, path: Path, backend: str) -> bytes:
        """The file's bytes, refused locally (nothing sent) when the agent would refuse it.

        Raises:
            ConfigError: the file exceeds the agent's limit, or the agent does not offer ``backend``.
            ExportError: the file is not a self-contained ONNX model.
        """
        size = path.stat().st_size
        info = self.info()
        limit = info["max_bytes"]
        if size > limit:
            raise ConfigError(
                f"'{path}' has {size} bytes, more than the agent accepts ({limit} bytes, "
                f"{limit / 2**20:.3g} MiB); nothing was sent: start the agent with a larger --max-mb"
            )
        offered = info.get("backends") or []
        if backend not in offered:
            raise ConfigError(f"the agent offers backend(s) {', '.join(offered) or 'none'}, not {backend!r}")
        data = path.read_bytes()
        try:
            check_self_contained_onnx(data)
        except ExportError as err:
            raise ExportError(f"'{path}': {err}; nothing was sent") from None
        return data


def _query(settings: MeasureSettings, backend: str, fresh: bool) -> dict[str, Any]:
    """The ``POST /profile`` query parameters."""
    params: dict[str, Any] = {
        "backend": backend,
        "batch": settings.batch,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "threads": settings.threads,
        "max_cv": settings.max_cv,
        "max_remeasure": settings.max_remeasure,
    }
    if settings.input_shape is not None:
        params["input_shape"] = ",".join(str(d) for d in settings.input_shape)
    if fresh:
        params["fresh"] = 1
    return params
