"""Storage specs: journal files, database URLs, and one-line errors for the ones that cannot be opened."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest

from nasforge.errors import ConfigError
from nasforge.nas import run_search
from nasforge.nas._storage import describe_storage, redact_storage, resolve_storage
from nasforge.supernets.arch import SearchSpace


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_journal_and_sqlite_specs(tmp_path: Path) -> None:
    assert describe_storage(tmp_path / "a.journal") == f"journal:{tmp_path / 'a.journal'}"
    assert isinstance(resolve_storage(tmp_path / "sub" / "a.log"), optuna.storages.JournalStorage)
    assert (tmp_path / "sub").is_dir()
    assert isinstance(resolve_storage(f"sqlite:///{tmp_path / 'a.db'}"), optuna.storages.RDBStorage)
    with pytest.raises(ConfigError, match="neither a journal file"):
        describe_storage(tmp_path / "a.txt")


def test_password_is_redacted() -> None:
    assert redact_storage("postgresql://me:s3cret@db.lan:5432/nas") == "postgresql://me:***@db.lan:5432/nas"
    assert redact_storage("postgresql://me@db.lan/nas") == "postgresql://me@db.lan/nas"
    assert redact_storage("journal:/tmp/x.journal") == "journal:/tmp/x.journal"


def test_unreachable_database_is_one_clear_error(toy_space: SearchSpace, metrics_fn) -> None:
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install 'nasforge[postgres]'")
    url = f"postgresql://me:s3cret@127.0.0.1:{_closed_port()}/nas"
    with pytest.raises(ConfigError) as info:
        run_search(toy_space, metrics_fn, n_trials=2, storage=url)
    text = str(info.value)
    assert "cannot open storage" in text and "s3cret" not in text and "***" in text and "\n" not in text


def test_missing_driver_names_what_to_install(toy_space: SearchSpace, metrics_fn) -> None:
    pytest.importorskip("sqlalchemy")
    if __import__("importlib").util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here")
    with pytest.raises(ConfigError, match="driver that is not installed"):
        run_search(toy_space, metrics_fn, n_trials=2, storage="mysql://u@127.0.0.1/x")


def test_postgres_study_is_shared_and_resumable(postgres_study: tuple[str, str], toy_space: SearchSpace,
                                                metrics_fn) -> None:
    url, name = postgres_study
    first = run_search(toy_space, metrics_fn, n_trials=5, sampler="tpe", storage=url, study_name=name,
                       constraints=["macs<=6e7"])
    assert first.n_complete == 5 and first.storage == url
    again = run_search(toy_space, metrics_fn, n_trials=8, sampler="tpe", storage=url, study_name=name,
                       constraints=["macs<=6e7"])
    assert again.n_complete == 8 and [t.number for t in again.trials] == list(range(8))
    assert all(t.metrics["macs"] <= 6e7 for t in again.front)
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 8 and all(t.constraints is not None for t in study.trials)
