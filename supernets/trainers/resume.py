"""Where a training run continues from ``last.pt``: phase, epoch, step inside the epoch, optimizer and scaler."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge.errors import CheckpointError
from nasforge.supernets.base import Supernet
from nasforge.supernets.checkpoint import load_checkpoint
from nasforge.supernets.trainers.config import Phase

if TYPE_CHECKING:
    from nasforge.supernets.trainers.base import Trainer

__all__ = ["ResumePoint", "restore", "RESUMABLE_CHANGES"]

#: settings a resumed run may change (they decide when files are written, not what is learned)
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "eval_every"})


@dataclass
class ResumePoint:
    """``phase``/``epoch``: finished epochs of that phase; ``step``: finished steps of the next epoch."""

    phase: int = 0
    epoch: int = 0
    step: int = 0
    optimizer: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    passes: dict[str, int] | None = None


def restore(trainer: Trainer, net: Supernet, path: Path,
            phases: list[Phase]) -> tuple[ResumePoint, list[dict[str, Any]]]:
    """Load ``path`` into ``net``; return where to continue and the history so far.

    Raises:
        CheckpointError: the checkpoint was written with other settings, by another trainer, does not fit the
            supernet, or lies beyond this schedule.
    """
    state = load_checkpoint(path)
    saved, now = state.get("train_config", {}), asdict(trainer.config)
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items()
               if k in saved and saved[k] != v and k not in RESUMABLE_CHANGES]
    if changed or "seed" not in saved:
        raise CheckpointError(f"checkpoint {path} was trained with other settings ({'; '.join(changed) or 'no seed'}"
                              "); resume with the same config")
    if state.get("trainer", trainer.name) != trainer.name:
        raise CheckpointError(f"checkpoint {path} was written by trainer {state.get('trainer')!r}, not "
                              f"{trainer.name!r}; resume with the same trainer")
    try:
        net.load_state_dict(state["model"])
        at = ResumePoint(int(state.get("phase", 0)), int(state["epoch"]), int(state.get("step") or 0),
                         state["optimizer"], state.get("scaler"), state.get("progress"), state.get("passes"))
        history = list(state.get("history", []))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this supernet/config: {str(exc)[:200]}") from None
    if at.phase >= len(phases) or at.epoch > phases[at.phase].epochs or (
            at.epoch == phases[at.phase].epochs and at.step):
        raise CheckpointError(f"checkpoint {path} is at phase {at.phase + 1} epoch {at.epoch}, beyond this schedule; "
                              "resume with the same config")
    if at.epoch == phases[at.phase].epochs:  # that phase finished: start the next one
        trainer.end_phase(net, at.phase, phases[at.phase])
        at = ResumePoint(at.phase + 1, 0, 0, at.optimizer, at.scaler_state, None, at.passes)
    return at, history
