"""Supernet checkpoints: atomic writes, safe loads (``weights_only``), clear errors on corrupt files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasforge.errors import CheckpointError
from nasforge.io import TORCH_LOAD_ERRORS, atomic_torch_save, load_torch_file
from nasforge.supernets.base import Supernet, create_supernet

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "load_supernet"]

CHECKPOINT_FORMAT = "nasforge-supernet-checkpoint/1"


def save_checkpoint(path: str | Path, net: Supernet, supernet_name: str, supernet_options: dict[str, Any],
                    **extra: Any) -> Path:
    """Atomically write the supernet's weights with what is needed to rebuild it (plus ``extra`` entries)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "supernet": supernet_name,
        "supernet_options": supernet_options,
        "model": net.state_dict(),
        **extra,
    }
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    # a damaged pickle stream fails in torch's unpickler with whatever error its opcodes hit first
    try:
        state = load_torch_file(path)
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a nasforge checkpoint ({type(exc).__name__} "
                              "while reading it); point at another file or re-create it") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a nasforge supernet checkpoint (expected format {CHECKPOINT_FORMAT})")
    if not (isinstance(state.get("supernet"), str) and isinstance(state.get("model"), dict)
            and isinstance(state.get("supernet_options", {}), dict)):
        raise CheckpointError(f"checkpoint {path} is damaged: it needs a 'supernet' name, 'supernet_options' and a "
                              "'model' state dict")
    return state


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """Rebuild the supernet stored in a checkpoint; returns ``(net, checkpoint dict)``."""
    state = load_checkpoint(path)
    net = create_supernet(state["supernet"], **state.get("supernet_options", {}))
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit supernet {state['supernet']!r}: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    return net, state
