"""Warm starts (``load_initial_weights``: nasforge checkpoints, the Once-for-All supernet and static-teacher
layouts), the ``phases`` option of progressive shrinking, and the reference details of its teacher and warm-up
and of DεpS (dropout on the full model only, one optimizer across the shrink point)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch

from nasforge.errors import CheckpointError, ConfigError
from nasforge.supernets import Architecture, Supernet, create_supernet
from nasforge.supernets.checkpoint import save_checkpoint
from nasforge.supernets.ofa_compat import nasforge_to_ofa_state_dict
from nasforge.supernets.trainers import TrainConfig, get_trainer
from nasforge.supernets.trainers.deps import DepsTrainer
from nasforge.supernets.trainers.progressive import (
    PHASE_NAMES,
    TEACHER_FILE,
    ProgressiveShrinkingTrainer,
    _freeze,
    parse_phases,
)
from nasforge.supernets.warm_start import load_initial_weights


# -- helpers ---------------------------------------------------------------------------------------------------
def _logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def _subnet_logits(net: Supernet, x: torch.Tensor, arch: Architecture | None = None) -> torch.Tensor:
    """Logits of ``arch`` (default: the largest subnet), in eval mode."""
    net.set_active(arch or net.space.largest())
    return _logits(net, x)


def _static_teacher_layout(net: Supernet) -> dict[str, torch.Tensor]:
    """``net``'s largest network in the layout of the reference's static ``MobileNetV3`` (the published
    ``ofa_D4_E6_K7`` teacher): elastic blocks without the dynamic layers' inner ``conv``/``bn`` level and no kernel
    transformation matrices; the old ``mobile_inverted_conv`` spelling, as in the released files."""
    out = {}
    for key, tensor in nasforge_to_ofa_state_dict(net).items():
        if key.endswith("_matrix"):
            continue
        if re.match(r"blocks\.[1-9]", key):
            key = key.replace(".conv.conv.weight", ".conv.weight").replace(".bn.bn.", ".bn.")
            key = key.replace(".conv.", ".mobile_inverted_conv.", 1)
        out[key] = tensor.clone()
    return out


def _ps(options: dict[str, Any] | None = None, **kw: Any) -> ProgressiveShrinkingTrainer:
    cfg = {"batch_size": 32, "schedule_scale": 0.01, "calib_images": 32, "eval_every": 0, **kw}
    return get_trainer("ps", TrainConfig(**cfg, trainer_options=options or {}))  # type: ignore[return-value]


# -- load_initial_weights ---------------------------------------------------------------------------------------
def test_ofa_supernet_layout_wrapped_with_ddp_prefixes(make_tiny_net, perturb, tmp_path):
    source = make_tiny_net(0)
    perturb(source)  # non-identity BN and kernel transforms: every tensor matters
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v.clone() for k, v in nasforge_to_ofa_state_dict(source).items()}}
    path = tmp_path / "ofa.pth"
    torch.save(wrapped, path)
    net = make_tiny_net(1)
    assert load_initial_weights(net, path) == f"Once-for-All supernet state_dict ({len(wrapped['state_dict'])} tensors)"
    x = torch.randn(3, 1, 16, 16)
    assert (_subnet_logits(net, x) - _subnet_logits(source, x)).abs().max() < 1e-5
    small, x12 = net.space.smallest(), torch.randn(3, 1, 12, 12)  # every transform and BN slice came along
    assert (_subnet_logits(net, x12, small) - _subnet_logits(source, x12, small)).abs().max() < 1e-5


def test_static_teacher_layout_of_the_reference(perturb, tmp_path):
    """The reference's teacher file (``ofa_D4_E6_K7``) into a k{3,5,7} e{3,4,6} d{2,3,4} supernet."""
    torch.manual_seed(0)
    source = create_supernet("ofa-mbv3-cifar")
    perturb(source)
    static = _static_teacher_layout(source)
    # names as the reference's MobileNetV3Large(ks=7, expand_ratio=6, depth_param=4) spells them
    for key in ("first_conv.conv.weight", "blocks.0.conv.depth_conv.conv.weight",
                "blocks.1.mobile_inverted_conv.inverted_bottleneck.conv.weight",
                "blocks.6.mobile_inverted_conv.depth_conv.se.fc.reduce.bias",
                "blocks.20.mobile_inverted_conv.point_linear.bn.running_var", "feature_mix_layer.conv.weight",
                "classifier.linear.bias"):
        assert key in static, key
    assert static["blocks.5.mobile_inverted_conv.depth_conv.conv.weight"].shape == (144, 1, 7, 7)  # 24 x e6
    path = tmp_path / "ofa_D4_E6_K7"
    torch.save({"state_dict": static}, path)
    torch.manual_seed(1)
    net = create_supernet("ofa-mbv3-cifar")
    assert load_initial_weights(net, path) == f"Once-for-All state_dict (teacher ofa_D4_E6_K7, {len(static)} tensors)"
    x = torch.randn(2, 3, 24, 24)
    assert (_subnet_logits(net, x) - _subnet_logits(source, x)).abs().max() < 1e-5
    # no transformation matrices in the file: the supernet keeps its own (identity when fresh), as the reference
    assert torch.equal(net.units[2].blocks[1].dw_conv.transforms["to5x5"], torch.eye(25))


def test_nasforge_checkpoints_and_state_dicts(make_tiny_net, tiny_options, perturb, tmp_path):
    source = make_tiny_net(0)
    perturb(source)
    ckpt = save_checkpoint(tmp_path / "last.pt", source, "mbv3-small", dict(tiny_options), epoch=2)
    net = make_tiny_net(1)
    assert load_initial_weights(net, ckpt) == "nasforge checkpoint (mbv3-small)"
    for (key, a), b in zip(source.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    # options without weights may change (here dropout); a plain state dict with DDP prefixes loads too
    save_checkpoint(tmp_path / "drop.pt", source, "mbv3-small", {**tiny_options, "dropout": 0.3})
    load_initial_weights(make_tiny_net(1), tmp_path / "drop.pt")
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "plain.pt")
    assert load_initial_weights(make_tiny_net(1), tmp_path / "plain.pt").startswith("nasforge state_dict (")


def test_checkpoint_of_another_supernet_or_options(make_tiny_net, tiny_options, tmp_path):
    source = make_tiny_net(0)
    save_checkpoint(tmp_path / "other.pt", source, "ofa-mbv3-cifar", {})
    with pytest.raises(CheckpointError, match=r"checkpoint of supernet 'ofa-mbv3-cifar', not 'mbv3-small'"):
        load_initial_weights(make_tiny_net(1), tmp_path / "other.pt")
    wider = make_tiny_net(0, final_expand_width=32)
    save_checkpoint(tmp_path / "wider.pt", wider, "mbv3-small", {**tiny_options, "final_expand_width": 32})
    with pytest.raises(CheckpointError, match=r"other 'mbv3-small' options \(final_expand_width: 32 -> 48\)"):
        load_initial_weights(make_tiny_net(1), tmp_path / "wider.pt")


def test_corrupt_foreign_and_misfitting_files(make_tiny_net, tmp_path):
    net = make_tiny_net(0)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    good = tmp_path / "good.pth"
    torch.save(nasforge_to_ofa_state_dict(net), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}, foreign)
    misfit = tmp_path / "classes.pth"
    torch.save(nasforge_to_ofa_state_dict(make_tiny_net(0, num_classes=5)), misfit)
    cases = {garbage: "corrupt or not a torch checkpoint", truncated: "corrupt or not a torch checkpoint",
             tmp_path / "absent.pth": "do not exist", foreign: "are foreign: none of their 2 tensors",
             misfit: "5 classes: create the supernet with num_classes=5"}
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(message)) as info:
            load_initial_weights(make_tiny_net(1), path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    torch.save([1, 2], good)
    with pytest.raises(CheckpointError, match="hold a list, not a state dict"):
        load_initial_weights(net, good)


# -- progressive shrinking: teacher, warm-up, phases -------------------------------------------------------------
def test_frozen_teacher_has_no_dropout_and_runs_in_train_mode(make_tiny_net):
    net = make_tiny_net(0)
    teacher = _freeze(net)
    drops = [m for m in teacher.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.0 for m in drops)
    assert teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert net.dropout.p == pytest.approx(0.1)  # the supernet keeps its own


def test_warmup_starts_at_one_gpus_rate():
    space = create_supernet("ofa-mbv3-w1.0").space
    phases = _ps(batch_size=256, schedule_scale=0.2, lr_scale=0.5).phases(space)  # 4 "GPUs" of 64, warm-up 1
    spe = 10
    for phase, base in zip(phases, (2.6 / 32, 3e-2, 2.5e-3, 7.5e-3, 2.5e-3, 7.5e-3), strict=True):
        assert phase.lr == pytest.approx(base * 4 * 0.5)
        if phase.warmup_epochs:
            assert phase.warmup_lr == pytest.approx(base * 0.5)
            step0 = phase.warmup_lr + (phase.lr - phase.warmup_lr) / (phase.warmup_epochs * spe)
            assert phase.lr_at(0, spe) == pytest.approx(step0)
            assert phase.lr_at(phase.warmup_epochs * spe - 1, spe) == pytest.approx(phase.lr)
        else:
            assert phase.warmup_lr == 0.0 and phase.lr_at(0, spe) == pytest.approx(phase.lr)
    assert [p.warmup_epochs for p in phases] == [1, 1, 0, 1, 0, 1]
    small = _ps(batch_size=32, schedule_scale=0.2).phases(space)[1]  # under one GPU's batch: never above the peak
    assert small.warmup_lr == pytest.approx(small.lr)


def test_phases_option_parsing():
    assert parse_phases("all") == tuple(range(6))
    assert parse_phases("kernel") == (1,)
    assert parse_phases("expand-2, depth-1,kernel,depth-1") == (1, 2, 5)  # reference order, no duplicates
    assert parse_phases("2-6") == (1, 2, 3, 4, 5)
    assert parse_phases("1,4-5") == (0, 3, 4)
    for bad in ("kernels", "0", "7", "3-2", "2-9", "", "kernel,,depth-1", "depth"):
        with pytest.raises(ConfigError, match="teacher, kernel, depth-1, depth-2, expand-1, expand-2"):
            parse_phases(bad)
    with pytest.raises(ConfigError, match="not a phase"):
        _ps({"phases": "width"})
    with pytest.raises(ConfigError, match="replaces the teacher phase"):
        _ps({"phases": "all", "teacher": "t.pt"})
    trainer = _ps({"phases": "depth-2,expand-2"})
    phases = trainer.phases(create_supernet("ofa-mbv3-w1.0").space)
    assert [p.name for p in phases] == ["depth-2", "expand-2"]
    assert [trainer.phase_checkpoint_name(i, p) for i, p in enumerate(phases)] == ["phase-4-depth-2.pt",
                                                                                    "phase-6-expand-2.pt"]
    assert PHASE_NAMES == ("teacher", "kernel", "depth-1", "depth-2", "expand-1", "expand-2")


def test_kernel_phase_from_a_warm_start_distils_from_the_loaded_net(make_tiny_net, tiny_options, perturb,
                                                                     tiny_digits, tmp_path):
    source = make_tiny_net(0)
    perturb(source)
    init = save_checkpoint(tmp_path / "init.pt", source, "mbv3-small", dict(tiny_options))
    net = make_tiny_net(1)
    load_initial_weights(net, init)
    trainer = _ps({"phases": "kernel"})
    history = trainer.fit(net, tiny_digits, supernet_name="mbv3-small", supernet_options=dict(tiny_options),
                          checkpoint_dir=tmp_path / "run")
    assert [h["phase"] for h in history] == ["kernel"] and history[-1]["passes"]["teacher"] > 0
    assert trainer.teacher is not None
    # the teacher is the loaded net's full network (train mode: batch statistics, dropout 0), not the trained net
    x = tiny_digits.train.x[:16]
    expected = source.extract(source.space.largest())
    expected.dropout.p = 0.0
    with torch.no_grad():
        assert (trainer.teacher.train()(x) - expected.train()(x)).abs().max() < 1e-5
    # a resumed run rebuilds it from teacher.pt; without that file it says so
    again = _ps({"phases": "kernel"})
    phase = again.phases(net.space)[0]
    again.start_phase(net, 0, phase, fresh=False, checkpoint_dir=tmp_path / "run")
    with torch.no_grad():
        assert (again.teacher.train()(x) - expected.train()(x)).abs().max() < 1e-5
    (tmp_path / "run" / TEACHER_FILE).unlink()
    with pytest.raises(CheckpointError, match="distillation teacher"):
        _ps({"phases": "kernel"}).start_phase(net, 0, phase, fresh=False, checkpoint_dir=tmp_path / "run")


def test_a_resumed_subset_run_equals_an_uninterrupted_one(make_tiny_net, perturb, tiny_digits, tmp_path):
    def run(path: Any, **kw: Any) -> tuple[Supernet, list[dict[str, Any]]]:
        net = make_tiny_net(0)
        perturb(net)  # the "loaded" initial weights
        history = _ps({"phases": "kernel,expand-1"}).fit(net, tiny_digits, supernet_name="mbv3-small",
                                                           checkpoint_dir=path, **kw)
        return net, history

    ref, ref_history = run(tmp_path / "ref")

    def stop(rec: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", on_epoch=stop)  # stops after the kernel phase: the teacher comes from teacher.pt
    net, history = run(tmp_path / "cut", resume=True)
    assert [h["phase"] for h in history] == ["kernel", "expand-1"]
    assert history[-1]["loss"] == pytest.approx(ref_history[-1]["loss"], rel=1e-5)
    for (key, a), b in zip(ref.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), key


def test_an_expand_phase_alone_reorganises_channels_and_takes_a_teacher_file(make_tiny_net, perturb, monkeypatch,
                                                                             tmp_path):
    calls: list[int] = []
    net = make_tiny_net(0)
    monkeypatch.setattr(net, "reorganize_channels", lambda stage=0: calls.append(stage) or True)
    teacher_net = make_tiny_net(2)
    perturb(teacher_net)
    torch.save(nasforge_to_ofa_state_dict(teacher_net), tmp_path / "ofa_teacher.pth")
    trainer = _ps({"phases": "expand-2", "teacher": str(tmp_path / "ofa_teacher.pth")})
    phase = trainer.phases(net.space)[0]
    trainer.start_phase(net, 0, phase, fresh=True, checkpoint_dir=tmp_path)
    assert calls == [1]  # the reference's expand phase 2 sorts with expand_ratio_stage 1 when it starts
    x = torch.randn(4, 1, 16, 16)
    expected = teacher_net.extract(teacher_net.space.largest())
    expected.dropout.p = 0.0
    with torch.no_grad():
        assert (trainer.teacher.train()(x) - expected.train()(x)).abs().max() < 1e-5
    assert (tmp_path / TEACHER_FILE).is_file()


# -- DεpS ---------------------------------------------------------------------------------------------------------
class _SpyDeps(DepsTrainer):
    """Records the dropout rate each subnet's forward pass sees and the optimizer around the shrink point."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.index = -1
        self.rates: list[tuple[int, float]] = []  # (subnet index in the step, dropout p) of training passes
        self.at_shrink: tuple[torch.optim.Optimizer, dict[int, torch.Tensor]] | None = None
        self.first_shrink_step: tuple[torch.optim.Optimizer, dict[int, torch.Tensor]] | None = None

    def _momentum(self) -> tuple[torch.optim.Optimizer, dict[int, torch.Tensor]]:
        assert self.optimizer is not None
        state = self.optimizer.state
        return self.optimizer, {i: state[p]["momentum_buffer"].clone()
                                for i, p in enumerate(self.optimizer.param_groups[0]["params"]) if p in state}

    def start_phase(self, net: Supernet, index: int, phase: Any, **kw: Any) -> None:
        if phase.name == "shrink":
            self.at_shrink = self._momentum()  # before the re-organisation; still the full phase's optimizer
        super().start_phase(net, index, phase, **kw)

    def prepare_subnet(self, index: int, arch: Architecture) -> None:
        super().prepare_subnet(index, arch)
        self.index = index
        if self.at_shrink is not None and self.first_shrink_step is None:
            self.first_shrink_step = self._momentum()


def test_deps_dropout_on_the_full_model_only_and_one_optimizer(make_tiny_net, tiny_digits):
    cfg = TrainConfig(epochs=2, lr=0.1, warmup_epochs=0, batch_size=32, calib_images=32, eval_every=0,
                      trainer_options={"shrink_point": 0.5, "ramp_epochs": 0})
    trainer = _SpyDeps(cfg)
    net = make_tiny_net(0)
    net.dropout.register_forward_pre_hook(
        lambda m, inp: trainer.rates.append((trainer.index, m.p)) if torch.is_grad_enabled() else None)
    history = trainer.fit(net, tiny_digits, supernet_name="mbv3-small")
    assert [h["phase"] for h in history] == ["full", "shrink"]
    spe = len(tiny_digits.train) // 32
    assert len(trainer.rates) == spe * (1 + 4)  # full phase: the full model; shrink: a sandwich of 4
    assert {i for i, _ in trainer.rates} == {0, 1, 2, 3}
    assert all(math.isclose(p, 0.1) if i == 0 else p == 0.0 for i, p in trainer.rates)
    assert net.dropout.p == pytest.approx(0.1)  # restored after training
    # the optimizer and its momentum cross the shrink point unchanged: not rebuilt, and the re-organisation
    # permutes the weights but not their momentum buffers (as the reference)
    assert trainer.at_shrink is not None and trainer.first_shrink_step is not None
    (before, buffers), (after, buffers_then) = trainer.at_shrink, trainer.first_shrink_step
    assert before is after is trainer.optimizer and len(buffers) > 10
    assert buffers.keys() == buffers_then.keys()
    assert all(torch.equal(buffers[i], buffers_then[i]) for i in buffers)
