"""Warm starts: load the initial weights of a training run (``nasforge train --init PATH``) into a fresh supernet.

Accepted files, all read with ``torch.load(weights_only=True)`` (nothing is unpickled):

* a nasforge supernet checkpoint (``last.pt``, ``phase-<i>-<name>.pt``, ``teacher.pt``) of the same supernet with
  the same options (only ``dropout``, ``resolutions`` and ``bn_momentum`` may differ: they hold no weights);
* a state dict saved by the Once-for-All reference code (mit-han-lab/once-for-all), for the Once-for-All layout
  of the elastic MobileNetV3 family (see :mod:`nasforge.supernets.ofa_compat`): either the ``OFAMobileNetV3``
  supernet (``ofa_mbv3_d234_e346_k357_w1.0``, ``ofa_D4_E6_K357``, ...) or the static full network that the
  reference trains first and distils from (``ofa_D4_E6_K7``: a ``MobileNetV3Large`` with kernel 7, expand 6,
  depth 4, whose elastic blocks lack the dynamic layers' inner ``conv``/``bn`` level). A file without kernel
  transformation matrices (the static teacher, a fixed-kernel supernet) keeps the supernet's own, identity when
  fresh: what the reference's ``OFAMobileNetV3.load_state_dict`` does when its kernel phase starts from
  ``ofa_D4_E6_K7``;
* a plain ``net.state_dict()`` in nasforge's own names.

Each may be wrapped as ``{"state_dict": ...}`` (the reference's training checkpoints) and carry DataParallel/DDP
``module.`` prefixes. Typical use::

    net = create_supernet("ofa-mbv3-w1.0")
    print(load_initial_weights(net, "ofa_D4_E6_K7"))  # Once-for-All state_dict (teacher ofa_D4_E6_K7, ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nasforge.errors import CheckpointError, ConfigError
from nasforge.io import TORCH_LOAD_ERRORS, load_torch_file
from nasforge.supernets.base import Supernet, create_supernet
from nasforge.supernets.checkpoint import load_checkpoint
from nasforge.supernets.ofa_compat import load_ofa_checkpoint, ofa_key_map, ofa_layout, unwrap_state_dict

__all__ = ["load_initial_weights", "WEIGHTLESS_OPTIONS"]

#: supernet options that hold no weights: a warm start may change them
WEIGHTLESS_OPTIONS = frozenset({"dropout", "resolutions", "bn_momentum"})
_EXAMPLES = 3


def load_initial_weights(net: Supernet, path: str | Path) -> str:
    """Load the weights in ``path`` into ``net`` (in place, every tensor) and describe what was loaded.

    Args:
        net: the freshly created supernet of the run.
        path: a nasforge checkpoint, a Once-for-All state dict (supernet or static teacher) or a nasforge state
            dict; see the module docstring.

    Returns:
        One line, e.g. ``"nasforge checkpoint (ofa-mbv3-w1.0)"`` or
        ``"Once-for-All state_dict (teacher ofa_D4_E6_K7, 312 tensors)"``.

    Raises:
        CheckpointError: the file is missing, corrupt, foreign, of another supernet or options, or its tensors do
            not fit ``net`` (one line naming the file and what to do).
    """
    path = Path(path)
    state = _read(path)
    if "format" in state or "supernet" in state:  # load_checkpoint says what a damaged one lacks
        return _load_nasforge(net, path)
    tensors = unwrap_state_dict(state)
    bad = sorted(str(k) for k, v in tensors.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path} holds {len(bad)} entries that are not tensors ({_examples(bad)}); pass a "
                              "model's state dict or a nasforge checkpoint, not a whole training state")
    own = {_strip(str(k)): v for k, v in tensors.items()}
    if set(own) & set(net.state_dict()):
        _load_strict(net, own, path, "its state dict")
        return f"nasforge state_dict ({len(own)} tensors)"
    return _load_reference(net, tensors, path)


def _read(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"initial weights {path} {'is a directory' if path.is_dir() else 'do not exist'}; "
                              "pass the path of a checkpoint file")
    # a damaged pickle stream fails in torch's unpickler with whatever error its opcodes hit first
    try:
        state = load_torch_file(path)
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"initial weights {path} are corrupt or not a torch checkpoint ({type(exc).__name__} "
                              "while reading it); download or copy the file again, or pass another one") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"initial weights {path} hold a {type(state).__name__}, not a state dict; pass a "
                              "nasforge checkpoint or a Once-for-All state_dict")
    return state


def _strip(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:_EXAMPLES]) + (", ..." if len(keys) > _EXAMPLES else "")


# -- nasforge checkpoints ---------------------------------------------------------------------------------------
def _load_nasforge(net: Supernet, path: Path) -> str:
    ckpt = load_checkpoint(path)
    name, options = ckpt["supernet"], dict(ckpt.get("supernet_options", {}))
    mine = getattr(net, "name", None)
    if mine is not None and name != mine:
        raise CheckpointError(f"initial weights {path} are a checkpoint of supernet {name!r}, not {mine!r}; train "
                              f"{name!r} with options {options} or pass a checkpoint of {mine!r}")
    diff = _option_diff(net, name, options, path)
    if diff:
        raise CheckpointError(f"initial weights {path} were trained with other {name!r} options ({'; '.join(diff)});"
                              f" create the supernet with the checkpoint's options {options} or pass a matching "
                              "checkpoint")
    _load_strict(net, ckpt["model"], path, f"supernet {name!r}")
    return f"nasforge checkpoint ({name})"


def _option_diff(net: Supernet, name: str, options: dict[str, Any], path: Path) -> list[str]:
    """``"key: checkpoint -> this net"`` for each option that shapes weights and differs."""
    try:
        saved = create_supernet(name, **options).config_dict()
    except ConfigError as exc:
        raise CheckpointError(f"initial weights {path} name supernet {name!r} with options this version cannot "
                              f"build ({exc}); pass another checkpoint") from None
    now = net.config_dict()
    keys = sorted((set(saved) | set(now)) - WEIGHTLESS_OPTIONS)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _load_strict(net: Supernet, state: Mapping[str, Any], path: Path, what: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = sorted(k for k in state if k not in own)
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    parts = [f"{len(missing)} missing ({_examples(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({_examples(unexpected)})" if unexpected else "",
             f"{len(shapes)} of another shape (file vs supernet: {_examples(shapes)})" if shapes else ""]
    if any(parts):
        raise CheckpointError(f"initial weights {path} do not fit {getattr(net, 'name', type(net).__name__)!r} "
                              f"({what}: {'; '.join(p for p in parts if p)}); create the supernet the file was "
                              "saved from, or pass a file of this supernet")
    net.load_state_dict(dict(state))


# -- Once-for-All reference files --------------------------------------------------------------------------------
def _load_reference(net: Supernet, tensors: Mapping[str, Any], path: Path) -> str:
    try:
        ofa_names = set(ofa_key_map(net).values())  # type: ignore[arg-type]
    except CheckpointError:
        ofa_names = set()
    layout = ofa_layout(tensors, net) if ofa_names else None  # type: ignore[arg-type]
    if layout is None:
        keys = sorted(str(k) for k in tensors)
        where = "nasforge's or the Once-for-All reference's" if ofa_names else "nasforge's"
        raise CheckpointError(f"initial weights {path} are foreign: none of their {len(keys)} tensors "
                              f"({_examples(keys)}) has {where} name for {getattr(net, 'name', '?')!r}; pass a "
                              "nasforge checkpoint or a Once-for-All state_dict of this supernet")
    try:
        load_ofa_checkpoint(net, tensors, keep_missing_transforms=True)  # type: ignore[arg-type]
    except CheckpointError as exc:
        raise CheckpointError(f"initial weights {path}: {exc}") from None
    kept = any(k.endswith("_matrix") for k in ofa_names) and not any(str(k).endswith("_matrix") for k in tensors)
    note = ", kernel transforms kept from the supernet" if kept and layout == "dynamic" else ""
    if layout == "static":
        cfg = net.config  # type: ignore[attr-defined]
        teacher = f"ofa_D{cfg.depths[-1]}_E{cfg.expand_ratios[-1]}_K{cfg.kernel_sizes[-1]}"
        return f"Once-for-All state_dict (teacher {teacher}, {len(tensors)} tensors)"
    return f"Once-for-All supernet state_dict ({len(tensors)} tensors{note})"
