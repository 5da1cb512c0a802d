"""Progressive shrinking: the reference schedule, its scaling, a full small run, resume inside a phase."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import torch

from nasforge.errors import CheckpointError, ConfigError
from nasforge.supernets import create_supernet
from nasforge.supernets.trainers import Phase, TrainConfig, get_trainer
from nasforge.supernets.trainers.progressive import REFERENCE_SCHEDULE, ProgressiveShrinkingTrainer
from nasforge.supernets.trainers.steps import build_optimizer, distill_step

SMALL = {"batch_size": 32, "schedule_scale": 0.01, "calib_images": 64, "seed": 0}


def _ps(**kw: Any) -> ProgressiveShrinkingTrainer:
    return get_trainer("ps", TrainConfig(**{**SMALL, **kw}))  # type: ignore[return-value]


def test_reference_schedule_at_scale_one():
    space = create_supernet("ofa-mbv3-w1.0").space
    phases = _ps(schedule_scale=1.0, batch_size=64).phases(space)
    assert [p.name for p in phases] == ["teacher", "kernel", "depth-1", "depth-2", "expand-1", "expand-2"]
    # epochs include warm-up: the reference runs n_epochs + warmup_epochs
    assert [(p.epochs, p.warmup_epochs) for p in phases] == [(185, 5), (125, 5), (25, 0), (125, 5), (25, 0), (125, 5)]
    assert [p.lr for p in phases] == pytest.approx([0.08125, 3e-2, 2.5e-3, 7.5e-3, 2.5e-3, 7.5e-3])
    assert [p.subnets_per_step for p in phases] == [1, 1, 2, 2, 4, 4]
    assert [p.expand_stage for p in phases] == [None, None, None, None, 0, 1]
    assert [dict(p.choices) for p in phases] == [
        {"ks": (7,), "e": (6,), "d": (4,)},
        {"ks": (3, 5, 7), "e": (6,), "d": (4,)},
        {"ks": (3, 5, 7), "e": (6,), "d": (3, 4)},
        {"ks": (3, 5, 7), "e": (6,), "d": (2, 3, 4)},
        {"ks": (3, 5, 7), "e": (4, 6), "d": (2, 3, 4)},
        {"ks": (3, 5, 7), "e": (3, 4, 6), "d": (2, 3, 4)},
    ]
    assert not phases[0].distill and all(p.distill for p in phases[1:])


def test_scale_keeps_proportions_and_lr_follows_the_batch():
    space = create_supernet("ofa-mbv3-w1.0").space
    tenth = _ps(schedule_scale=0.1, batch_size=256, lr_scale=0.5).phases(space)
    assert [p.epochs - p.warmup_epochs for p in tenth] == [18, 12, 2, 12, 2, 12]  # round(ref * 0.1), warm-up apart
    assert [p.warmup_epochs for p in tenth] == [0] * 6  # round(5 * 0.1) == 0
    half = _ps(schedule_scale=0.5).phases(space)
    assert [(p.epochs, p.warmup_epochs) for p in half] == [(92, 2), (62, 2), (12, 0), (62, 2), (12, 0), (62, 2)]
    assert tenth[1].lr == pytest.approx(3e-2 * 256 / 64 * 0.5)
    tiny = _ps(schedule_scale=1e-4).phases(space)
    assert all(p.epochs == 1 and p.warmup_epochs == 0 for p in tiny)  # every phase still runs


def test_phase_space_restriction(tiny_net):
    phase = Phase("x", 1, 0.1, choices={"ks": (3,), "d": (1,)})
    space = phase.space(tiny_net.space)
    rng = random.Random(0)
    for _ in range(20):
        arch = space.sample(rng)
        assert set(tiny_net.space.canonical(arch)["ks"]) <= {3, max(tiny_net.space.dim("ks").choices)}
        assert set(arch["d"]) == {1}
    with pytest.raises(ConfigError, match="subset"):
        Phase("bad", 1, 0.1, choices={"ks": (9,)}).space(tiny_net.space)
    with pytest.raises(ConfigError, match="unknown dimension"):
        Phase("bad", 1, 0.1, choices={"width": (1,)}).space(tiny_net.space)
    with pytest.raises(ConfigError, match="bad phase"):
        Phase("bad", 0, 0.1)


def test_step_shares_one_resolution_and_the_teacher_sees_it(tiny_net, tiny_digits):
    """All subnets of a step and the teacher get the same input resolution, sampled per batch."""
    seen: list[int] = []
    trainer = _ps()
    trainer.teacher = tiny_net.extract(tiny_net.space.largest()).train()
    trainer.teacher.register_forward_pre_hook(lambda m, inp: seen.append(("t", inp[0].shape[-1])))
    tiny_net.register_forward_pre_hook(lambda m, inp: seen.append(("s", inp[0].shape[-1])))
    phase = trainer.phases(tiny_net.space)[-1]
    opt = build_optimizer(tiny_net, lr=phase.lr)
    from nasforge.supernets.trainers.epoch import EpochJob, run_epoch

    run_epoch(trainer, EpochJob(tiny_net, tiny_net, opt, tiny_digits, _ctx(), phase.space(tiny_net.space), phase, 5,
                                0, 4, 0))
    steps = [seen[i : i + 1 + phase.subnets_per_step] for i in range(0, len(seen), 1 + phase.subnets_per_step)]
    assert len(steps) == 4
    for step in steps:
        assert step[0][0] == "t" and [k for k, _ in step[1:]] == ["s"] * phase.subnets_per_step
        assert len({r for _, r in step}) == 1
    assert len({step[0][1] for step in steps}) > 1  # resolution varies across batches


def _ctx():
    from nasforge.distributed import DistContext

    return DistContext()


def test_distill_step_accumulates_then_steps_once(tiny_net, make_tiny_net, tiny_digits):
    """Gradients of the step's subnets add up before a single optimizer update; micro-batching changes nothing
    but rounding."""
    x, y = tiny_digits.train.x[:16], tiny_digits.train.y[:16]
    space = tiny_net.space
    archs = [space.largest(), space.smallest().replace(r=16)]
    states = []
    for micro in (1, 2):
        net = make_tiny_net()
        net.load_state_dict(tiny_net.state_dict())
        net.eval()  # BN in eval (and no teacher, which runs in train mode): chunks see the same statistics
        opt = build_optimizer(net, lr=0.1, momentum=0.0, weight_decay=0.0)
        calls: list[int] = []
        opt.register_step_post_hook(lambda *a, calls=calls: calls.append(1))
        distill_step(net, opt, x, y, archs, None, micro_batches=micro, step_seed=3)
        assert calls == [1]
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], atol=1e-6), k


def _fit(net, data, tmp_path, cfg: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    trainer = _ps(**(cfg or {}))
    return trainer.fit(net, data, supernet_name="mbv3-small", supernet_options={},
                       checkpoint_dir=tmp_path, **kw)


def test_small_ps_run_all_phases(make_tiny_net, tiny_digits, tmp_path):
    net = make_tiny_net(0)
    history = _fit(net, tiny_digits, tmp_path)
    names = [h["phase"] for h in history]
    assert names == ["teacher", "teacher", "kernel", "depth-1", "depth-2", "expand-1", "expand-2"]
    assert [h["epoch"] for h in history] == list(range(1, 8))
    assert all(0 <= h["val_acc_max"] <= 1 and 0 <= h["val_acc_min"] <= 1 and h["loss"] > 0 for h in history)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["last.pt", "phase-1-teacher.pt", "phase-2-kernel.pt", "phase-3-depth-1.pt",
                     "phase-4-depth-2.pt", "phase-5-expand-1.pt", "phase-6-expand-2.pt"]
    # the loss of later phases includes KD and more subnets per step
    assert history[-1]["loss"] > history[1]["loss"]


def test_resume_inside_a_phase_and_after_the_teacher(make_tiny_net, tiny_digits, tmp_path):
    ref_net = make_tiny_net(0)
    ref = _fit(ref_net, tiny_digits, tmp_path / "ref")
    for stop_after in (1, 4):  # inside the teacher phase; after depth-1 (the teacher comes back from its file)
        ckpt = tmp_path / f"stop{stop_after}"

        def stop(rec: dict[str, Any], n: int = stop_after) -> None:
            if rec["epoch"] == n:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _fit(make_tiny_net(0), tiny_digits, ckpt, on_epoch=stop)
        net = make_tiny_net(1)  # other initial weights: everything must come from the checkpoint
        heard: list[dict[str, Any]] = []
        history = _fit(net, tiny_digits, ckpt, resume=True, on_resume=heard.append)
        assert [h["epoch"] for h in history] == list(range(1, 8))
        assert [(h["global_epoch"], h["step"], h["epochs"]) for h in heard] == [(stop_after, 0, 7)]  # said where
        assert history[-1]["loss"] == pytest.approx(ref[-1]["loss"], rel=1e-5)
        for (k, a), b in zip(ref_net.state_dict().items(), net.state_dict().values(), strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_resume_without_teacher_file_is_a_clear_error(make_tiny_net, tiny_digits, tmp_path):
    def stop(rec: dict[str, Any]) -> None:
        if rec["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(make_tiny_net(0), tiny_digits, tmp_path, on_epoch=stop)
    (tmp_path / "phase-1-teacher.pt").unlink()
    with pytest.raises(CheckpointError, match="teacher checkpoint"):
        _fit(make_tiny_net(0), tiny_digits, tmp_path, resume=True)


def test_resume_with_other_schedule_is_refused(make_tiny_net, tiny_digits, tmp_path):
    def stop(rec: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(make_tiny_net(0), tiny_digits, tmp_path, on_epoch=stop)
    with pytest.raises(CheckpointError, match="schedule_scale"):
        _fit(make_tiny_net(0), tiny_digits, tmp_path, cfg={"schedule_scale": 0.05}, resume=True)


def test_reference_schedule_is_data():
    assert all(dataclasses.is_dataclass(s) for s in REFERENCE_SCHEDULE)
    assert sum(s.epochs + s.warmup_epochs for s in REFERENCE_SCHEDULE) == 610


def test_batch_layout_option():
    from nasforge.supernets.trainers.base import batch_layout

    x = torch.randn(2, 3, 8, 8)
    assert batch_layout(x, "auto").is_contiguous(memory_format=torch.channels_last)  # CPU: channels-last
    assert batch_layout(x, "contiguous").is_contiguous()
    assert batch_layout(torch.randn(2, 5), "auto").shape == (2, 5)
    with pytest.raises(ConfigError, match="memory_format"):
        TrainConfig(memory_format="nhwc")
