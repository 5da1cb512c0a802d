"""Where Optuna studies live: in memory, in a journal file, or in a database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nasforge.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["MEMORY", "describe_storage", "journal_storage_url", "redact_storage", "resolve_storage"]

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
    ``JournalStorage`` on a ``JournalFileBackend`` (its folder is created); any other ``scheme://`` text is a
    database URL, opened here (tables are created on first use) so a missing driver or an unreachable server
    is one clear error before any work starts.

    Raises:
        ConfigError: a malformed spec, a database driver that is not installed, or a database that cannot be
            reached.
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
    return _open_database(text)


def redact_storage(storage: str) -> str:
    """``storage`` with a database URL's password replaced by ``***``, for logs and result files."""
    if "://" not in storage:
        return storage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(storage)
    except ArgumentError:
        return storage
    return url.render_as_string(hide_password=True) if url.password else storage


def _open_database(url: str) -> optuna.storages.RDBStorage:
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    shown = redact_storage(url)
    # pool_pre_ping: a worker of a long search gets a fresh connection after the server or network dropped one.
    engine_kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:
        hint = " pip install 'nasforge[postgres]'" if url.startswith("postgres") else ""
        raise ConfigError(f"storage {shown!r} needs a database driver that is not installed ({exc.__cause__ or exc})"
                          f";{hint or ' install the SQLAlchemy driver for that database'}") from None
    except (SQLAlchemyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot open storage {shown!r}: {first}") from None
