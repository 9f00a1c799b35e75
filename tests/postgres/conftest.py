"""A Postgres for the session (tests/postgres/server.py) and a fresh database per test.

Skipped, with the reason, only when Debian's postgresql package is not installed (.ci/run
installs it)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.postgres.server import Postgres, find_bin_dir


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("Postgres binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    try:
        pg = Postgres.start(bin_dir)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"Postgres did not start: {err.stderr.decode(errors='replace')}") from err
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """The SQLAlchemy URL of a new, empty database."""
    return postgres.url(postgres.create_database())
