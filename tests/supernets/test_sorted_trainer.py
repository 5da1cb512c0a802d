"""SortedNet and full-model trainers: sampling per dimension, g_acc sub-models per step with mean loss, KD;
the flat option split of ``nasforge train``."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import ArchitectureError, ConfigError
from nasforge.supernets.trainers import StepInfo, TrainConfig, get_trainer, parse_sampling
from nasforge.train import make_train_config


def _sorted(**options: Any):
    return get_trainer("sorted", TrainConfig(epochs=2, batch_size=32, calib_images=64, trainer_options=options))


def test_parse_sampling(tiny_net):
    space = tiny_net.space
    assert set(parse_sampling("uniform", space).values()) == {"uniform"}
    dists = parse_sampling("large, d:uniform", space)
    assert dists["d"] == "uniform" and dists["e"] == "large" and dists["ks"] == "large"
    for bad in ("nope", "x:uniform", "d:nope"):
        with pytest.raises(ConfigError):
            parse_sampling(bad, space)


def test_per_dimension_distributions(tiny_net):
    space = tiny_net.space
    trainer = _sorted(sampling="large,r:small")
    trainer.phases(space)
    rng = random.Random(0)
    archs = [trainer.sample(space, rng) for _ in range(3000)]
    depth_first = Counter(a["d"][0] for a in archs)   # choices (1, 2): p = 1/3, 2/3
    res = Counter(a["r"] for a in archs)              # choices (12, 16): p = 2/3, 1/3
    assert depth_first[2] / 3000 == pytest.approx(2 / 3, abs=0.03)
    assert res[12] / 3000 == pytest.approx(2 / 3, abs=0.03)
    uniform = _sorted()
    uniform.phases(space)
    counts = Counter(a["r"] for a in (uniform.sample(space, rng) for _ in range(3000)))
    assert counts[12] / 3000 == pytest.approx(0.5, abs=0.03)


def test_step_runs_g_acc_submodels_with_mean_loss(tiny_net):
    trainer = _sorted(g_acc=3)
    (phase,) = trainer.phases(tiny_net.space)
    assert phase.subnets_per_step == 3 and not phase.distill
    archs = trainer.step_archs(tiny_net.space, random.Random(1), phase)
    assert len(archs) == 3 and archs == trainer.step_archs(tiny_net.space, random.Random(1), phase)
    assert trainer.subnet_weights(StepInfo(0, phase, 0, 0, 4, 0.1), archs) == [1 / 3] * 3
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 10, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    assert torch.allclose(trainer.subnet_loss(1, logits, y, None), F.cross_entropy(logits, y, label_smoothing=0.1))


def test_sorted_fit_with_kd_counts_teacher_passes(make_tiny_net, tiny_digits):
    net = make_tiny_net(0)
    trainer = _sorted(g_acc=2, kd=True)
    history = trainer.fit(net, tiny_digits, supernet_name="mbv3-small")
    spe = len(tiny_digits.train) // 32
    assert [h["passes"] for h in history] == [{"subnet": 2 * spe, "teacher": spe}, {"subnet": 4 * spe, "teacher": 2 * spe}]
    assert all(h["loss"] > 0 for h in history)
    plain = _sorted(g_acc=2).fit(make_tiny_net(0), tiny_digits, supernet_name="mbv3-small")
    assert "teacher" not in plain[-1]["passes"]
    assert plain[-1]["loss"] != pytest.approx(history[-1]["loss"])  # the KD term is in the loss


def test_full_trainer_trains_one_architecture(tiny_net):
    cfg = TrainConfig(epochs=1)
    space = tiny_net.space
    trainer = get_trainer("full", cfg)
    (phase,) = trainer.phases(space)
    assert trainer.step_archs(space, random.Random(0), phase) == [space.largest()]
    small = space.smallest()
    other = get_trainer("full", TrainConfig(epochs=1, trainer_options={"arch": small.to_json()}))
    assert other.step_archs(space, random.Random(0), phase) == [small]
    bad = get_trainer("full", TrainConfig(epochs=1, trainer_options={"arch": '{"ks": [9]}'}))
    with pytest.raises(ArchitectureError):
        bad.step_archs(space, random.Random(0), phase)


def test_make_train_config_splits_loop_and_trainer_options():
    cfg = make_train_config("deps", 3, {"epochs": 8, "shrink_point": 0.25, "ramp_epochs": 2})
    assert cfg.epochs == 8 and cfg.seed == 3 and cfg.weight_decay == 3e-5  # the deps defaults apply
    assert cfg.trainer_options == {"shrink_point": 0.25, "ramp_epochs": 2}
    assert make_train_config("sorted", 0, {"g_acc": 2}).label_smoothing == 0.0
    with pytest.raises(ConfigError, match="g_acc"):
        make_train_config("deps", 0, {"g_acc": 2})  # a sorted option given to deps: the message lists deps's
    with pytest.raises(ConfigError):
        make_train_config("sorted", 0, {"g_acc": 0})
    with pytest.raises(ConfigError):
        make_train_config("sorted", 0, {"kd": "yes"})


def test_sorted_resnet_trains_in_a_safe_layout(tiny_digits):
    """A ResNet's strided 1x1 shortcut crashes PyTorch's CPU backward on channels-last batches (heap corruption):
    'auto' must pick the contiguous layout for it, and an explicit 'channels_last' is refused in one line."""
    import dataclasses

    from nasforge.data import Split
    from nasforge.supernets import create_supernet

    data = dataclasses.replace(tiny_digits, train=Split(tiny_digits.train.x[:64], tiny_digits.train.y[:64]))
    net = create_supernet("sorted-resnet", in_channels=1, num_classes=10)
    assert not net.channels_last_training and create_supernet("mbv3-small").channels_last_training
    history = get_trainer("sorted", TrainConfig(epochs=1, batch_size=64, calib_images=32)).fit(
        net, data, supernet_name="sorted-resnet")
    assert history[-1]["passes"]["subnet"] == 4
    with pytest.raises(ConfigError, match="channels_last"):
        get_trainer("sorted", TrainConfig(epochs=1, memory_format="channels_last")).fit(
            net, data, supernet_name="sorted-resnet")
