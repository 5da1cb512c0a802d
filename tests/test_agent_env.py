"""The profiling agent on a board without PyTorch: `nasforge agent token` and `nasforge agent serve` with torch
blocked, one authenticated measurement over HTTP.

CI runs this file a second time in a virtual environment that holds only nasforge (installed with --no-deps),
the `agent` extra's packages and pytest (`.ci/run`). Nothing here imports nasforge in the test process: the
agent runs in a child process started outside the source tree, so it uses the installed package.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]

# Installed in every Python process started with PYTHONPATH=<folder holding it>: the agent and its worker.
_BLOCK_TORCH = '''
import os, sys

class _NoTorch:
    """Refuse torch and torch.* and note every attempt in $NASFORGE_TORCH_LOG."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            with open(os.environ["NASFORGE_TORCH_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(f"{name} is blocked: the agent must run without PyTorch")
        return None

sys.meta_path.insert(0, _NoTorch())
'''

# The agent as a board runs it: `nasforge agent token`, then `nasforge agent serve` until SIGTERM.
_AGENT = '''
import json, sys
if not any(type(finder).__name__ == "_NoTorch" for finder in sys.meta_path):
    raise SystemExit("the torch blocker is not active")
from nasforge.cli import main
token = sys.argv[1]
assert main(["agent", "token", "--out", token]) == 0
rc = main(["agent", "serve", "--host", "127.0.0.1", "--port", "0", "--token-file", token, "--read-timeout", "5"])
third_party = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"nasforge"})
print(json.dumps({"rc": rc, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
                  "third_party": third_party}))
'''


def _tiny_onnx() -> bytes:
    """Y = X @ W with X of shape (1, 8); IR 10 so that onnxruntime loads it."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4) / 32, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _wait_for_url(proc: subprocess.Popen[str], seen: list[str], timeout: float = 60.0) -> str:
    """Read the agent's stderr until it says where it listens (the agent is killed past ``timeout``)."""
    assert proc.stderr is not None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stderr:
            seen.append(line)
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                return match.group(1)
    finally:
        timer.cancel()
    raise AssertionError("the agent did not start: " + "".join(seen))


@contextlib.contextmanager
def _agent_without_torch(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str], list[str]]]:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCK_TORCH)
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NASFORGE_TORCH_LOG": str(tmp_path / "torch.log"), "OMP_NUM_THREADS": "1"}
    token = tmp_path / "agent.token"
    proc = subprocess.Popen([sys.executable, "-c", _AGENT, str(token)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[str] = []
    try:
        yield _wait_for_url(proc, seen), token, proc, seen
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _post(url: str, token: str, body: bytes) -> tuple[int, dict[str, object]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", "/profile?runs=5&warmup=1", body=body, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_agent_token_and_serve_without_torch(tmp_path: Path) -> None:
    with _agent_without_torch(tmp_path) as (url, token_file, proc, seen):
        token = token_file.read_text().strip()
        assert (token_file.stat().st_mode & 0o777) == 0o600
        status, reply = _post(url, token, _tiny_onnx())
        assert status == 200, reply
        assert reply["runs"] == 5 and reply["backend"] == "ort-cpu" and float(reply["median_ms"]) > 0  # type: ignore[arg-type]
        assert _post(url, "wrong-token-0123456789", _tiny_onnx())[0] == 401
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(seen) + err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["rc"] == 0 and report["torch"] == []
    log = tmp_path / "torch.log"
    assert not log.exists(), f"the agent or its worker tried to import {log.read_text().split()}"
    _check_agent_extra(set(report["third_party"]))


def _check_agent_extra(loaded: set[str]) -> None:
    """The `agent` extra of pyproject.toml lists no PyTorch, and the agent imports every package it lists."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        return
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["agent"]
    names = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("-", "_") for req in extra}
    assert "torch" not in names and names, extra
    assert names <= loaded, f"the agent extra lists {sorted(names - loaded)}, which the agent never imports"
