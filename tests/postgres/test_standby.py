"""Two scheduler processes on one Postgres, without the rest of the suite: what each of them
says on gRPC health when the active one loses its lock's connection, and when a waiting
standby is told to stop."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from services.devrun import Suite, free_port, grpc_health
from services.scheduler.standby import LOCK_KEY
from tests.integration.fleet import wait_for
from tests.postgres.server import Postgres

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def pair(tmp_path: Path, postgres: Postgres) -> Iterator[tuple[Suite, str]]:
    """An active scheduler ("scheduler") and its standby ("scheduler-standby"); and the database."""
    database = postgres.create_database()
    suite = Suite(var_dir=tmp_path / "var", scheduler_port=free_port(), standby_port=free_port(),
                  storage_port=free_port(), gateway_port=free_port(),
                  extra_env={"SCHEDULER_DATABASE_URL": postgres.url(database)})
    try:
        suite.start("scheduler")
        suite.wait_ready("scheduler")
        suite.start("scheduler-standby")
        suite.wait_ready("scheduler-standby")
        yield suite, database
    finally:
        suite.down()
        for log in sorted(suite.var_dir.glob("*.log")):
            print(f"\n--- {log.name} (tail) ---\n" + "\n".join(log.read_text().splitlines()[-10:]))


def health(port: int | None) -> int | None:
    return grpc_health(f"127.0.0.1:{port}")


def psql(postgres: Postgres, database: str, sql: str) -> str:
    return subprocess.run([str(postgres.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U",
                           "postgres", "-d", database, "-tA", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_an_active_scheduler_whose_lock_connection_breaks_stops_and_the_standby_takes_over(
    pair: tuple[Suite, str], postgres: Postgres
) -> None:
    suite, database = pair
    assert (health(suite.scheduler_port), health(suite.standby_port)) == (SERVING, NOT_SERVING)
    # Split the advisory lock key into the two 32-bit halves pg_locks shows.
    key = LOCK_KEY & 0xFFFFFFFFFFFFFFFF
    holder = (f"SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
              f"AND classid = {key >> 32} AND objid = {key & 0xFFFFFFFF}")
    assert psql(postgres, database, f"SELECT count(*) FROM ({holder}) h") == "1"

    psql(postgres, database, f"SELECT pg_terminate_backend(pid) FROM ({holder}) h")

    # The old active one can no longer know it is alone: it stops (status 1, to be restarted as
    # a standby), and the standby serves.
    assert suite.procs["scheduler"].wait(15) == 1
    wait_for(lambda: health(suite.standby_port) == SERVING, 10, "the standby SERVING")
    assert psql(postgres, database, f"SELECT count(*) FROM ({holder}) h") == "1"


def test_a_waiting_standby_stops_at_once_on_sigterm_and_the_active_one_keeps_serving(
    pair: tuple[Suite, str]
) -> None:
    suite, _ = pair
    started = time.monotonic()
    suite.procs["scheduler-standby"].send_signal(signal.SIGTERM)
    assert suite.procs["scheduler-standby"].wait(10) == 0
    assert time.monotonic() - started < 5
    assert health(suite.standby_port) is None  # no longer listening
    assert health(suite.scheduler_port) == SERVING
