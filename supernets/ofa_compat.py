"""Read and write checkpoints of the Once-for-All reference ``OFAMobileNetV3`` (mit-han-lab/once-for-all).

The reference stores the same tensors as :class:`~nasforge.supernets.ElasticMobileNetV3` under other names
(``first_conv.conv.weight``, ``blocks.5.conv.depth_conv.conv.7to5_matrix``, ``classifier.linear.bias``, ...).
This module translates names in both directions; tensors are neither copied nor changed, so a supernet loaded
from a reference checkpoint computes the reference's logits for every architecture (same arch format).

Typical use::

    from nasforge.supernets import create_supernet
    from nasforge.supernets.ofa_compat import load_ofa_checkpoint

    net = load_ofa_checkpoint(create_supernet("ofa-mbv3-w1.0"), "ofa_mbv3_d234_e346_k357_w1.0")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from nasforge.errors import CheckpointError
from nasforge.io import TORCH_LOAD_ERRORS, load_torch_file
from nasforge.supernets.mbv3 import ElasticMobileNetV3, ofa_widths

__all__ = ["ofa_key_map", "ofa_to_nasforge_state_dict", "nasforge_to_ofa_state_dict", "load_ofa_checkpoint",
           "ofa_layout", "unwrap_state_dict"]

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_EXAMPLES = 3  # example keys quoted in an error message


# -- the name map -------------------------------------------------------------------------------------------
def _static_names(prefix: str, ofa: str) -> Callable[[str], str | None]:
    """Rename ``<prefix>.0.weight`` (conv) and ``<prefix>.1.<bn field>`` of a conv+BN(+act) ``nn.Sequential``."""

    def rename(rest: str) -> str | None:
        if rest == "0.weight":
            return f"{ofa}.conv.weight"
        index, _, field = rest.partition(".")
        return f"{ofa}.bn.{field}" if index == "1" and field in _BN_FIELDS else None

    return rename


def _block_name(rest: str, ofa: str, kernel_sizes: tuple[int, ...], dynamic: bool) -> str | None:
    """OFA name of a tensor of one MBConv block (``rest`` is the name inside the nasforge block).

    Dynamic blocks wrap every conv and BN once more (``conv.conv.weight``, ``bn.bn.weight``); the fixed first
    block does not.
    """
    inner = ".conv" if dynamic else ""
    bn_inner = ".bn" if dynamic else ""
    part, _, field = rest.partition(".")
    layers = {"expand": "inverted_bottleneck", "dw": "depth_conv", "project": "point_linear"}
    for short, long in layers.items():
        if part == f"{short}_conv" and field == "weight":
            return f"{ofa}.{long}.conv{inner}.weight"
        if part == f"{short}_bn" and field in _BN_FIELDS:
            return f"{ofa}.{long}.bn{bn_inner}.{field}"
    match = re.fullmatch(r"dw_conv\.transforms\.to(\d+)x\1", rest)
    if match:
        small = int(match.group(1))
        larger = kernel_sizes[kernel_sizes.index(small) + 1]
        return f"{ofa}.depth_conv.conv.{larger}to{small}_matrix"
    match = re.fullmatch(r"se\.(reduce|expand)\.(weight|bias)", rest)
    if match:
        return f"{ofa}.depth_conv.se.fc.{match.group(1)}.{match.group(2)}"
    return None


def _check_layout(net: ElasticMobileNetV3) -> None:
    cfg = getattr(net, "config", None)
    if not isinstance(net, ElasticMobileNetV3) or cfg is None or cfg.first_block_width is None \
            or cfg.feature_width is None:
        raise CheckpointError(
            f"the Once-for-All layout needs an ElasticMobileNetV3 with a first block and a feature layer, got "
            f"{type(net).__name__} {getattr(net, 'name', '')!r}; use create_supernet('ofa-mbv3-w1.0') or 'ofa-mbv3-w1.2'"
        )


def ofa_key_map(net: ElasticMobileNetV3) -> dict[str, str]:
    """``{nasforge key: OFA key}`` for every entry of ``net.state_dict()``, in nasforge's order.

    Raises:
        CheckpointError: ``net`` does not have the Once-for-All layout (stem, fixed first block, elastic units,
            final expand, feature mix, classifier).
    """
    _check_layout(net)
    cfg = net.config
    head: dict[str, Callable[[str], str | None]] = {
        "stem": _static_names("stem", "first_conv"),
        "final_expand": _static_names("final_expand", "final_expand_layer"),
        "feature": lambda rest: "feature_mix_layer.conv.weight" if rest == "0.weight" else None,
        "classifier": lambda rest: f"classifier.linear.{rest}" if rest in ("weight", "bias") else None,
        "first_block": lambda rest: _block_name(rest, "blocks.0.conv", cfg.kernel_sizes, dynamic=False),
    }
    mapping: dict[str, str] = {}
    for key in net.state_dict():
        top, _, rest = key.partition(".")
        if top in head:
            ofa = head[top](rest)
        else:
            match = re.fullmatch(r"units\.(\d+)\.blocks\.(\d+)\.(.+)", key)
            ofa = None
            if match:
                index = 1 + int(match.group(1)) * cfg.max_depth + int(match.group(2))
                ofa = _block_name(match.group(3), f"blocks.{index}.conv", cfg.kernel_sizes, dynamic=True)
        assert ofa is not None, f"no Once-for-All name for nasforge key {key!r}"
        mapping[key] = ofa
    return mapping


# -- OFA -> nasforge ------------------------------------------------------------------------------------------
def unwrap_state_dict(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The model's tensors of a checkpoint: ``state_dict["state_dict"]`` when the reference's training wrapper
    (``{"epoch": ..., "optimizer": ..., "state_dict": ...}``) holds them, else ``state_dict`` itself."""
    inner = state_dict.get("state_dict")
    return inner if isinstance(inner, Mapping) else state_dict


# an elastic block's conv or BN tensor without the dynamic wrapper: the static MobileNetV3 (teacher) spelling
_STATIC_BLOCK = re.compile(
    r"blocks\.[1-9]\d*\.conv\.(inverted_bottleneck|depth_conv|point_linear)\.(conv\.weight|bn\.\w+)")


def ofa_layout(state_dict: Mapping[str, Any], net: ElasticMobileNetV3) -> str | None:
    """Which reference layout a state dict has: ``"static"`` (a plain ``MobileNetV3``, e.g. the published
    teacher ``ofa_D4_E6_K7``: elastic blocks without the dynamic wrappers, no kernel transformation matrices),
    ``"dynamic"`` (an ``OFAMobileNetV3`` supernet), or ``None`` when none of its keys has a reference name.

    Wrappers, ``module.`` prefixes and the older ``mobile_inverted_conv`` spelling are accepted.

    Raises:
        CheckpointError: ``net`` does not have the Once-for-All layout.
    """
    known = set(ofa_key_map(net).values())
    raw = [_plain(str(k)) for k in unwrap_state_dict(state_dict)]
    if not any(_canonical(k, known) in known for k in raw):
        return None
    return "static" if any(_STATIC_BLOCK.fullmatch(k) for k in raw) else "dynamic"


def _plain(key: str) -> str:
    """``key`` without ``module.`` prefixes (DataParallel/DDP) and in the current ``.conv.`` spelling."""
    while key.startswith("module."):
        key = key[len("module."):]
    return key.replace(".mobile_inverted_conv.", ".conv.")


def _canonical(key: str, known: Collection[str]) -> str:
    """The current reference name of ``key``: strips ``module.`` (DataParallel/DDP) and renames the older
    ``mobile_inverted_conv`` and single-level ``bn.``/``conv.weight``/``linear.`` spellings."""
    key = _plain(key)
    if key in known:
        return key
    for old, new in ((".bn.", ".bn.bn."), (".conv.weight", ".conv.conv.weight"), (".linear.", ".linear.linear."),
                     (".bn.bn.", ".bn."), (".conv.conv.weight", ".conv.weight"), (".linear.linear.", ".linear.")):
        alt = key.replace(old, new)
        if alt != key and alt in known:
            return alt
    return key


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_EXAMPLES])
    return shown + (", ..." if len(keys) > _EXAMPLES else "")


def _width_hint(state: Mapping[str, torch.Tensor], net: ElasticMobileNetV3) -> str:
    """What to do about mismatched shapes: name the member whose stem width matches, or the class count."""
    stem = state.get("first_conv.conv.weight")
    if stem is not None and stem.dim() == 4 and stem.shape[0] != net.config.stem_width:
        for width in ("1.0", "1.2"):
            if ofa_widths(float(width))["stem_width"] == stem.shape[0]:
                return f"the checkpoint is the w{width} supernet: use create_supernet('ofa-mbv3-w{width}')"
        return f"its stem has {stem.shape[0]} channels, not {net.config.stem_width}: pick the matching width"
    classes = state.get("classifier.linear.weight")
    if classes is not None and classes.dim() == 2 and classes.shape[0] != net.config.num_classes:
        return (f"the checkpoint has {classes.shape[0]} classes: create the supernet with "
                f"num_classes={classes.shape[0]}")
    return "check the width, class count and kernel/expand choices the checkpoint was trained with"


def ofa_to_nasforge_state_dict(
    state_dict: Mapping[str, Any], net: ElasticMobileNetV3, *, keep_missing_transforms: bool = False
) -> dict[str, torch.Tensor]:
    """Rename a reference ``OFAMobileNetV3`` state dict to ``net``'s keys (tensors are not copied).

    Accepts a raw state dict or a ``{"state_dict": ...}`` checkpoint, ``module.`` prefixes (DataParallel/DDP)
    and the older ``mobile_inverted_conv`` spelling of the reference's own released checkpoints.

    Args:
        state_dict: the reference's state dict (or checkpoint dict).
        net: the supernet the result is meant for (its shapes are checked).
        keep_missing_transforms: a checkpoint of the fixed-kernel (k7) reference net has no kernel
            transformation matrices; with ``True`` those keys are taken from ``net`` (identity when fresh),
            as the reference does when it starts the elastic-kernel phase from that net.

    Returns:
        ``{nasforge key: tensor}`` with exactly ``net.state_dict()``'s keys, ready for ``net.load_state_dict``.

    Raises:
        CheckpointError: missing or unexpected keys, a shape mismatch, or a non-tensor entry (one line: counts,
            a few example keys and what to do).
    """
    to_ofa = ofa_key_map(net)
    from_ofa = {ofa: key for key, ofa in to_ofa.items()}
    state: dict[str, Any] = {}
    for raw_key, value in unwrap_state_dict(state_dict).items():
        key = _canonical(str(raw_key), from_ofa)
        if key in state:
            raise CheckpointError(f"checkpoint entries {raw_key!r} and another one both mean {key!r}; "
                                  "remove the duplicate")
        state[key] = value
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{len(bad)} checkpoint entries are not tensors ({_examples(bad)}); "
                              "pass the model's state dict, not a whole training state")
    missing = [k for k in from_ofa if k not in state]
    unexpected = sorted(k for k in state if k not in from_ofa)
    own = net.state_dict()
    if missing and keep_missing_transforms and all(k.endswith("_matrix") for k in missing):
        missing_from_net = {from_ofa[k] for k in missing}
        missing = []
    else:
        missing_from_net = set()
    if missing or unexpected:
        raise CheckpointError(_key_error(missing, unexpected, state, net))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[from_ofa[k]].shape)}"
              for k in from_ofa if k in state and state[k].shape != own[from_ofa[k]].shape]
    if shapes:
        raise CheckpointError(f"{len(shapes)} tensors have the wrong shape for {net.name!r} (checkpoint vs "
                              f"supernet: {_examples(shapes)}); {_width_hint(state, net)}")
    return {key: own[key] if key in missing_from_net else state[ofa] for key, ofa in to_ofa.items()}


def _key_error(missing: list[str], unexpected: list[str], state: Mapping[str, Any], net: ElasticMobileNetV3) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    hint = "is it an OFAMobileNetV3 state dict of the same width and depth?"
    if unexpected and not missing:
        hint = _width_hint(state, net) if any(k.startswith("blocks.") for k in unexpected) else hint
    elif missing and all(k.endswith("_matrix") for k in missing):
        hint = ("it has no kernel transformation matrices (a fixed-kernel k7 net?): pass "
                "keep_missing_transforms=True to keep the supernet's own")
    elif any(k.startswith("blocks.") for k in missing + unexpected):
        hint = f"the block count or layout differs; {_width_hint(state, net)}"
    return f"checkpoint does not match the Once-for-All layout of {net.name!r}: {'; '.join(parts)}; {hint}"


def load_ofa_checkpoint(
    net: ElasticMobileNetV3, source: str | Path | Mapping[str, Any], *, keep_missing_transforms: bool = False
) -> ElasticMobileNetV3:
    """Load a reference ``OFAMobileNetV3`` checkpoint into ``net`` (in place) and return ``net``.

    Args:
        net: an ``ofa-mbv3-w1.0`` or ``ofa-mbv3-w1.2`` supernet (matching the checkpoint's width).
        source: a file written by ``torch.save`` (read with ``weights_only=True``, nothing is unpickled) or an
            already loaded mapping; either a raw state dict or a ``{"state_dict": ...}`` checkpoint.
        keep_missing_transforms: see :func:`ofa_to_nasforge_state_dict`.

    Raises:
        CheckpointError: the file is missing, unreadable or corrupt, or does not fit ``net``.
    """
    state = _read(Path(source)) if isinstance(source, (str, Path)) else source
    if not isinstance(state, Mapping):
        raise CheckpointError(f"an OFA checkpoint must be a state dict, got {type(state).__name__}")
    net.load_state_dict(ofa_to_nasforge_state_dict(state, net, keep_missing_transforms=keep_missing_transforms))
    return net


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"OFA checkpoint {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    # a damaged pickle stream fails in torch's unpickler with whatever error its opcodes hit first
    try:
        return load_torch_file(path)
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"OFA checkpoint {path} is corrupt or not a torch checkpoint ({type(exc).__name__} "
                              "while reading it); download it again or point at another file") from None


# -- nasforge -> OFA ------------------------------------------------------------------------------------------
def nasforge_to_ofa_state_dict(net: ElasticMobileNetV3) -> dict[str, torch.Tensor]:
    """``net``'s state dict under the reference ``OFAMobileNetV3`` names (loadable by its ``load_state_dict``).

    Tensors share storage with ``net`` (like ``state_dict()``); clone them before changing them in place.

    Raises:
        CheckpointError: ``net`` does not have the Once-for-All layout.
    """
    to_ofa = ofa_key_map(net)
    return {to_ofa[key]: tensor for key, tensor in net.state_dict().items()}
