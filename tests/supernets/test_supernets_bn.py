"""BN recalibration: batch-size-weighted statistics with biased variances, image limits, modes, dynamic slices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasforge.supernets import recalibrate_bn
from nasforge.supernets.evaluate import accuracy, calibrated_subnet, evaluate_arch, resize
from nasforge.supernets.layers import DynamicBatchNorm2d

EPS = 1e-5


def _static_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4, eps=EPS),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(4, 3, 1),
        nn.BatchNorm2d(3, eps=EPS),
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.5, 0.5, 1.0, 2.0]))
        net[1].bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    return net


def _batches(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Batches from shifted distributions, so weighting and pooling choices give visibly different results."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 2, 4, 4, generator=gen) * (1 + k) + 3 * k for k, n in enumerate(sizes)]


def _stats(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return h.double().mean((0, 2, 3)), h.double().var((0, 2, 3), unbiased=False)


def _expected(net: nn.Sequential, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-batch statistics of each BN's input computed by hand (BN normalising by batch statistics)."""
    per_batch: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {"bn1": [], "bn2": []}
    with torch.no_grad():
        for x in batches:
            h1 = net[0](x)
            m1, v1 = _stats(h1)
            per_batch["bn1"].append((x.shape[0], m1, v1))
            a = (h1.double() - m1[None, :, None, None]) / torch.sqrt(v1[None, :, None, None] + EPS)
            a = a * net[1].weight.double()[None, :, None, None] + net[1].bias.double()[None, :, None, None]
            h2 = net[4](F.relu(a).float())  # dropout must be off during recalibration
            m2, v2 = _stats(h2)
            per_batch["bn2"].append((x.shape[0], m2, v2))
    out = {}
    for key, rows in per_batch.items():
        total = sum(n for n, _, _ in rows)
        out[f"{key}.mean"] = sum(n * m for n, m, _ in rows) / total
        out[f"{key}.var"] = sum(n * v for n, _, v in rows) / total
        out[f"{key}.mean_unweighted"] = sum(m for _, m, _ in rows) / len(rows)
        out[f"{key}.var_unbiased"] = sum(n * v * _unbias(n) for n, _, v in rows) / total
    return out


def _unbias(n_images: int) -> float:
    count = n_images * 4 * 4
    return count / (count - 1)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool(((a.double() - b.double()).abs() <= tol * (1 + b.double().abs())).all())


def test_weighted_mean_and_biased_variance_by_hand():
    net = _static_net()
    batches = _batches([2, 5, 9])
    expected = _expected(net, batches)
    assert recalibrate_bn(net, batches) == 16
    bn1, bn2 = net[1], net[5]
    assert _close(bn1.running_mean, expected["bn1.mean"]) and _close(bn1.running_var, expected["bn1.var"])
    assert _close(bn2.running_mean, expected["bn2.mean"]) and _close(bn2.running_var, expected["bn2.var"])
    assert bn1.running_mean.dtype == torch.float32
    # the test can tell the protocol apart from the alternatives
    assert not _close(bn1.running_mean, expected["bn1.mean_unweighted"], 1e-2)
    assert not _close(bn1.running_var, expected["bn1.var_unbiased"], 1e-4)
    pooled_var = torch.cat([net[0](x) for x in batches]).detach().double().var((0, 2, 3), unbiased=False)
    assert not _close(bn1.running_var, pooled_var, 1e-2)


def test_recalibration_ignores_previous_statistics():
    a, b = _static_net(), _static_net()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[1].running_mean.fill_(100.0)
        b[5].running_var.fill_(7.0)
        b[1].momentum = None
    batches = _batches([3, 4])
    recalibrate_bn(a, batches)
    recalibrate_bn(b, batches)
    for k in ("1.running_mean", "1.running_var", "5.running_mean", "5.running_var"):
        assert torch.equal(a.state_dict()[k], b.state_dict()[k]), k


def test_max_images_is_respected():
    batches = _batches([8, 8, 8, 8])
    limited, reference = _static_net(), _static_net()
    reference.load_state_dict(limited.state_dict())
    assert recalibrate_bn(limited, batches, max_images=12) == 12
    assert recalibrate_bn(reference, [batches[0], batches[1][:4]]) == 12
    for k in ("1.running_mean", "1.running_var", "5.running_mean", "5.running_var"):
        assert _close(limited.state_dict()[k], reference.state_dict()[k], 1e-6), k
    assert recalibrate_bn(_static_net(), batches, max_images=5) == 5
    assert recalibrate_bn(_static_net(), batches, max_images=10_000) == 32


def test_modes_are_restored():
    net = _static_net().train()
    net[3].eval()
    net[5].eval()
    before = {name: m.training for name, m in net.named_modules()}
    recalibrate_bn(net, _batches([3, 3]))
    assert {name: m.training for name, m in net.named_modules()} == before
    net.eval()
    recalibrate_bn(net, _batches([3]))
    assert not any(m.training for m in net.modules())


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        recalibrate_bn(_static_net(), [])
    with pytest.raises(ValueError, match="no images"):
        recalibrate_bn(_static_net(), _batches([4]), max_images=0)


# -- dynamic BN in a supernet ----------------------------------------------------------------------------------
def _dynamic_bns(net: nn.Module) -> dict[str, DynamicBatchNorm2d]:
    return {name: m for name, m in net.named_modules() if isinstance(m, DynamicBatchNorm2d)}


def test_supernet_recalibration_only_overwrites_the_active_slice(tiny_net, perturb):
    perturb(tiny_net, seed=5)
    arch = tiny_net.set_active(tiny_net.space.smallest())  # depth 1, expand 2
    tiny_net.train()
    before = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in _dynamic_bns(tiny_net).items()}
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, *tiny_net.input_shape(arch), generator=gen) for n in (3, 5)]
    recalibrate_bn(tiny_net, batches)

    checked_partial = 0
    for u, unit in enumerate(tiny_net.units):
        for j, block in enumerate(unit.blocks):
            mid = block.active_mid()
            for bn_name, active_c in (("expand_bn", mid), ("dw_bn", mid), ("project_bn", block.out_channels)):
                bn = getattr(block, bn_name)
                old_mean, old_var = before[f"units.{u}.blocks.{j}.{bn_name}"]
                if j < unit.active_depth:
                    assert not torch.equal(bn.running_mean[:active_c], old_mean[:active_c])
                    assert not torch.equal(bn.running_var[:active_c], old_var[:active_c])
                    assert torch.equal(bn.running_mean[active_c:], old_mean[active_c:])
                    assert torch.equal(bn.running_var[active_c:], old_var[active_c:])
                    checked_partial += active_c < bn.num_features
                else:  # inactive block: nothing changes
                    assert torch.equal(bn.running_mean, old_mean) and torch.equal(bn.running_var, old_var)
    assert checked_partial >= 2  # some BN really was sliced
    assert all(m.training for m in tiny_net.modules())  # train mode restored everywhere (dropout included)


def test_supernet_recalibration_equals_subnet_recalibration(tiny_net, perturb):
    perturb(tiny_net, seed=6)
    arch = tiny_net.set_active(tiny_net.space.sample(2))
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(n, *tiny_net.input_shape(arch), generator=gen) for n in (4, 6)]
    sub = tiny_net.extract(arch)
    recalibrate_bn(sub, batches)
    recalibrate_bn(tiny_net, batches)
    sub_after = tiny_net.extract(arch)
    a, b = sub.state_dict(), sub_after.state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 10
    for k in stats:
        assert _close(a[k], b[k], 1e-5), k
    x = torch.randn(3, *tiny_net.input_shape(arch))
    with torch.no_grad():
        assert float((sub.eval()(x) - tiny_net.eval()(x)).abs().max()) < 1e-5


# -- evaluation helpers ---------------------------------------------------------------------------------------
def test_resize():
    x = torch.randn(2, 1, 16, 16)
    assert resize(x, 16) is x
    assert resize(x, 12).shape == (2, 1, 12, 12)


class _Oracle(nn.Module):
    """Predicts class ``round(mean pixel)`` so accuracy is known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.mean((1, 2, 3)).round().long().clamp(0, 3), 4).float()


def test_accuracy_is_exact():
    x = torch.arange(4.0).repeat(5)[:, None, None, None].expand(20, 1, 2, 2).contiguous()
    y = torch.arange(4).repeat(5)
    y[:3] = (y[:3] + 1) % 4  # 3 of 20 wrong
    assert accuracy(_Oracle(), x, y, resolution=2, batch_size=7) == pytest.approx(17 / 20)


def test_calibrated_subnet_and_evaluate_arch(tiny_net, perturb, tiny_digits):
    perturb(tiny_net, seed=7)
    arch = tiny_net.space.smallest()
    calib = tiny_digits.train.x[:40]
    sub = calibrated_subnet(tiny_net, arch, calib, max_images=40, batch_size=16)
    assert not sub.training
    manual = tiny_net.extract(arch)
    recalibrate_bn(manual, [resize(calib[i : i + 16], 12) for i in range(0, 40, 16)])
    for k, v in manual.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            assert _close(sub.state_dict()[k], v, 1e-5), k
    acc, sub2 = evaluate_arch(tiny_net, arch, calib, tiny_digits.val.x, tiny_digits.val.y, max_calib=40)
    assert 0.0 <= acc <= 1.0
    assert acc == accuracy(sub2, tiny_digits.val.x, tiny_digits.val.y, 12)
