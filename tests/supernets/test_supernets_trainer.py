"""The sandwich trainer on tiny digits, exact resume from checkpoints, checkpoint errors, configs and schedules."""

from __future__ import annotations

import io
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nasforge.errors import CheckpointError, ConfigError
from nasforge.supernets.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_supernet, save_checkpoint
from nasforge.supernets.trainers import (
    SandwichTrainer,
    TrainConfig,
    get_trainer,
    list_trainers,
    register_trainer,
    soft_cross_entropy,
)
from nasforge.supernets.trainers.base import Phase
from nasforge.supernets.trainers.config import _lr_at

CFG = {"epochs": 2, "batch_size": 32, "calib_images": 64, "warmup_epochs": 1, "lr": 0.1, "seed": 0}


class _Interrupt(Exception):
    pass


def _fit(net, data, config: TrainConfig, **kwargs: Any) -> list[dict[str, Any]]:
    options = dict(net.config_dict())  # JSON-able options that rebuild this exact member
    return get_trainer("sandwich", config).fit(net, data, supernet_name="mbv3-small", supernet_options=options,
                                               **kwargs)


@pytest.fixture(scope="module")
def straight_run(tiny_digits, tmp_path_factory, make_tiny_net):
    """Two uninterrupted epochs with a checkpoint per epoch: ``(net, history, checkpoint dir, steps seen)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt_dir = tmp_path_factory.mktemp("straight")
        net = make_tiny_net(0)
        steps: list[tuple[int, int]] = []
        history = _fit(net, tiny_digits, TrainConfig(**CFG), checkpoint_dir=ckpt_dir,
                       on_step=lambda i, n, e, speed: steps.append((i, n)))
    finally:
        torch.set_num_threads(threads)
    return net, history, ckpt_dir, steps


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- training ---------------------------------------------------------------------------------------------------
def test_two_epoch_history(straight_run):
    net, history, ckpt_dir, steps = straight_run
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:
        assert set(r) >= {"epoch", "loss", "lr", "val_acc_max", "val_acc_min"}
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert 0.0 <= r["val_acc_max"] <= 1.0 and 0.0 <= r["val_acc_min"] <= 1.0
    # 128 images / batch 32 = 4 steps per epoch; lr recorded is the last step's
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)] * 2
    assert history[0]["lr"] == pytest.approx(_lr_at(3, 8, 4, 0.1)) == pytest.approx(0.1)
    assert history[1]["lr"] == pytest.approx(_lr_at(7, 8, 4, 0.1))
    assert net.active == net.space.largest()
    assert (ckpt_dir / "last.pt").is_file()
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.pt"]  # atomic writes leave no temp files


def test_training_changes_the_weights(straight_run, make_tiny_net):
    net, *_ = straight_run
    init = make_tiny_net(0)
    changed = [k for k, v in init.state_dict().items() if not torch.equal(v, net.state_dict()[k])]
    assert any("transforms" in k for k in changed)  # kernel transforms are trained too
    assert any(k.endswith("running_mean") for k in changed)
    assert len(changed) > len(init.state_dict()) // 2


def test_loss_decreases_on_tiny_data(tiny_digits, make_tiny_net):
    net = make_tiny_net(0)
    history = _fit(net, tiny_digits, TrainConfig(**{**CFG, "epochs": 5, "lr": 0.2}))
    losses = [r["loss"] for r in history]
    assert losses[-1] < losses[0] - 0.3, losses
    assert history[-1]["val_acc_max"] > 0.2  # chance is 0.1


def test_resume_equals_an_uninterrupted_run(straight_run, tiny_digits, tmp_path, make_tiny_net):
    net_a, history_a, _, _ = straight_run

    def stop_after_first(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _fit(make_tiny_net(0), tiny_digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, on_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1

    net_c = make_tiny_net(123)  # different initial weights: everything must come from the checkpoint
    assert not torch.equal(net_c.classifier.weight, net_a.classifier.weight)
    seen_epochs: list[int] = []
    history_c = _fit(net_c, tiny_digits, TrainConfig(**CFG), checkpoint_dir=tmp_path, resume=True,
                     on_epoch=lambda r: seen_epochs.append(r["epoch"]))
    assert seen_epochs == [2]
    assert _learned(history_c) == _learned(history_a)
    _assert_same_state(net_c, net_a)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_resume_of_a_finished_run_trains_nothing(straight_run, tiny_digits, make_tiny_net):
    net_a, history_a, ckpt_dir, _ = straight_run
    net = make_tiny_net(5)
    steps: list[int] = []
    history = _fit(net, tiny_digits, TrainConfig(**CFG), checkpoint_dir=ckpt_dir, resume=True,
                   on_step=lambda i, n, e, speed: steps.append(i))
    assert steps == [] and history == history_a  # the saved history itself, timings included
    _assert_same_state(net, net_a)


def test_resume_with_another_seed_is_refused(straight_run, tiny_digits, make_tiny_net):
    *_, ckpt_dir, _ = straight_run
    with pytest.raises(CheckpointError, match="seed"):
        _fit(make_tiny_net(0), tiny_digits, TrainConfig(**{**CFG, "seed": 1}), checkpoint_dir=ckpt_dir, resume=True)


def test_resume_into_another_supernet_is_refused(straight_run, tiny_digits, make_tiny_net):
    *_, ckpt_dir, _ = straight_run
    other = make_tiny_net(feature_width=32)
    with pytest.raises(CheckpointError, match="does not fit"):
        get_trainer("sandwich", TrainConfig(**CFG)).fit(other, tiny_digits, supernet_name="mbv3-small",
                                                         checkpoint_dir=ckpt_dir, resume=True)


# -- checkpoints ----------------------------------------------------------------------------------------------
def test_load_supernet_round_trip(tiny_net, tiny_options, tmp_path):
    with torch.no_grad():
        tiny_net.classifier.bias.add_(1.0)
    path = save_checkpoint(tmp_path / "sub" / "net.pt", tiny_net, "mbv3-small", dict(tiny_options), epoch=3)
    net, state = load_supernet(path)
    assert state["format"] == CHECKPOINT_FORMAT and state["supernet"] == "mbv3-small" and state["epoch"] == 3
    assert net.space == tiny_net.space
    _assert_same_state(net, tiny_net)
    # overwrite in place
    save_checkpoint(path, net, "mbv3-small", dict(tiny_options), epoch=4)
    assert load_checkpoint(path)["epoch"] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.pt"]


def test_checkpoint_of_other_options_does_not_fit(tiny_net, tmp_path):
    path = save_checkpoint(tmp_path / "net.pt", tiny_net, "mbv3-small", {})  # options forgotten
    with pytest.raises(CheckpointError, match="does not fit supernet 'mbv3-small'") as exc:
        load_supernet(path)
    assert "\n" not in str(exc.value)


def test_a_complete_checkpoint_with_another_format_tag_is_refused(tiny_net, tiny_options, tmp_path):
    path = save_checkpoint(tmp_path / "net.pt", tiny_net, "mbv3-small", dict(tiny_options))
    state = torch.load(path, weights_only=True)
    state["format"] = "nasforge-supernet-checkpoint/999"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"expected format {CHECKPOINT_FORMAT}"):
        load_supernet(path)


def _corrupt(kind: str, good: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_format":
        torch.save({"model": {"w": torch.zeros(3)}, "epoch": 1}, path)
    elif kind == "wrong_format":
        torch.save({"format": "something-else/1", "model": {}}, path)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    elif kind == "text":
        path.write_text("epoch: 3\n")
    elif kind == "flipped_bytes":
        data = bytearray(good.read_bytes())
        for i in range(0, len(data), 97):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    elif kind in ("legacy_truncated", "legacy_one_byte"):  # torch's old (non-zip) format fails in other ways
        buffer = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "model": {"w": torch.zeros(3)}}, buffer,
                   _use_new_zipfile_serialization=False)
        path.write_bytes(buffer.getvalue()[: 18 if kind == "legacy_truncated" else 1])
    elif kind == "format_only":
        torch.save({"format": CHECKPOINT_FORMAT}, path)
    elif kind == "model_not_a_dict":
        torch.save({"format": CHECKPOINT_FORMAT, "supernet": "mbv3-small", "model": [torch.zeros(1)]}, path)
    elif kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind",
    ["random", "truncated", "empty", "no_format", "wrong_format", "not_a_dict", "text", "flipped_bytes",
     "legacy_truncated", "legacy_one_byte", "format_only", "model_not_a_dict", "missing", "directory"],
)
def test_corrupt_checkpoints_give_one_line_errors(kind, tiny_net, tiny_options, tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", tiny_net, "mbv3-small", dict(tiny_options))
    path = _corrupt(kind, good, tmp_path)
    for loader in (load_checkpoint, load_supernet):
        with pytest.raises(CheckpointError) as exc:
            loader(path)
        msg = str(exc.value)
        assert "\n" not in msg and str(path) in msg and len(msg) < 400


# -- trainer registry, losses, schedule, config ------------------------------------------------------------------
def test_trainer_registry():
    assert "sandwich" in list_trainers()
    trainer = get_trainer("sandwich", TrainConfig())
    assert isinstance(trainer, SandwichTrainer) and trainer.name == "sandwich"
    with pytest.raises(ConfigError) as exc:
        get_trainer("progressive", TrainConfig())
    assert "'progressive'" in str(exc.value) and "sandwich" in str(exc.value)
    with pytest.raises(ValueError, match="already registered"):
        register_trainer("sandwich")(SandwichTrainer)


def test_sandwich_step_archs(tiny_net):
    space = tiny_net.space
    trainer = SandwichTrainer(TrainConfig(num_random=3))
    archs = trainer.step_archs(space, random.Random(0), Phase("t", 1, 0.1))
    assert len(archs) == 5 and archs[0] == space.largest() and archs[1] == space.smallest()
    assert all(space.canonical(a) == a for a in archs)
    assert archs == trainer.step_archs(space, random.Random(0), Phase("t", 1, 0.1))
    assert len(SandwichTrainer(TrainConfig(num_random=0)).step_archs(space, random.Random(0), Phase("t", 1, 0.1))) == 2


def test_sandwich_losses():
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(6, 10, generator=gen), torch.randn(6, 10, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)
    trainer = SandwichTrainer(TrainConfig(label_smoothing=0.1, kd_weight=0.5))
    expected_ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.allclose(trainer.subnet_loss(0, logits, y, teacher), expected_ce)
    assert torch.allclose(trainer.subnet_loss(1, logits, y, None), expected_ce)
    assert torch.allclose(trainer.subnet_loss(2, logits, y, teacher), 0.5 * soft_cross_entropy(logits, teacher))
    no_kd = SandwichTrainer(TrainConfig(label_smoothing=0.0, kd_weight=0.0))
    assert torch.allclose(no_kd.subnet_loss(2, logits, y, teacher), F.cross_entropy(logits, y))


def test_soft_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    logits, teacher = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    # a very confident teacher is the hard label
    hard = F.one_hot(y, 5).float() * 1e4
    assert torch.allclose(soft_cross_entropy(logits, hard), F.cross_entropy(logits, y), atol=1e-5)
    # Gibbs: the teacher's own logits minimise it, at the teacher's entropy
    self_ce = soft_cross_entropy(teacher, teacher)
    entropy = -(F.softmax(teacher, 1) * F.log_softmax(teacher, 1)).sum(1).mean()
    assert torch.allclose(self_ce, entropy)
    assert float(soft_cross_entropy(logits, teacher)) > float(self_ce) + 1e-3


def test_lr_schedule_warms_up_then_decays_to_zero():
    base, total, warm = 0.4, 100, 10
    lrs = [_lr_at(s, total, warm, base) for s in range(total)]
    assert lrs[:warm] == pytest.approx([base * (s + 1) / warm for s in range(warm)])
    assert lrs[warm - 1] == pytest.approx(base) and lrs[warm] == pytest.approx(base)
    assert all(a >= b for a, b in zip(lrs[warm:-1], lrs[warm + 1 :], strict=True))
    assert lrs[warm + (total - warm) // 2] == pytest.approx(base / 2)
    assert 0 < lrs[-1] < 1e-3 * base
    assert _lr_at(total, total, warm, base) == pytest.approx(0.0, abs=1e-12)
    assert _lr_at(10 * total, total, warm, base) == pytest.approx(0.0, abs=1e-12)
    # no warm-up: starts at the base rate
    assert _lr_at(0, total, 0, base) == pytest.approx(base)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("lr", -0.1), ("lr", float("nan")), ("warmup_epochs", -1),
        ("num_random", -1), ("label_smoothing", 1.0), ("label_smoothing", -0.1), ("calib_images", 0),
        ("weight_decay", -1e-4), ("kd_weight", -1.0), ("optimizer", "adam"), ("momentum", -0.5), ("momentum", 1.5),
        ("epochs", "3"), ("epochs", 2.5), ("epochs", True), ("lr", "0.1"), ("batch_size", None), ("seed", 1.0),
    ],
)
def test_train_config_rejects_bad_values(key, value):
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_dict({key: value})
    assert key in str(exc.value)
    with pytest.raises(ConfigError):
        TrainConfig(**{key: value})


def test_train_config_rejects_unknown_keys():
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_dict({"epochs": 3, "learning_rate": 0.1, "epoch": 2})
    msg = str(exc.value)
    assert "learning_rate" in msg and "'epoch'" in msg and "'lr'" in msg


def test_train_config_accepts_good_values():
    cfg = TrainConfig.from_dict({"epochs": 3, "lr": 1, "optimizer": "adamw", "momentum": 0.0, "kd_weight": 0})
    assert cfg.epochs == 3 and cfg.lr == 1 and cfg.optimizer == "adamw"
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize(("optimizer", "momentum"), [("sgd", 0.0), ("sgd", 0.9), ("adamw", 0.9)])
def test_every_accepted_optimizer_setting_trains(tiny_digits, make_tiny_net, optimizer, momentum):
    net = make_tiny_net(0)
    before = net.classifier.weight.detach().clone()
    cfg = TrainConfig(**{**CFG, "epochs": 1, "optimizer": optimizer, "momentum": momentum, "num_random": 0})
    history = _fit(net, tiny_digits, cfg)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    assert not torch.equal(net.classifier.weight, before)


def test_checkpoint_files_are_written_atomically(straight_run):
    *_, ckpt_dir, _ = straight_run
    leftovers = [name for name in os.listdir(ckpt_dir) if name.endswith(".tmp")]
    assert leftovers == []
    state = load_checkpoint(ckpt_dir / "last.pt")
    assert state["trainer"] == "sandwich" and state["epoch"] == 2 and len(state["history"]) == 2
    assert state["train_config"] == dict(TrainConfig(**CFG).__dict__)
    assert "optimizer" in state and state["supernet_options"]["stem_width"] == 8


def test_bf16_autocast_runs_on_cpu_and_follows_fp32(make_tiny_net, tiny_digits):
    """Same seed and weights, fp32 vs bf16 autocast: the step losses agree within 3% over two epochs (bf16 keeps
    8 bits of mantissa), yet differ (autocast really ran)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0, calib_images=32, eval_every=0,
                          precision=precision)
        trainer = get_trainer("sandwich", cfg)
        history = trainer.fit(make_tiny_net(0), tiny_digits, supernet_name="mbv3-small")
        losses[precision] = [h["loss"] for h in history]
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)


def _learned(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A history without its timings (images/s and data wait differ from run to run)."""
    return [{k: v for k, v in rec.items() if k not in ("images_per_s", "data_wait")} for rec in history]
