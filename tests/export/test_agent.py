"""The edge-board profiling agent and its client, over real HTTP on 127.0.0.1 (servers on free ports)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import select
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nasforge.cli import main as cli_main
from nasforge.errors import ConfigError, ExportError
from nasforge.export import AgentConfig, LatencyResult, RemoteProfiler, agent_info, get_profiler, make_server
from nasforge.export._agent import AgentServer, is_loopback, read_token_file, write_token_file
from nasforge.export._agent_http import usable_cpus

TOKEN = "test-token-0123456789abcdef"
FAST = "runs=20&warmup=2"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _tiny_model(op: str = "MatMul") -> onnx.ModelProto:
    """Y = X @ W + B with X of shape (1, 8); IR 10 so that onnxruntime loads it."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node(op, ["X", "W"], ["H"]), helper.make_node("Add", ["H", "B"], ["Y"])],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "tiny.onnx"
    model = _tiny_model()
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "agent.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def start_agent() -> Iterator[Callable[..., tuple[AgentServer, list[str]]]]:
    """Factory: an agent serving in a thread on 127.0.0.1:<free port>; returns it and its log lines."""
    servers: list[AgentServer] = []

    def start(**overrides: Any) -> tuple[AgentServer, list[str]]:
        logs: list[str] = []
        server = make_server(AgentConfig(token=TOKEN, port=0, **overrides), log=logs.append)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server, logs

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _call(
    server: AgentServer,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    sent = dict(headers or {})
    if token is not None:
        sent.setdefault("Authorization", f"Bearer {token}")
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, (json.loads(data) if data else {}), response


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------ server over HTTP


def test_profile_measures_caches_and_reports_the_board(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path, tmp_path: Path
) -> None:
    server, logs = start_agent(cache_dir=tmp_path / "cache")
    data = tiny_onnx.read_bytes()
    status, info, _ = _call(server, "GET", "/info")
    assert status == 200 and info["agent"] == "nasforge" and info["backends"] == ["ort-cpu"]
    assert info["max_bytes"] == 64 * 2**20 and info["busy"] is False
    assert isinstance(info["fingerprint"]["cpu"]["flags"], list) and info["fingerprint"]["versions"]["onnxruntime"]

    status, first, _ = _call(server, "POST", f"/profile?{FAST}", data)
    assert status == 200, first
    assert first["cached"] is False and first["model_sha256"] == hashlib.sha256(data).hexdigest()
    assert first["runs"] == 20 and first["warmup"] == 2 and first["backend"] == "ort-cpu"
    assert first["median_ms"] > 0 and first["min_ms"] <= first["median_ms"] <= first["p99_ms"]
    assert first["fingerprint"]["cpu"] == info["fingerprint"]["cpu"]
    assert all(isinstance(flag, str) for flag in first["fingerprint"]["cpu"]["flags"])

    status, second, _ = _call(server, "POST", f"/profile?{FAST}", data)
    assert status == 200 and second["cached"] is True
    assert {k: v for k, v in second.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    restarted, _ = start_agent(cache_dir=tmp_path / "cache")  # the disk cache survives a restart
    status, third, _ = _call(restarted, "POST", f"/profile?{FAST}", data)
    assert status == 200 and third["cached"] is True and third["median_ms"] == first["median_ms"]
    assert len(logs) == 3 and all(TOKEN not in line for line in logs)
    assert "POST /profile" in logs[1] and " 200 " in logs[1]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": f"Bearer {TOKEN}x"}],
    ids=["no-header", "wrong-token", "wrong-scheme", "longer-token"],
)
def test_401_without_the_right_token(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path, headers: dict[str, str]
) -> None:
    server, logs = start_agent()
    for method, path, body in (("GET", "/info", None), ("POST", f"/profile?{FAST}", tiny_onnx.read_bytes())):
        status, reply, response = _call(server, method, path, body, token=None, headers=headers)
        assert status == 401 and "token" in reply["error"]
        assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert all(TOKEN not in line for line in logs)


def test_413_from_the_header_without_reading_the_body(
    start_agent: Callable[..., tuple[AgentServer, list[str]]],
) -> None:
    server, _ = start_agent(max_bytes=2**20)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", f"/profile?{FAST}")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(10 * 2**20))
    conn.endheaders()  # no body follows: an answer proves the server did not wait to read one
    response = conn.getresponse()
    reply = json.loads(response.read())
    conn.close()
    assert response.status == 413 and "10485760 bytes" in reply["error"] and "--max-mb" in reply["error"]
    assert not server.job_lock.locked()


def test_411_without_content_length(start_agent: Callable[..., tuple[AgentServer, list[str]]]) -> None:
    server, _ = start_agent()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/profile")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    conn.close()


# ------------------------------------------------------------------------------- raw HTTP: slow, odd, malformed


def _raw_reply(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Read one HTTP response from ``sock`` (the agent closes after each): status, headers, JSON body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def _raw(server: AgentServer, request: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        return _raw_reply(sock)


def _upload_head(length: int | str) -> bytes:
    return (f"POST /profile?{FAST} HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_trickled_upload_gets_408_and_frees_the_slot(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path
) -> None:
    server, _ = start_agent(read_timeout_s=0.5)
    assert server.read_deadline(1000) == 0.5 and server.read_deadline(8 * 2**20) == 8.0
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_upload_head(1000))
        while not select.select([sock], [], [], 0.1)[0]:  # 10 bytes every 0.1 s until the agent answers
            assert sent < 990, "the agent never cut the trickle off"  # the last 10 bytes would complete it
            sock.sendall(b"x" * 10)
            sent += 10
        status, _, reply = _raw_reply(sock)
    assert status == 408 and "--read-timeout" in reply["error"], reply
    got = int(reply["error"].split("sent ")[1].split(" of 1000")[0])
    assert 10 <= got <= sent, (got, sent)  # the bytes that did arrive are counted
    assert not server.job_lock.locked()
    status, result, _ = _call(server, "POST", f"/profile?{FAST}", tiny_onnx.read_bytes())
    assert status == 200 and result["runs"] == 20


def test_an_upload_cut_short_counts_the_bytes_received(
    start_agent: Callable[..., tuple[AgentServer, list[str]]],
) -> None:
    server, _ = start_agent()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_upload_head(1000) + b"x" * 10)
        time.sleep(0.2)  # two segments: the headers and the first bytes are read before the end arrives
        sock.sendall(b"y" * 15)
        sock.shutdown(socket.SHUT_WR)
        status, _, reply = _raw_reply(sock)
    assert status == 400 and "stopped after 25 of 1000 bytes" in reply["error"], reply
    assert not server.job_lock.locked()


@pytest.mark.parametrize("value", [" +98", "9_8", "-1", "0x62", "98 ", "９８"])
def test_content_length_must_be_decimal_digits(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], value: str
) -> None:
    server, _ = start_agent()
    head = _upload_head("@@").replace(b"@@", value.encode("utf-8"))
    status, headers, reply = _raw(server, head + b"x" * 98)
    if value == "98 ":  # trailing whitespace is not part of an HTTP header value
        assert status == 422 and "not an ONNX model" in reply["error"], reply
        return
    assert status == 400 and "not a byte count" in reply["error"], reply
    assert headers["Content-Type"] == "application/json"


def test_two_content_lengths_are_refused(start_agent: Callable[..., tuple[AgentServer, list[str]]]) -> None:
    server, _ = start_agent()
    head = _upload_head(5).replace(b"\r\n\r\n", b"\r\nContent-Length: 50\r\n\r\n")
    status, _, reply = _raw(server, head + b"x" * 50)
    assert status == 400 and "'5', '50'" in reply["error"], reply


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"GARBAGE", 400), (b"GET /info HTTP/9.9", 505), (b"GET /info HTTP/one", 400), (b"FROB /info HTTP/1.1", 501),
     (b"GET /" + b"a" * 70000 + b" HTTP/1.1", 414)],
    ids=["no-method", "http-9.9", "bad-version", "unknown-method", "too-long"],
)
def test_malformed_http_gets_a_json_answer(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], request_line: bytes, status: int
) -> None:
    server, logs = start_agent()
    got, headers, reply = _raw(server, request_line + b"\r\nHost: agent\r\n\r\n")
    assert got == status and headers["Content-Type"] == "application/json"
    assert reply["error"].startswith("malformed HTTP request: ") and "POST /profile" in reply["error"], reply
    assert any(f" {status} " in line for line in logs), logs
    assert _call(server, "GET", "/info")[0] == 200  # the server is still up


def test_info_reports_the_limits(start_agent: Callable[..., tuple[AgentServer, list[str]]]) -> None:
    server, _ = start_agent(read_timeout_s=7.0)
    status, info, _ = _call(server, "GET", "/info")
    assert status == 200 and info["read_timeout_s"] == 7.0 and info["max_threads"] == usable_cpus() >= 1
    assert _call(server, "POST", f"/profile?threads={usable_cpus() + 1}", b"x")[1]["error"].startswith(
        f"threads={usable_cpus() + 1} is more than")


def _external_data_bytes(folder: Path) -> bytes:
    path = folder / "external.onnx"
    onnx.save_model(
        _tiny_model(), path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    return path.read_bytes()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("garbage", "not an ONNX model"),
        ("empty", "empty"),
        ("external", "external data"),
        ("checker", "onnx.checker"),
    ],
)
def test_422_for_anything_but_a_self_contained_onnx_model(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tmp_path: Path, kind: str, message: str
) -> None:
    server, _ = start_agent()
    body = {
        "garbage": lambda: b"not an onnx model at all\n" * 10,
        "empty": lambda: b"",
        "external": lambda: _external_data_bytes(tmp_path),
        "checker": lambda: _tiny_model(op="NoSuchOp").SerializeToString(),
    }[kind]()
    status, reply, _ = _call(server, "POST", f"/profile?{FAST}", body)
    assert status == 422 and message in reply["error"], reply
    assert "Traceback" not in reply["error"] and "\n" not in reply["error"]


def test_429_while_a_measurement_runs(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path
) -> None:
    server, _ = start_agent()
    data = tiny_onnx.read_bytes()
    slow: dict[str, Any] = {}

    def run_slow() -> None:
        slow["reply"] = _call(server, "POST", "/profile?runs=100000&warmup=0&max_remeasure=0", data)

    thread = threading.Thread(target=run_slow)
    thread.start()
    deadline = time.monotonic() + 60
    while not _call(server, "GET", "/info")[1]["busy"]:
        assert time.monotonic() < deadline and thread.is_alive(), "the slow job never showed as busy"
        time.sleep(0.005)
    status, reply, response = _call(server, "POST", f"/profile?{FAST}", data)
    thread.join(120)
    assert status == 429 and "busy" in reply["error"] and response.getheader("Retry-After") == "5"
    assert slow["reply"][0] == 200 and slow["reply"][1]["runs"] == 100000


def test_504_when_the_measurement_exceeds_the_timeout(
    start_agent: Callable[..., tuple[AgentServer, list[str]]],
    tiny_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server, _ = start_agent(timeout_s=0.5)
    status, reply, _ = _call(server, "POST", "/profile?runs=1000000&warmup=0&max_remeasure=0", tiny_onnx.read_bytes())
    assert status == 504 and "0.5 s" in reply["error"] and "--timeout" in reply["error"]
    assert not list(tmp_path.glob("nasforge-agent-*"))  # the private copy of the model is gone
    assert _call(server, "GET", "/info")[1]["busy"] is False


def test_422_names_the_failure_without_the_agents_temp_path(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path
) -> None:
    server, _ = start_agent()
    status, reply, _ = _call(server, "POST", f"/profile?{FAST}&batch=4", tiny_onnx.read_bytes())
    assert status == 422 and "fixed batch size of 1" in reply["error"]
    assert "nasforge-agent-" not in reply["error"] and "the uploaded model" in reply["error"]


def _custom_op_model() -> bytes:
    """A model that passes onnx.checker but uses an operator onnxruntime does not have."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["X"], ["Y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_custom_operator_is_the_clients_error_422(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tmp_path: Path
) -> None:
    server, logs = start_agent()
    status, reply, _ = _call(server, "POST", f"/profile?{FAST}", _custom_op_model())
    assert status == 422 and "com.example:Frobnicate" in reply["error"], reply
    assert "internal error" not in " ".join(logs) and not server.job_lock.locked()
    model = tmp_path / "custom.onnx"
    model.write_bytes(_custom_op_model())
    with pytest.raises(ExportError, match=r"cannot measure this model \(422: .*Frobnicate"):
        RemoteProfiler(url=server.url, token=TOKEN).measure(model, runs=20, warmup=2)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("runs=0", "runs=0 is invalid"),
        ("batch=two", "batch='two' is invalid"),
        ("threads=1&threads=2", "given twice"),
        ("foo=1", "unknown query parameter 'foo'"),
        ("backend=torch-cpu", "not offered by this agent"),
        ("input_shape=3,0", "input_shape"),
        ("threads=100000", "usable CPU core"),
    ],
)
def test_400_for_bad_settings(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path, query: str, message: str
) -> None:
    server, _ = start_agent()
    status, reply, _ = _call(server, "POST", f"/profile?{query}", tiny_onnx.read_bytes())
    assert status == 400 and message in reply["error"], reply


def test_404_and_405(start_agent: Callable[..., tuple[AgentServer, list[str]]]) -> None:
    server, _ = start_agent()
    assert _call(server, "GET", "/nope", token=None)[0] == 404
    status, reply, response = _call(server, "GET", "/profile")
    assert status == 405 and response.getheader("Allow") == "POST" and "takes POST" in reply["error"]
    assert _call(server, "DELETE", "/info")[0] == 405
    assert _call(server, "PUT", "/profile", b"x")[0] == 405


# ---------------------------------------------------------------------------------------------------- client


def test_remote_profiler_returns_the_agents_measurement(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path
) -> None:
    server, _ = start_agent()
    profiler = get_profiler("remote", url=server.url, token=TOKEN)
    assert isinstance(profiler, RemoteProfiler) and TOKEN not in repr(profiler)
    result = profiler.measure(tiny_onnx, runs=20, warmup=2, threads=1)
    assert isinstance(result, LatencyResult) and result.backend == "ort-cpu" and result.runs == 20
    info = agent_info(server.url, TOKEN)
    assert result.fingerprint["cpu"] == info["fingerprint"]["cpu"]
    assert profiler.last_reply is not None and profiler.last_reply["cached"] is False
    again = profiler.measure(str(tiny_onnx), runs=20, warmup=2)
    assert again == result and profiler.last_reply["cached"] is True
    # repeated measurements of one model (interleaved rounds) ask for a new one
    profiler.measure(tiny_onnx, runs=20, warmup=2, fresh=True)
    assert profiler.last_reply["cached"] is False and RemoteProfiler.caches


def test_client_refuses_an_oversize_file_before_uploading(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path
) -> None:
    size = tiny_onnx.stat().st_size
    server, _ = start_agent(max_bytes=size - 1)
    profiler = RemoteProfiler(url=server.url, token=TOKEN)
    with pytest.raises(ConfigError, match=rf"has {size} bytes, more than the agent accepts.*nothing was sent"):
        profiler.measure(tiny_onnx, runs=20, warmup=2)
    assert server.counts["GET /info"] == 1 and server.counts["POST /profile"] == 0


def test_client_refuses_a_non_onnx_file_before_uploading(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tmp_path: Path
) -> None:
    server, _ = start_agent()
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not an onnx model at all\n")
    external = tmp_path / "external.onnx"
    external.write_bytes(_external_data_bytes(tmp_path))
    profiler = RemoteProfiler(url=server.url, token=TOKEN)
    with pytest.raises(ExportError, match=r"not an ONNX model.*nothing was sent"):
        profiler.measure(fake)
    with pytest.raises(ExportError, match=r"external data.*nothing was sent"):
        profiler.measure(external)
    with pytest.raises(ExportError, match=r"no ONNX file"):
        profiler.measure(tmp_path / "missing.onnx")
    assert server.counts["POST /profile"] == 0


def test_client_errors_say_what_to_do(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], tiny_onnx: Path
) -> None:
    server, _ = start_agent()
    with pytest.raises(ConfigError, match=r"rejected the token \(401\).*--token-file"):
        RemoteProfiler(url=server.url, token="wrong-token-0123456789").measure(tiny_onnx)
    with pytest.raises(ConfigError, match=r"connection refused.*agent serve.*ssh -L"):
        RemoteProfiler(url=f"http://127.0.0.1:{_free_port()}", token=TOKEN).measure(tiny_onnx)
    with pytest.raises(ConfigError, match=r"offers backend\(s\) ort-cpu, not 'tensorrt'"):
        RemoteProfiler(url=server.url, token=TOKEN).measure(tiny_onnx, backend="tensorrt")
    with pytest.raises(ConfigError, match="invalid"):
        RemoteProfiler(url="ftp://board:21", token=TOKEN)
    with pytest.raises(ConfigError, match="exactly one of token"):
        RemoteProfiler(url=server.url)
    with pytest.raises(ConfigError, match="needs the agent's address and token"):
        get_profiler("remote").measure(tiny_onnx)
    assert server.job_lock.acquire(blocking=False)  # a job in progress
    try:
        with pytest.raises(ExportError, match=r"busy.*\(429\); retry in 5 s"):
            RemoteProfiler(url=server.url, token=TOKEN).measure(tiny_onnx)
    finally:
        server.job_lock.release()


# ---------------------------------------------------------------------------------------- tokens and config


def test_token_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "agent.token"
    with pytest.raises(ConfigError, match="does not exist.*nasforge agent token --out"):
        read_token_file(path)
    written = write_token_file(path)
    assert written == path and len(read_token_file(path)) >= 40
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.chmod(0o640)
        with pytest.raises(ConfigError, match=r"readable by other users \(mode 640\); run `chmod 600"):
            read_token_file(path)
        path.chmod(0o600)
    with pytest.raises(ConfigError, match="exists; pass --force"):
        write_token_file(path)
    old = read_token_file(path)
    write_token_file(path, overwrite=True)
    assert read_token_file(path) != old
    path.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token_file(path)
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        read_token_file(path)


def test_agent_token_command_writes_a_private_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "board.token"
    assert cli_main(["agent", "token", "--out", str(path)]) == 0
    assert read_token_file(path) and "mode 600" in capsys.readouterr().out
    assert cli_main(["agent", "token", "--out", str(path)]) == 2
    assert "pass --force" in capsys.readouterr().err


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasforge: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-mb", "inf"], "--max-mb inf is invalid; pass a finite number > 0"),
        (["--max-mb", "nan"], "--max-mb nan is invalid"),
        (["--max-mb", "0"], "--max-mb 0 is invalid"),
        (["--max-mb", "-5"], "--max-mb -5 is invalid"),
        (["--timeout", "inf"], "--timeout inf is invalid"),
        (["--read-timeout", "0"], "--read-timeout 0 is invalid"),
        (["--port", "65536"], "--port 65536 is invalid; pass an integer from 0 to 65535"),
        (["--host", "0.0.0.0"], "not a loopback address"),
        (["--host", "192.168.1.5", "--port", "0"], "--allow-remote"),
    ],
)
def test_agent_serve_bad_options_are_one_line_exit_2(
    token_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    assert cli_main(["agent", "serve", "--token-file", str(token_file), *args]) == 2
    assert expected in _one_line_error(capsys)


def test_agent_token_unwritable_path_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert cli_main(["agent", "token", "--out", str(a_file / "agent.token")]) == 2
    line = _one_line_error(capsys)
    assert "cannot write the token file" in line and "folder you can write to" in line
    if os.name != "posix" or os.geteuid() == 0:
        return  # root writes into read-only folders
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert cli_main(["agent", "token", "--out", str(locked / "agent.token")]) == 2
        assert "Permission denied" in _one_line_error(capsys)
    finally:
        locked.chmod(0o700)


def test_agent_config_validation() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        AgentConfig(token="short")
    with pytest.raises(ConfigError, match="does not measure ONNX files"):
        AgentConfig(token=TOKEN, backends=("torch-cpu",))
    with pytest.raises(ConfigError, match="unknown latency backend"):
        AgentConfig(token=TOKEN, backends=("nope",))
    with pytest.raises(ConfigError, match="max_bytes"):
        AgentConfig(token=TOKEN, max_bytes=0)
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="read_timeout_s=.* is invalid"):
            AgentConfig(token=TOKEN, read_timeout_s=bad)
        with pytest.raises(ConfigError, match="timeout_s=.* is invalid"):
            AgentConfig(token=TOKEN, timeout_s=bad)
    assert TOKEN not in repr(AgentConfig(token=TOKEN))


def test_loopback_only_unless_allow_remote_and_then_a_warning() -> None:
    assert AgentConfig(token=TOKEN).host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("board.local")
    with pytest.raises(ConfigError, match=r"'0\.0\.0\.0' is not a loopback address.*ssh -L.*--allow-remote"):
        AgentConfig(token=TOKEN, host="0.0.0.0", port=0)
    logs: list[str] = []
    server = make_server(AgentConfig(token=TOKEN, host="0.0.0.0", port=0, allow_remote=True), log=logs.append)
    server.server_close()
    assert len(logs) == 1 and "warning" in logs[0] and "ssh -L" in logs[0]


def test_agent_and_worker_do_not_import_torch(tiny_onnx: Path) -> None:
    code = (
        "import contextlib, io, json, sys\n"
        "import nasforge.cli, nasforge.export, nasforge.export._agent, nasforge.export._agent_worker\n"
        "from nasforge.export._agent_worker import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = main([{str(tiny_onnx)!r}, json.dumps({{'backend': 'ort-cpu', 'runs': 5, 'warmup': 1}})])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
        "print(out.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"] == 5


# ---------------------------------------------------------------------------------- command line, end to end


def _nasforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nasforge", *args], capture_output=True, text=True, env=ENV, timeout=180
    )


@pytest.fixture(scope="module")
def cli_agent(token_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``nasforge agent serve`` as a real process on a free loopback port; yields its URL."""
    log = tmp_path_factory.mktemp("serve") / "agent.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nasforge", "agent", "serve", "--port", "0", "--token-file", str(token_file)],
            stdout=sink,
            stderr=sink,
            env=ENV,
        )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the agent did not start"
            for word in log.read_text().split():
                if word.startswith("http://127.0.0.1:"):
                    url = word
            select.select([], [], [], 0.05)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped" in log.read_text()


def test_cli_profile_remote_gives_the_same_json_as_local(cli_agent: str, token_file: Path, tiny_onnx: Path) -> None:
    settings = ("--runs", "20", "--warmup", "2", "--json")
    remote = _nasforge("profile", str(tiny_onnx), "--remote", cli_agent, "--token-file", str(token_file), *settings)
    local = _nasforge("profile", str(tiny_onnx), "--backend", "ort-cpu", *settings)
    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    remote_json, local_json = json.loads(remote.stdout), json.loads(local.stdout)
    assert set(remote_json) == set(local_json) == set(LatencyResult.__dataclass_fields__)
    assert remote_json["runs"] == local_json["runs"] == 20 and remote_json["median_ms"] > 0
    assert isinstance(remote_json["fingerprint"]["cpu"]["flags"], list)

    human = _nasforge("profile", str(tiny_onnx), "--remote", cli_agent, "--token-file", str(token_file),
                      "--runs", "20", "--warmup", "2")
    assert human.returncode == 0, human.stderr
    assert "p50" in human.stdout and "p99" in human.stdout and "CV" in human.stdout
    assert f"the agent at {cli_agent} (cached result)" in human.stdout


@pytest.mark.parametrize("case", ["missing", "not-onnx", "wrong-token", "loose-token-file", "torch-cpu",
                                  "token-without-remote", "serve-loose-token-file"])
def test_cli_bad_input_is_one_line_exit_2(
    case: str, cli_agent: str, token_file: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    if "loose" in case and os.name != "posix":
        pytest.skip("file modes are POSIX")
    wrong = tmp_path / "wrong.token"
    wrong.write_text("wrong-token-0123456789\n")
    wrong.chmod(0o600)
    loose = tmp_path / "loose.token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    fake = tmp_path / "fake.onnx"
    fake.write_text("hello")
    remote = ("--remote", cli_agent, "--token-file")
    args, expected = {
        "missing": (["profile", str(tmp_path / "none.onnx"), *remote, str(token_file)], "no ONNX file"),
        "not-onnx": (["profile", str(fake), *remote, str(token_file)], "not an ONNX model"),
        "wrong-token": (["profile", str(tiny_onnx), *remote, str(wrong)], "rejected the token"),
        "loose-token-file": (["profile", str(tiny_onnx), *remote, str(loose)], "chmod 600"),
        "torch-cpu": (["profile", str(tiny_onnx), "--backend", "torch-cpu"], "use --backend ort-cpu"),
        "token-without-remote": (["profile", str(tiny_onnx), "--token-file", str(token_file)], "--remote"),
        "serve-loose-token-file": (["agent", "serve", "--port", "0", "--token-file", str(loose)], "chmod 600"),
    }[case]
    proc = _nasforge(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasforge: error: ") and expected in lines[0], proc.stderr
    assert proc.stdout == ""


def test_selective_quantization_measures_through_the_agent(
    start_agent: Callable[..., tuple[AgentServer, list[str]]], dynamic_onnx: Path, tmp_path: Path
) -> None:
    """Issue 22: the variants are timed on the board (its agent), and what ships cleared the bar there."""
    from nasforge.devices import Device
    from nasforge.quantize import QuantConfig, quantize

    server, logs = start_agent()
    board = Device(name="board", backend="remote", runs=20, warmup=2, options={"url": server.url, "token": TOKEN})
    out = tmp_path / "net.int8.onnx"
    config = QuantConfig(method="dynamic", float_groups=("stem", "swish"))  # fewer variants: a faster test
    report = quantize(dynamic_onnx, out, config=config, device=board, batches=(1,),
                      fingerprint={"cpu": {"model": "x", "flags": ["avx512_vnni"]}})
    trials = report.selection["trials"]
    assert len(trials) >= 2 and set(report.latency) == {"1"}
    assert report.config["float_groups"] == ["stem", "swish"]
    assert sum("measured" in line or "profile" in line.lower() for line in logs) >= 2 * len(trials), logs[-3:]
    if report.choice == "fp32":
        assert all(row["speedup"] == 1.0 for row in report.latency.values())
    else:  # the groups asked for stay in float, with that reason
        assert min(row["speedup"] for row in report.latency.values()) >= 1.03
        assert report.selection["float_groups"]["stem"] == "asked for (float_groups)"
