"""DDP through real torchrun processes (gloo, CPU) against one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasforge.distributed import DistContext, init_distributed, resolve_device
from nasforge.errors import ConfigError

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
@pytest.mark.parametrize("trainer", ["ps", "deps"])
def test_two_process_ddp_matches_one_process(tmp_path, trainer):
    """2 gloo processes x 16 images == 1 process accumulating 2 micro-batches of 16 (global batch 32).

    Tolerance: 2e-4 absolute on every parameter after 6 steps (3 teacher steps, 3 steps of 4 subnets each).
    DDP averages the two ranks' summed subnet gradients while one process sums them in another order, so
    rounding differs (measured ~6e-5); the teacher steps, with one subnet, agree bit for bit. Both ranks must end
    with identical weights, and the weights must move far more than the tolerance. ``deps``: 3 full-model steps,
    then 3 sandwich steps whose subnets carry ε-ramp gradient weights below 1.
    """
    port = _free_port()
    cmd = [str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(WORKER), str(tmp_path / "ddp"), "1", "2", trainer]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one"), "2", "1", trainer], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"ddp.rank{r}") for r in (0, 1))
    ref = torch.load(tmp_path / "one.rank0")
    init = _initial_params()
    assert r0.keys() == ref.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks diverged on {k}"
    diff = max(float((r0[k] - ref[k]).abs().max()) for k in r0)
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref)
    assert diff < 2e-4, diff
    assert moved > 100 * 2e-4, moved


def _initial_params() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(WORKER.parent))
    try:
        from ddp_worker import OPTIONS
    finally:
        sys.path.pop(0)
    from nasforge.supernets import create_supernet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_supernet("mbv3-small", **OPTIONS)
    return {k: v.detach() for k, v in net.named_parameters()}


def test_single_process_context_without_torchrun(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    x = torch.arange(8)
    assert torch.equal(ctx.shard(x), x) and ctx.mean(3.0) == 3.0 and ctx.no_sync(torch.nn.Linear(1, 1)) is None
    assert DistContext(rank=1, world_size=2).shard(x).tolist() == [4, 5, 6, 7]


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            resolve_device("cuda")


def test_batch_must_divide_by_processes(make_tiny_net, tiny_digits):
    from nasforge.supernets.trainers import TrainConfig, get_trainer

    with pytest.raises(ConfigError, match="must divide"):
        get_trainer("ps", TrainConfig(batch_size=30, micro_batches=4)).fit(
            make_tiny_net(0), tiny_digits, supernet_name="mbv3-small")
