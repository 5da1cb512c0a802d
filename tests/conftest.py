"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import uuid

import pytest

POSTGRES_ENV = "NASFORGE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of the PostgreSQL server that ``.ci/postgres.sh`` started on 127.0.0.1; skips when there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"no PostgreSQL server: {POSTGRES_ENV} is unset (`source .ci/postgres.sh` starts one)")
    try:
        import psycopg
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install 'nasforge[postgres]'")
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at {url} is unreachable: {str(exc).strip().splitlines()[0]}")
    return url


@pytest.fixture
def postgres_study(postgres_server: str) -> tuple[str, str]:
    """``(storage URL, fresh study name)`` on the test PostgreSQL server."""
    return postgres_server, f"t{uuid.uuid4().hex[:12]}"
