"""Save and reload pruned models as plain data: how to rebuild the unpruned model, the pruning history, tensors.

Nothing is unpickled on load (``torch.load(weights_only=True)``): the base model is rebuilt from a zoo name or a
supernet + architecture, the recorded history re-applies the structural pruning, then the weights are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.errors import CheckpointError, ConfigError
from nasforge.io import TORCH_LOAD_ERRORS, atomic_torch_save, load_torch_file

from ._engine import PruneError, replay_history

__all__ = ["PRUNED_FORMAT", "save_pruned", "load_pruned", "build_base", "read_pruned"]

PRUNED_FORMAT = "nasforge-pruned-model/1"


def build_base(base: Mapping[str, Any]) -> nn.Module:
    """Rebuild the unpruned model described by ``base`` (fresh weights).

    ``{"kind": "zoo", "name": "resnet20", "kwargs": {...}}`` or
    ``{"kind": "subnet", "supernet": NAME, "options": {...}, "arch": {...}}``.
    """
    kind = base.get("kind")
    if kind == "zoo":
        from ._zoo import create_model

        return create_model(str(base["name"]), **dict(base.get("kwargs") or {}))
    if kind == "subnet":
        from nasforge.supernets import create_supernet

        net = create_supernet(str(base["supernet"]), **dict(base.get("options") or {}))
        return net.extract(net.space.canonical(dict(base["arch"])))
    raise CheckpointError(f"unknown base model kind {kind!r}; expected 'zoo' or 'subnet' (a model defined in your "
                          "own code, kind 'user' or 'factory', is loaded with load_pruned(path, model=YourModel()))")


def save_pruned(path: str | Path, model: nn.Module, *, base: Mapping[str, Any] | None,
                input_shape: Sequence[int], history: Sequence[Sequence[Any]],
                extra: Mapping[str, Any] | None = None) -> Path:
    """Atomically write a pruned ``model``; ``base`` says how to rebuild the unpruned model (None: the user's own
    class, which must then be passed to :func:`load_pruned`)."""
    state = {
        "format": PRUNED_FORMAT,
        "base": dict(base) if base is not None else {"kind": "user"},
        "input_shape": [int(s) for s in input_shape],
        "history": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history],
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        **dict(extra or {}),
    }
    return atomic_torch_save(path, state)


def read_pruned(path: str | Path) -> dict[str, Any]:
    """The raw contents of a pruned-model file (checked, nothing unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pruned model {path} does not exist")
    try:
        state = load_torch_file(path)
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"{path} is corrupt or not a nasforge pruned model ({type(exc).__name__}); point at "
                              "the model.pt that `nasforge prune` wrote") from None
    if not isinstance(state, dict) or state.get("format") != PRUNED_FORMAT:
        raise CheckpointError(f"{path} is not a nasforge pruned model (expected format {PRUNED_FORMAT})")
    if not isinstance(state.get("state_dict"), dict) or not isinstance(state.get("history"), list):
        raise CheckpointError(f"{path} is damaged: it lacks the weights or the pruning history")
    return state


def load_pruned(path: str | Path, model: nn.Module | None = None, *, state: dict[str, Any] | None = None
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a pruned model saved by :func:`save_pruned`; returns ``(model in eval mode, file contents)``.

    Args:
        model: a fresh unpruned instance of the base model, needed only for models of the user's own class.
        state: the file's contents when the caller already read them with :func:`read_pruned`.

    Raises:
        CheckpointError: the file is missing, corrupt, or does not fit the base model.
    """
    state = read_pruned(path) if state is None else state
    if model is None:
        if state["base"].get("kind") == "user":
            raise ConfigError(f"{path} holds a pruned model of your own class: pass model=YourModel() (unpruned)")
        if state["base"].get("kind") == "factory":  # never imported from a path read here: the caller builds it
            raise ConfigError(f"{path} was pruned from your factory {state['base'].get('spec')}: pass model= its "
                              "unpruned output")
        try:
            model = build_base(state["base"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: its base model cannot be rebuilt ({exc})") from None
    example = torch.zeros(2, *state["input_shape"])
    try:
        replay_history(model, example, state["history"])
        model.load_state_dict(state["state_dict"])
    except (PruneError, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        raise CheckpointError(f"{path} does not fit its base model: {lines[min(1, len(lines) - 1)][:240]}") from None
    return model.eval(), state
