"""The run folder: one layout for every command that writes one (``nasforge run``, ``train``, ``search``,
``prune``), and the one place that knows its file names.

Layout (a command writes the parts it makes)::

    RUN/
      config.yaml          nasforge run: the resolved config         train.json   nasforge train: what was asked
      checkpoints/         last.pt (every epoch), phase-<i>-<name>.pt, supernet.pt (the final supernet)
      train_history.json   per-epoch loss and validation accuracy
      study.journal        the Optuna study;  search_job.json  what nasforge search was asked
      trials.csv, search.json, pareto.csv, pareto.json, pareto.png
      subnets/<k>/         arch.json, model.onnx, metrics.json (+ compressed/)
      report.md, summary.json

Folders written before this layout keep loading: ``nasforge train`` used to leave its final supernet at
``RUN/supernet.pt`` (:meth:`RunFolder.find_supernet` looks there too).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError
from nasforge.runlock import run_lock

__all__ = ["RunFolder", "RunSource", "resolve_run_source"]


@dataclass(frozen=True)
class RunFolder:
    """Paths and records of one run folder at ``root`` (nothing is created until a command writes)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # -- files -------------------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved config of ``nasforge run``."""
        return self.root / "config.yaml"

    @property
    def train_record(self) -> Path:
        """``train.json``: what ``nasforge train`` was asked."""
        return self.root / "train.json"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: last.pt, per-phase files and the final supernet."""
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """``checkpoints/last.pt``, written every epoch (and every ``checkpoint_every`` steps)."""
        return self.checkpoints / "last.pt"

    @property
    def supernet(self) -> Path:
        """``checkpoints/supernet.pt``: where a command writes the final supernet."""
        return self.checkpoints / "supernet.pt"

    @property
    def legacy_supernet(self) -> Path:
        """``supernet.pt`` at the top: where ``nasforge train`` wrote it before the one layout."""
        return self.root / "supernet.pt"

    @property
    def study(self) -> Path:
        """``study.journal``: the Optuna study, unless another storage was named."""
        return self.root / "study.journal"

    @property
    def search_record(self) -> Path:
        """``search_job.json``: what ``nasforge search`` was asked (``--resume`` continues it)."""
        return self.root / "search_job.json"

    @property
    def trials(self) -> Path:
        """``trials.csv``: every trial of the search."""
        return self.root / "trials.csv"

    @property
    def subnets(self) -> Path:
        """``subnets/``: one folder per exported subnet."""
        return self.root / "subnets"

    def subnet(self, k: int | str) -> Path:
        """``subnets/<k>/``."""
        return self.subnets / str(k)

    # -- state -------------------------------------------------------------------------------------------------
    def find_supernet(self) -> Path | None:
        """The final supernet of this folder (the one layout first, then the old ``train`` layout), or None."""
        for candidate in (self.supernet, self.legacy_supernet):
            if candidate.is_file():
                return candidate
        return None

    def trained(self) -> bool:
        """Whether training finished (a final supernet exists)."""
        return self.find_supernet() is not None

    def training_started(self) -> bool:
        """Whether any checkpoint was written (training settings are then fixed)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.pt"))

    def search_started(self) -> bool:
        """Whether a search left its study or trials here."""
        return self.study.exists() or self.trials.exists()

    def recorded_data(self) -> tuple[str | None, int | None]:
        """``(data spec, image size)`` recorded by ``train`` (train.json) or ``run`` (config.yaml); Nones if neither
        is there or readable."""
        if self.train_record.is_file():
            try:
                record = json.loads(self.train_record.read_text(encoding="utf-8"))
                return record.get("data"), record.get("image_size")
            except (OSError, json.JSONDecodeError, AttributeError):
                return None, None
        if self.config.is_file():
            import yaml

            try:
                data = (yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}).get("data", {})
                return data.get("spec"), data.get("image_size")
            except (OSError, yaml.YAMLError, AttributeError):
                return None, None
        return None, None

    @contextmanager
    def lock(self, command: str) -> Iterator[Path]:
        """Hold the folder's writer lock (:func:`nasforge.runlock.run_lock`) for ``command``."""
        with run_lock(self.root, command) as path:
            yield path


@dataclass(frozen=True)
class RunSource:
    """What a command that reads a trained supernet was pointed at.

    Attributes:
        checkpoint: the supernet checkpoint file.
        data: the data spec the run recorded (None for a bare checkpoint file).
        image_size: the image size the run recorded (None if unknown).
        arch_file: ``arch.json`` when the source is an exported subnet's folder ``RUN/subnets/<k>``.
        folder: the run folder, if the source is one.
    """

    checkpoint: Path
    data: str | None = None
    image_size: int | None = None
    arch_file: Path | None = None
    folder: RunFolder | None = None

    def as_tuple(self) -> tuple[Path, str | None, int | None]:
        """``(checkpoint, data, image_size)``."""
        return self.checkpoint, self.data, self.image_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"checkpoint": str(self.checkpoint), "data": self.data, "image_size": self.image_size,
                "arch_file": None if self.arch_file is None else str(self.arch_file)}


def resolve_run_source(source: str | Path, *, subnet_folders: bool = False) -> RunSource:
    """A checkpoint file, a run folder, or (with ``subnet_folders``) an exported subnet's folder ``RUN/subnets/<k>``.

    Raises:
        ConfigError: nothing usable is at ``source`` (one line saying what was looked for).
    """
    path = Path(source)
    if subnet_folders and path.is_dir() and (path / "arch.json").is_file() and not (path / "supernet.pt").is_file():
        run = resolve_run_source(path.parent.parent)  # RUN/subnets/K
        return RunSource(run.checkpoint, run.data, run.image_size, path / "arch.json", run.folder)
    if path.is_dir():
        folder = RunFolder(path)
        checkpoint = folder.find_supernet()
        if checkpoint is None:
            raise ConfigError(f"{path} holds no checkpoints/supernet.pt (nor supernet.pt); train first or pass the "
                              "file")
        data, size = folder.recorded_data()
        return RunSource(checkpoint, data, size, None, folder)
    if not path.is_file():
        raise ConfigError(f"no checkpoint or run folder at {path}")
    return RunSource(path)
