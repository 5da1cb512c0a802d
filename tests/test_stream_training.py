"""Training on image folders at scale: real JPEGs read by DataLoader workers through `nasforge train` and
`nasforge run`, two gloo processes against one, SIGKILL mid-epoch, bf16 autocast, bad images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from nasforge.cli import main
from nasforge.data import make_image_folder
from nasforge.supernets.checkpoint import load_checkpoint, load_supernet

sys.path.insert(0, str(Path(__file__).parent / "data"))
from test_stream import index_folder  # noqa: E402

WORKER = Path(__file__).parent / "supernets" / "ddp_folder_worker.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("jpegs") / "imgs", classes=3, per_class=24, size=(40, 32),
                             seed=3)


def _train_args(data: str, out: Path, *extra: str) -> list[str]:
    return ["train", "mbv3-small", "--trainer", "sandwich", "--data", data, "--image-size", "16", "--epochs", "1",
            "--batch-size", "8", "--out", str(out), "--quiet", "--set", "calib_images=16", *extra]


def test_train_streams_a_jpeg_folder_with_workers(jpegs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(_train_args(f"folder:{jpegs}", out, "--workers", "2", "--set", "augment.brightness=0.2")) == 0
    history = json.loads((out / "train_history.json").read_text())
    assert history[0]["images_per_s"] > 0 and 0 <= history[0]["data_wait"] <= 1
    assert 0 <= history[0]["val_acc_max"] <= 1 and "bad_images" not in history[0]
    request = json.loads((out / "train.json").read_text())
    assert request["augment"]["brightness"] == 0.2 and request["augment"]["scale"] == [0.08, 1.0]
    net, _ = load_supernet(out / "checkpoints" / "supernet.pt")
    assert net.config.num_classes == 3


def test_run_pipeline_on_a_jpeg_folder(jpegs: Path, tmp_path: Path) -> None:
    config = {"data": {"spec": f"folder:{jpegs}", "image_size": 16, "workers": 2, "augment": {"preset": "light"}},
              "train": {"epochs": 1, "batch_size": 8, "calib_images": 16},
              "search": {"trials": 2, "objectives": ["accuracy", "macs"], "calib_images": 16},
              "export": {"max_subnets": 1, "runs": 5, "warmup": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["data"]["augment"] == {"preset": "light"} and saved["data"]["workers"] == 2
    metrics = json.loads((tmp_path / "r" / "subnets" / "0" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1


def _pick_kill_point(proc: subprocess.Popen[bytes], ckpt: Path, deadline: float) -> dict[str, int]:
    """Wait for a mid-epoch ``last.pt``, then SIGKILL the run; returns where it was."""
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ckpt.exists():
                state = load_checkpoint(ckpt)
                if state.get("step"):
                    return {"epoch": int(state["epoch"]), "step": int(state["step"])}
            time.sleep(0.05)
        raise AssertionError("no mid-epoch checkpoint before the run ended")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigkill_mid_epoch_resumes_with_the_same_remaining_batches(tmp_path: Path) -> None:
    """A killed run resumed from its mid-epoch checkpoint ends bit-identical to an uninterrupted one."""
    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=40, size=(24, 20), seed=5)
    args = lambda out: _train_args(f"folder:{folder}", out, "--workers", "0", "--set", "checkpoint_every=2",  # noqa: E731
                                   "--epochs", "2")
    ref = tmp_path / "ref"
    assert main(args(ref)) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nasforge", *args(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    where = _pick_kill_point(proc, out / "checkpoints" / "last.pt", time.monotonic() + 240)
    assert not (out / "checkpoints" / "supernet.pt").exists() and where["step"] > 0
    assert main([*args(out), "--resume"]) == 0
    a, b = torch.load(ref / "checkpoints" / "supernet.pt")["model"], torch.load(out / "checkpoints" / "supernet.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed from epoch {where['epoch']} step {where['step']}"
    ha, hb = (json.loads((d / "train_history.json").read_text()) for d in (ref, out))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_two_gloo_processes_with_the_sharded_loader(tmp_path: Path) -> None:
    """Each rank reads half of every global batch, together every sample exactly once; training matches one
    process that accumulates two micro-batches (tolerance as in test_distributed: 2e-4 after 2 short phases)."""
    folder = index_folder(tmp_path / "numbered", n=48)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
           str(port), str(WORKER), str(folder), str(tmp_path / "ddp"), "1", "2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one = subprocess.run([sys.executable, str(WORKER), str(folder), str(tmp_path / "one"), "2", "1"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    seen = [json.loads((tmp_path / f"ddp.seen{r}").read_text()) for r in (0, 1)]
    reference = json.loads((tmp_path / "one.seen0").read_text())
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == sorted(reference)
    assert len(reference) == len(set(reference)) == (len(reference) // 8) * 8 > 0
    r0, r1, ref = (torch.load(tmp_path / name) for name in ("ddp.rank0", "ddp.rank1", "one.rank0"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks diverged"
    assert max(float((r0[k] - ref[k]).abs().max()) for k in r0) < 2e-4
    hist = json.loads((tmp_path / "ddp.history").read_text())
    ref_hist = json.loads((tmp_path / "one.history").read_text())
    assert [h["val_acc_max"] for h in hist] == pytest.approx([h["val_acc_max"] for h in ref_hist], abs=1e-9)


def test_bad_images_are_skipped_then_stop_the_run_with_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=20, size=(24, 20), seed=2)
    for k, name in enumerate(sorted((folder / "n0000").iterdir())[:6]):
        name.write_bytes(name.read_bytes()[: 40 + k])  # truncated JPEGs
    assert main(_train_args(f"folder:{folder}", tmp_path / "ok", "--workers", "0")) == 0
    history = json.loads((tmp_path / "ok" / "train_history.json").read_text())
    assert 1 <= history[0]["bad_images"] <= 6
    capsys.readouterr()
    assert main(_train_args(f"folder:{folder}", tmp_path / "strict", "--workers", "0", "--max-bad-images", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert "unreadable image" in err and ".jpg" in err and len(err.splitlines()) == 1


def test_precision_and_recipe_errors_are_one_line(jpegs: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for extra, needle in ((["--precision", "fp8"], "precision"), (["--precision", "fp16"], "bf16 on CPU"),
                          (["--set", "augment.bogus=1"], "bogus"), (["--workers", "-1"], "workers")):
        assert main(_train_args(f"folder:{jpegs}", tmp_path / needle.replace(" ", "_"), *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
