"""What a search returns: one :class:`TrialRecord` per trial and the feasible Pareto front."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ConfigError
from nasforge.io import atomic_write_json, atomic_write_text
from nasforge.supernets.arch import Architecture

from ._objectives import Constraint, Objective, parse_constraint
from ._pareto import pareto_front

__all__ = ["SearchResult", "TrialRecord", "build_front"]

RESULT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search.

    Attributes:
        number: the trial's number in its study (0-based).
        arch: the canonical architecture that was evaluated (empty if the trial never got one).
        metrics: what the evaluator returned (empty for failed trials).
        state: ``"complete"``, ``"fail"``, ``"pruned"``, ``"running"`` or ``"waiting"``.
        feasible: complete and within every constraint.
        error: why the trial failed, if it did.
        duplicate_of: number of the earlier trial whose metrics were reused, if any.
    """

    number: int
    arch: Architecture
    metrics: dict[str, float]
    state: str
    feasible: bool
    error: str | None = None
    duplicate_of: int | None = None

    def to_row(self) -> dict[str, Any]:
        """Flat dict: number, state, feasible, one key per metric, error, duplicate_of, arch (JSON text)."""
        row: dict[str, Any] = {"number": self.number, "state": self.state, "feasible": self.feasible}
        row.update(self.metrics)
        row.update({"error": self.error, "duplicate_of": self.duplicate_of, "arch": self.arch.to_json()})
        return row

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-able dict (metrics and arch as objects); :meth:`from_dict` reads it back."""
        return {
            "number": self.number,
            "state": self.state,
            "feasible": self.feasible,
            "metrics": dict(self.metrics),
            "error": self.error,
            "duplicate_of": self.duplicate_of,
            "arch": self.arch.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            number=int(data["number"]),
            arch=Architecture.from_dict(data["arch"]),
            metrics={str(k): float(v) for k, v in data["metrics"].items()},
            state=str(data["state"]),
            feasible=bool(data["feasible"]),
            error=data.get("error"),
            duplicate_of=data.get("duplicate_of"),
        )


@dataclass
class SearchResult:
    """All trials of a study and its feasible Pareto front.

    Attributes:
        objectives: what was optimised, in order.
        constraints: bounds a front member must meet.
        trials: every trial of the study (including ones from earlier, resumed runs), by number.
        front: non-dominated feasible complete trials, one per architecture, sorted by the second objective
            ascending (the first if there is only one).
        study_name: the Optuna study name.
        storage: where the study lives (``"memory"``, ``"journal:PATH"`` or a database URL).
    """

    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    trials: list[TrialRecord]
    front: list[TrialRecord]
    study_name: str
    storage: str

    @property
    def n_complete(self) -> int:
        """Number of complete trials."""
        return sum(t.state == "complete" for t in self.trials)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write one row per trial (see :meth:`TrialRecord.to_row`); returns the path."""
        rows = [t.to_row() for t in self.trials]
        columns = ["number", "state", "feasible", *self._metric_columns(), "error", "duplicate_of", "arch"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return atomic_write_text(path, buf.getvalue())

    def _metric_columns(self) -> list[str]:
        names = [o.name for o in self.objectives]
        others = sorted({k for t in self.trials for k in t.metrics} - set(names))
        return [n for n in names if any(n in t.metrics for t in self.trials)] + others

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with schema version, objectives, constraints, trials and front."""
        return {
            "schema_version": RESULT_SCHEMA_VERSION,
            "study_name": self.study_name,
            "storage": self.storage,
            "objectives": [{"name": o.name, "direction": o.direction} for o in self.objectives],
            "constraints": [str(c) for c in self.constraints],
            "trials": [t.to_dict() for t in self.trials],
            "front": [t.to_dict() for t in self.front],
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write :meth:`to_dict` as JSON; :meth:`from_json` reads it back. Returns the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> SearchResult:
        """Read a file written by :meth:`to_json`.

        Raises:
            ConfigError: if the file is not a search result of a known schema version.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema_version") != RESULT_SCHEMA_VERSION:
            raise ConfigError(
                f"{str(path)!r} is not a nasforge search result (schema_version {RESULT_SCHEMA_VERSION}); "
                "write it with SearchResult.to_json"
            )
        return cls(
            objectives=tuple(Objective(o["name"], o["direction"]) for o in data["objectives"]),
            constraints=tuple(parse_constraint(c) for c in data["constraints"]),
            trials=[TrialRecord.from_dict(t) for t in data["trials"]],
            front=[TrialRecord.from_dict(t) for t in data["front"]],
            study_name=str(data["study_name"]),
            storage=str(data["storage"]),
        )


def build_front(records: Iterable[TrialRecord], objectives: Sequence[Objective]) -> list[TrialRecord]:
    """Feasible complete records that no other one dominates, one per architecture.

    The earliest trial of each architecture stands for it. Different architectures with identical objective
    values are all kept. Sorted by the second objective ascending (the first if there is only one), then by
    the first objective and the trial number.
    """
    first_of_arch: dict[Architecture, TrialRecord] = {}
    for rec in sorted(records, key=lambda r: r.number):
        if rec.state == "complete" and rec.feasible and rec.arch not in first_of_arch:
            first_of_arch[rec.arch] = rec
    candidates = list(first_of_arch.values())
    if not candidates:
        return []
    values = np.array([[rec.metrics[o.name] for o in objectives] for rec in candidates], dtype=np.float64)
    front = [candidates[i] for i in pareto_front(values, [o.direction for o in objectives])]
    key_names = [objectives[min(1, len(objectives) - 1)].name, objectives[0].name]
    return sorted(front, key=lambda r: (*(r.metrics[n] for n in key_names), r.number))
