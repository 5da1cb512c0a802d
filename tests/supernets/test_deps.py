"""DεpS: its phases, which subnets run when, the ε-ramp values, the losses, re-organisation, resume, gradient
weighting and aggregation."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ConfigError
from nasforge.supernets.trainers import Phase, StepInfo, TrainConfig, get_trainer
from nasforge.supernets.trainers.deps import DepsTrainer
from nasforge.supernets.trainers.steps import build_optimizer, distill_step, soft_cross_entropy


def _deps(**kw: Any) -> DepsTrainer:
    options = {k: kw.pop(k) for k in list(kw) if k in ("shrink_point", "ramp_epochs", "sandwich_size",
                                                       "aggregation", "reorganize")}
    base = {"epochs": 20, "lr": 0.1, "warmup_epochs": 0, "batch_size": 32, "calib_images": 64}
    return get_trainer("deps", TrainConfig(**{**base, **kw}, trainer_options=options))  # type: ignore[return-value]


def test_phases_cut_one_schedule_at_the_shrink_point(tiny_net):
    full, shrink = _deps().phases(tiny_net.space)  # T=20, T_w=10, S=5
    assert (full.name, full.epochs, full.subnets_per_step) == ("full", 5, 1)
    assert (shrink.name, shrink.epochs, shrink.subnets_per_step) == ("shrink", 15, 4)
    assert (shrink.lr_offset_epochs, shrink.span_epochs, full.span_epochs) == (5, 20, 20)
    # one cosine curve over both phases: the shrink phase starts where the full phase would have continued
    spe = 7
    assert shrink.lr_at(0, spe) == pytest.approx(full.lr_at(5 * spe, spe))
    assert shrink.lr_at(0, spe) == pytest.approx(0.05 * (1 + math.cos(math.pi * 5 / 20)))
    assert [p.epochs for p in _deps(ramp_epochs=0).phases(tiny_net.space)] == [10, 10]
    assert [p.name for p in _deps(shrink_point=0.0).phases(tiny_net.space)] == ["shrink"]
    assert [p.name for p in _deps(shrink_point=1.0, ramp_epochs=0).phases(tiny_net.space)] == ["full"]
    assert [p.epochs for p in _deps(shrink_point=0.25, ramp_epochs=2).phases(tiny_net.space)] == [3, 17]


def test_bad_options_are_one_line_errors():
    for bad in ({"shrink_point": 1.5}, {"ramp_epochs": -1}, {"sandwich_size": 1}, {"aggregation": "max"}):
        with pytest.raises(ConfigError):
            _deps(**bad)
    with pytest.raises(ConfigError, match="allowed"):
        get_trainer("deps", TrainConfig(trainer_options={"shrink": 0.5}))


def test_which_subnets_run(tiny_net):
    trainer = _deps()
    space = tiny_net.space
    full, shrink = trainer.phases(space)
    assert trainer.step_archs(space, random.Random(0), full) == [space.largest()]
    archs = trainer.step_archs(space, random.Random(0), shrink)
    assert len(archs) == 4 and archs[:2] == [space.largest(), space.smallest()]
    assert archs == trainer.step_archs(space, random.Random(0), shrink)  # seeded
    assert len(_deps(sandwich_size=2).step_archs(space, random.Random(0), shrink)) == 2
    assert len(_deps(sandwich_size=6).step_archs(space, random.Random(0), shrink)) == 6


def test_epsilon_ramp_values(tiny_net):
    """beta = (t / (S * spe)) * lr(T_w) / lr(t) during the S epochs before T_w, then 1; the full model always 1."""
    trainer = _deps()  # T=20, T_w=10, S=5, lr 0.1, no warm-up
    _, shrink = trainer.phases(tiny_net.space)
    spe = 10

    def lr(global_step: float) -> float:
        return 0.05 * (1 + math.cos(math.pi * global_step / 200))

    def info(step: int) -> StepInfo:
        return StepInfo(1, shrink, step // spe, step, spe, shrink.lr_at(step, spe))

    for step in (0, 1, 10, 25, 49):
        expected = (step + 1) / 50 * lr(100) / lr(50 + step)
        assert trainer.ramp_beta(info(step)) == pytest.approx(expected, rel=1e-9)
        assert trainer.subnet_weights(info(step), [None] * 4) == pytest.approx([1.0] + [expected] * 3)
    assert trainer.ramp_beta(info(0)) == pytest.approx(0.02 * lr(100) / lr(50))
    assert trainer.ramp_beta(info(49)) == pytest.approx(lr(100) / lr(99))  # the subnet lr reaches lr(T_w)
    for step in (50, 51, 149):
        assert trainer.ramp_beta(info(step)) == 1.0
    # without a ramp the subnets join at the full rate; the full phase has no weights
    no_ramp = _deps(ramp_epochs=0)
    full0, shrink0 = no_ramp.phases(tiny_net.space)
    assert no_ramp.ramp_beta(StepInfo(1, shrink0, 0, 0, spe, shrink0.lr_at(0, spe))) == 1.0
    assert no_ramp.subnet_weights(StepInfo(0, full0, 0, 0, spe, 0.1), [None]) is None


def test_losses_full_model_label_others_kd_only():
    trainer = _deps()
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    assert torch.allclose(trainer.subnet_loss(0, logits, y, None), F.cross_entropy(logits, y, label_smoothing=0.1))
    assert torch.allclose(trainer.subnet_loss(2, logits, y, teacher), soft_cross_entropy(logits, teacher))
    assert trainer.inplace_teacher and trainer.teacher is None


def _fit(net, data, path, **kw: Any) -> list[dict[str, Any]]:
    fit_kw = {k: kw.pop(k) for k in ("resume", "on_epoch") if k in kw}
    trainer = _deps(**{"epochs": 4, "ramp_epochs": 1, **kw})
    return trainer.fit(net, data, supernet_name="mbv3-small", checkpoint_dir=path, **fit_kw)


def test_run_counts_passes_reorganises_once_and_resumes(make_tiny_net, tiny_digits, tmp_path, monkeypatch):
    calls: list[int] = []
    original = type(make_tiny_net()).reorganize_channels

    def spy(self, stage=0):
        calls.append(stage)
        return original(self, stage)

    monkeypatch.setattr(type(make_tiny_net()), "reorganize_channels", spy)
    seen: list[str] = []
    net = make_tiny_net(0)
    net.register_forward_pre_hook(lambda m, inp: seen.append(m.active.to_json()))
    history = _fit(net, tiny_digits, tmp_path / "ref")  # T=4, T_w=2, S=1: full 1 epoch, shrink 3 epochs
    assert [h["phase"] for h in history] == ["full", "shrink", "shrink", "shrink"]
    spe = len(tiny_digits.train) // 32
    assert [h["passes"]["subnet"] for h in history] == [spe, 5 * spe, 9 * spe, 13 * spe]
    assert "teacher" not in history[-1]["passes"]
    largest = net.space.largest().to_json()
    assert seen[:spe] == [largest] * spe  # the full phase trains the full model only
    assert len(set(seen[spe:])) > 2
    assert calls == [0]  # tiny space: 2 expand ratios -> the reference's stage len-2 = 0; once

    def stop(rec: dict[str, Any]) -> None:
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(make_tiny_net(0), tiny_digits, tmp_path / "cut", on_epoch=stop)
    calls.clear()
    resumed = make_tiny_net(1)
    again = _fit(resumed, tiny_digits, tmp_path / "cut", resume=True)
    assert calls == []  # the checkpoint holds re-organised weights: not sorted twice
    assert [h["passes"]["subnet"] for h in again] == [h["passes"]["subnet"] for h in history]
    assert again[-1]["loss"] == pytest.approx(history[-1]["loss"], rel=1e-5)
    for (k, a), b in zip(net.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def _grads(net, x, y, archs, weights=None, aggregation="sum"):
    net.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    distill_step(net, opt, x, y, archs, None, weights=weights, aggregation=aggregation, step_seed=1)
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_weights_scale_each_subnets_gradient_and_mean_divides_per_element(tiny_net, tiny_digits):
    tiny_net.eval()  # fixed BN statistics: every subnet's gradient is independent of the others
    x, y = tiny_digits.train.x[:8], tiny_digits.train.y[:8]
    big, small = tiny_net.space.largest(), tiny_net.space.smallest().replace(r=16)
    g_big, g_small = _grads(tiny_net, x, y, [big]), _grads(tiny_net, x, y, [small])
    summed = _grads(tiny_net, x, y, [big, small], weights=[1.0, 0.25])
    mean = _grads(tiny_net, x, y, [big, small], weights=[1.0, 0.25], aggregation="mean")
    checked = 0
    for name, g in summed.items():
        a, b = g_big.get(name, torch.zeros_like(g)), g_small.get(name, torch.zeros_like(g))
        assert torch.allclose(g, a + 0.25 * b, atol=1e-6), name
        norm = (a != 0).float() + 0.25 * (b != 0).float()
        expected = torch.where(norm > 0, (a + 0.25 * b) / torch.where(norm > 0, norm, 1.0), 0.0)
        assert torch.allclose(mean[name], expected, atol=1e-6), name
        checked += int(((a != 0) & (b != 0)).any())
    assert checked > 5  # shared weights were really averaged


def test_mean_aggregation_is_refused_under_ddp(tiny_net, tiny_digits):
    from nasforge.distributed import DistContext

    ctx = DistContext(world_size=2)
    with pytest.raises(ConfigError, match="mean"):
        _deps(aggregation="mean").fit(tiny_net, tiny_digits, supernet_name="mbv3-small", dist=ctx)


def test_phase_rejects_a_slice_outside_its_schedule():
    with pytest.raises(ConfigError):
        Phase("x", 5, 0.1, lr_offset_epochs=18, lr_total_epochs=20)
    Phase("x", 2, 0.1, lr_offset_epochs=18, lr_total_epochs=20)


def test_optimizer_sees_the_ramp_in_the_update(tiny_net, tiny_digits):
    """One shrink step with beta=0 changes only what the full model touches (plain SGD, no decay)."""
    tiny_net.eval()
    x, y = tiny_digits.train.x[:8], tiny_digits.train.y[:8]
    opt = build_optimizer(tiny_net, lr=0.1, momentum=0.0, weight_decay=0.0)
    ref = _grads(tiny_net, x, y, [tiny_net.space.largest()])
    before = {n: p.detach().clone() for n, p in tiny_net.named_parameters()}
    distill_step(tiny_net, opt, x, y, [tiny_net.space.largest(), tiny_net.space.smallest().replace(r=16)], None,
                 weights=[1.0, 0.0], step_seed=1)
    for n, p in tiny_net.named_parameters():
        if n in ref:
            assert torch.allclose(p.detach(), before[n] - 0.1 * ref[n], atol=1e-6), n


def test_fit_hands_the_ramp_to_each_step(make_tiny_net, tiny_digits, monkeypatch):
    """In a real run the full phase has no weights, the ramp grows over the S epochs, then every beta is 1."""
    from nasforge.supernets.trainers import epoch as base

    seen: list[list[float] | None] = []
    real = base.distill_step

    def spy(*args: Any, **kw: Any) -> float:
        seen.append(None if kw.get("weights") is None else list(kw["weights"]))
        return real(*args, **kw)

    monkeypatch.setattr(base, "distill_step", spy)
    _deps(epochs=4, ramp_epochs=1, eval_every=0).fit(make_tiny_net(0), tiny_digits, supernet_name="mbv3-small")
    spe = len(tiny_digits.train) // 32  # T=4, T_w=2, S=1: full epoch 0, ramp epoch 1, beta 1 in epochs 2-3
    assert seen[:spe] == [None] * spe
    ramp = [w[1] for w in seen[spe : 2 * spe]]
    assert all(w[0] == 1.0 and len(set(w[1:])) == 1 for w in seen[spe:])
    assert ramp == sorted(ramp) and 0 < ramp[0] < ramp[-1] < 1.01 and ramp[0] == pytest.approx(ramp[-1] / spe, rel=0.3)
    assert all(w == [1.0] * 4 for w in seen[2 * spe :])
