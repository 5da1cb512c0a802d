"""Where Optuna studies live: in memory, in a journal file, or in a database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nasforge.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["MEMORY", "describe_storage", "journal_storage_url", "resolve_storage"]

MEMORY = "memory"
_JOURNAL_PREFIX = "journal:"
_JOURNAL_SUFFIXES = (".log", ".journal")


def journal_storage_url(path: str | os.PathLike[str]) -> str:
    """The storage string for a journal file at ``path`` (``"journal:/abs/path"``), for ``run_search``."""
    return _JOURNAL_PREFIX + str(Path(path).expanduser().resolve())


def _journal_path(storage: str) -> Path | None:
    if storage.startswith(_JOURNAL_PREFIX):
        rest = storage[len(_JOURNAL_PREFIX) :]
        if not rest:
            raise ConfigError(f"storage {storage!r} names no file; write 'journal:PATH'")
        return Path(rest).expanduser()
    if "://" not in storage and storage.endswith(_JOURNAL_SUFFIXES):
        return Path(storage).expanduser()
    return None


def describe_storage(storage: str | os.PathLike[str] | None) -> str:
    """Normalised text of a storage spec: ``"memory"``, ``"journal:ABS_PATH"`` or the database URL.

    Raises:
        ConfigError: if ``storage`` is neither a journal file nor a database URL.
    """
    if storage is None:
        return MEMORY
    text = os.fspath(storage)
    path = _journal_path(text)
    if path is not None:
        return journal_storage_url(path)
    if "://" not in text:
        raise ConfigError(
            f"storage {text!r} is neither a journal file (a path ending in .log or .journal, or 'journal:PATH') "
            "nor a database URL such as 'sqlite:///study.db'; use one of those, or None for in-memory"
        )
    return text


def resolve_storage(storage: str | os.PathLike[str] | None) -> optuna.storages.BaseStorage | str | None:
    """What to hand to ``optuna.create_study(storage=...)`` for a storage spec.

    ``None`` -> in memory; a path ending in ``.log`` / ``.journal`` or ``"journal:PATH"`` -> a
    ``JournalStorage`` on a ``JournalFileBackend`` (its folder is created); any other ``scheme://`` text is
    passed to Optuna as a database URL.
    """
    text = describe_storage(storage)
    if text == MEMORY:
        return None
    if text.startswith(_JOURNAL_PREFIX):
        import optuna
        from optuna.storages.journal import JournalFileBackend

        path = Path(text[len(_JOURNAL_PREFIX) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return text
