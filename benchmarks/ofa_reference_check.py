"""Check: nasforge's ``ofa-mbv3-w*`` supernets against the Once-for-All reference code, weight for weight.

Builds the reference ``OFAMobileNetV3`` (1000 classes, dropout 0, ks [3,5,7], e [3,4,6], d [2,3,4]) from a local
checkout of mit-han-lab/once-for-all, randomises every parameter and buffer (BN statistics, kernel transformation
matrices, batch counters) so that no identity or zero initialisation can hide a mapping bug, loads it into nasforge
with :func:`nasforge.supernets.ofa_compat.ofa_to_nasforge_state_dict` and compares, for random architectures at
several resolutions:

- dynamic logits in eval mode and in train mode (batch statistics), and the running statistics after the
  train-mode passes;
- the reverse direction: a randomised nasforge supernet exported with ``nasforge_to_ofa_state_dict`` and loaded by
  the reference's own ``load_state_dict``;
- static subnets: the reference's ``get_active_subnet`` against ``net.extract`` (eval logits), and nasforge's
  analytic params/MACs against the reference static subnet's parameter count and exactly counted MACs.

    python benchmarks/ofa_reference_check.py --ofa-repo /tmp/ofa-ref [--width 1.0|1.2] [--write-keys FILE]

Exits 1 on any mismatch. The reference imports torchvision at import time (only for its data loaders, unused
here); torchvision is not a nasforge dependency, so :func:`import_reference` puts a minimal stub module in
``sys.modules`` first. The reference code is imported, never copied.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.supernets import Architecture, ElasticMobileNetV3, create_supernet
from nasforge.supernets.ofa_compat import nasforge_to_ofa_state_dict, ofa_to_nasforge_state_dict

RESOLUTIONS = (128, 160, 192, 224)
BATCH = 4


@dataclass
class Reference:
    """Handles on the imported reference code."""

    OFAMobileNetV3: Any
    utils: types.ModuleType  # ofa.utils: loss helpers and build_optimizer
    commit: str


def _stub_torchvision() -> None:
    """Register an empty ``torchvision`` (transforms, transforms.functional, datasets) in ``sys.modules``.

    ``ofa.utils.my_dataloader`` subclasses ``transforms.RandomResizedCrop`` at import time; nothing of it runs here.
    A real torchvision, if installed, is left alone.
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    datasets = types.ModuleType("torchvision.datasets")
    for name in ("RandomResizedCrop", "RandomCrop", "Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"):
        setattr(transforms, name, type(name, (), {}))
    transforms.functional = functional
    tv.transforms, tv.datasets = transforms, datasets
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional, "torchvision.datasets": datasets})


def import_reference(repo: Path) -> Reference:
    """Import ``OFAMobileNetV3`` and ``ofa.utils`` from a checkout (work tree) of mit-han-lab/once-for-all."""
    repo = repo.resolve()
    if not (repo / "ofa" / "imagenet_classification").is_dir():
        raise SystemExit(f"{repo} is not a checkout of mit-han-lab/once-for-all (no ofa/imagenet_classification)")
    _stub_torchvision()
    sys.path.insert(0, str(repo))
    import ofa.utils as utils
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    return Reference(OFAMobileNetV3, utils, _commit(repo))


def _commit(repo: Path) -> str:
    git = repo / ".git"
    if not (git / "HEAD").is_file():
        return "unknown (no .git)"
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head[:7]
    ref = head[5:]
    if (git / ref).is_file():
        return (git / ref).read_text().strip()[:7]
    packed = git / "packed-refs"
    for line in packed.read_text().splitlines() if packed.is_file() else []:
        if line.endswith(" " + ref):
            return line[:7]
    return "unknown"


def build_reference(ref: Reference, width: float) -> nn.Module:
    """The reference supernet of the full OFA MobileNetV3 space, 1000 classes, no dropout."""
    return ref.OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=width, ks_list=[3, 5, 7],
                              expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])


def randomize_(net: nn.Module, seed: int) -> None:
    """Overwrite every parameter and buffer with seeded random values of a sensible scale.

    Weights ~ N(0, 1/fan_in); BN affine around (1, 0); running means ~ N(0, 0.1), variances in [0.5, 1.5];
    kernel transformation matrices = I + N(0, 0.3/k); batch counters random integers.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "num_batches_tracked":
                t.copy_(torch.randint(0, 10_000, t.shape, generator=gen))
            elif leaf == "running_var":
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif leaf in ("running_mean", "bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.dim() == 1:  # BN scale
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
            elif leaf.endswith("_matrix") or ".transforms." in name:
                t.copy_(torch.eye(t.shape[0]) + 0.3 / t.shape[0] ** 0.5 * torch.randn(t.shape, generator=gen))
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) / fan_in**0.5)


def set_reference_arch(ofa_net: nn.Module, arch: Architecture) -> None:
    """Activate ``arch`` (nasforge's plain-data arch; the same ks/e/d genes) in the reference supernet."""
    ofa_net.set_active_subnet(ks=list(arch["ks"]), e=list(arch["e"]), d=list(arch["d"]))


def test_archs(net: ElasticMobileNetV3, n: int, seed: int) -> list[Architecture]:
    """Largest at 224, smallest at 128, then random architectures cycling through ``RESOLUTIONS``."""
    space = net.space
    rng = random.Random(seed)
    archs = [space.largest().replace(r=224), space.smallest().replace(r=128)]
    while len(archs) < n:
        archs.append(space.sample(rng).replace(r=RESOLUTIONS[len(archs) % len(RESOLUTIONS)]))
    return archs


def exact_macs(module: nn.Module, resolution: int) -> int:
    """Multiply-accumulates of every conv and linear layer of a static network, counted exactly with hooks."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for h in handles:
            h.remove()
    return total


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _state_diff(net: ElasticMobileNetV3, ofa_net: nn.Module) -> float:
    theirs = ofa_net.state_dict()
    return max(_max_diff(t, theirs[k]) for k, t in nasforge_to_ofa_state_dict(net).items())


def compare_logits(net: ElasticMobileNetV3, ofa_net: nn.Module, archs: list[Architecture], train: bool,
                   seed: int) -> tuple[float, float]:
    """Max abs logit diff over ``archs`` and the largest |logit| seen (both nets in the same mode)."""
    net.train(train)
    ofa_net.train(train)
    gen = torch.Generator().manual_seed(seed)
    worst = scale = 0.0
    with torch.no_grad():
        for arch in archs:
            r = int(arch["r"])
            x = torch.randn(BATCH, 3, r, r, generator=gen)
            net.set_active(arch)
            set_reference_arch(ofa_net, arch)
            ours, theirs = net(x), ofa_net(x)
            worst = max(worst, _max_diff(ours, theirs))
            scale = max(scale, float(theirs.abs().max()))
    return worst, scale


def compare_static(net: ElasticMobileNetV3, ofa_net: nn.Module, archs: list[Architecture],
                   seed: int) -> tuple[float, list[str]]:
    """Extracted-subnet logits (eval) and params/MACs of nasforge vs the reference's ``get_active_subnet``."""
    gen = torch.Generator().manual_seed(seed)
    worst, problems = 0.0, []
    for arch in archs:
        r = int(arch["r"])
        set_reference_arch(ofa_net, arch)
        theirs = ofa_net.get_active_subnet(preserve_weight=True).eval()
        ours = net.extract(arch).eval()
        x = torch.randn(BATCH, 3, r, r, generator=gen)
        with torch.no_grad():
            worst = max(worst, _max_diff(ours(x), theirs(x)))
        # tensor by tensor (both list conv, BN, SE, linear tensors in the same order): transformed kernels,
        # sliced BN statistics and SE weights are compared directly, not only through the logits
        # (batch counters excluded: the reference's copy_bn leaves them at 0, extract() copies them)
        mine, ref_tensors = ([t for t in m.state_dict().values() if t.is_floating_point()] for m in (ours, theirs))
        if len(mine) != len(ref_tensors) or any(a.shape != b.shape for a, b in zip(mine, ref_tensors, strict=False)):
            problems.append(f"arch {arch.to_json()}: static subnet tensors differ in number or shape")
        else:
            worst = max(worst, *(_max_diff(a, b) for a, b in zip(mine, ref_tensors, strict=True)))
        ref_params = sum(p.numel() for p in theirs.parameters())
        ref_macs = exact_macs(theirs, r)
        if (net.params(arch), net.macs(arch)) != (ref_params, ref_macs):
            problems.append(f"arch {arch.to_json()}: nasforge params/MACs {net.params(arch)}/{net.macs(arch)}, "
                            f"reference {ref_params}/{ref_macs}")
    return worst, problems


def key_fixture(ofa_net: nn.Module, commit: str, width: float) -> dict[str, Any]:
    """The reference state dict's keys and shapes (what ``tests/supernets/data/ofa_mbv3_w1.0_keys.json`` holds)."""
    return {
        "source": f"mit-han-lab/once-for-all@{commit} OFAMobileNetV3(n_classes=1000, width_mult={width}, "
                  "ks_list=[3,5,7], expand_ratio_list=[3,4,6], depth_list=[2,3,4]).state_dict()",
        "keys": {k: list(v.shape) for k, v in ofa_net.state_dict().items()},
    }


def write_key_fixture(path: Path, fixture: dict[str, Any]) -> None:
    """One key per line: small, diff-friendly."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in fixture["keys"].items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{\n  "source": ' + json.dumps(fixture["source"]) + ',\n  "keys": {\n'
                    + ",\n".join("  " + line for line in lines) + "\n  }\n}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ofa-repo", type=Path, required=True, help="checkout of mit-han-lab/once-for-all")
    parser.add_argument("--width", type=float, default=1.0, choices=(1.0, 1.2))
    parser.add_argument("--archs", type=int, default=10, help="architectures compared (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-keys", type=Path, help="write the reference's key -> shape JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ref = import_reference(args.ofa_repo)
    name = f"ofa-mbv3-w{args.width}"

    torch.manual_seed(args.seed)
    ofa_net = build_reference(ref, args.width)
    randomize_(ofa_net, args.seed)
    if args.write_keys:
        write_key_fixture(args.write_keys, key_fixture(ofa_net, ref.commit, args.width))
        print(f"wrote {len(ofa_net.state_dict())} keys to {args.write_keys}")
    net = create_supernet(name, dropout=0.0)  # the reference is built without dropout too
    net.load_state_dict(ofa_to_nasforge_state_dict(ofa_net.state_dict(), net))
    archs = test_archs(net, args.archs, args.seed)
    tol = 1e-5
    rows: list[tuple[str, float, float | None]] = []
    rows.append(("OFA -> nasforge, eval logits", *compare_logits(net, ofa_net, archs, False, 1)))
    rows.append(("OFA -> nasforge, train-mode logits", *compare_logits(net, ofa_net, archs, True, 2)))
    rows.append(("running stats after the train-mode passes", _state_diff(net, ofa_net), None))
    static_diff, problems = compare_static(net, ofa_net, archs, 3)
    rows.append(("static subnets (extract vs get_active_subnet): eval logits and every tensor", static_diff, None))

    torch.manual_seed(args.seed + 1)
    net2 = create_supernet(name, dropout=0.0)
    randomize_(net2, args.seed + 1)
    ofa_net2 = build_reference(ref, args.width)
    ofa_net2.load_state_dict(nasforge_to_ofa_state_dict(net2))  # the reference's own loader
    rows.append(("nasforge -> OFA, eval logits", *compare_logits(net2, ofa_net2, archs, False, 4)))
    rows.append(("nasforge -> OFA, train-mode logits", *compare_logits(net2, ofa_net2, archs, True, 5)))

    print(f"reference mit-han-lab/once-for-all@{ref.commit}, {name}, {len(archs)} archs at "
          f"{sorted({int(a['r']) for a in archs})} px, batch {BATCH}, torch {torch.__version__}")
    print("| comparison | max abs diff | max abs value |\n|---|---|---|")
    failed = False
    for label, diff, scale in rows:
        ok = diff <= tol * max(1.0, scale or 0.0)
        failed |= not ok
        shown = "-" if scale is None else f"{scale:.3g}"
        print(f"| {label} | {diff:.3g} | {shown} |" + ("" if ok else " MISMATCH"))
    print(f"params/MACs of {len(archs)} static subnets equal the reference's: {'yes' if not problems else 'NO'} "
          f"(largest @224: {net.params(archs[0]):,} params, {net.macs(archs[0]):,} MACs; smallest @128: "
          f"{net.params(archs[1]):,} params, {net.macs(archs[1]):,} MACs)")
    for p in problems:
        print("  " + p)
    failed |= bool(problems)
    print("FAILED" if failed else f"OK (tolerance {tol:g} x max(1, |logit|))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
