"""The schema migrations: numbered steps recorded in `schema_version`.

A new schema change is a new step appended to MIGRATIONS, never an edit of an old one. The
same steps create and upgrade SQLite and Postgres: write their DDL in the common subset
(`DATETIME` in `_add_columns` is translated for Postgres); on Postgres the run holds a
transaction-level advisory lock, so two processes starting together migrate one after the
other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from services.scheduler.core.state import TERMINAL, Status
from services.scheduler.db import models

log = logging.getLogger(__name__)


def _v1_initial(conn: Connection) -> None:
    SQLModel.metadata.create_all(
        conn,
        tables=[
            t.__table__  # type: ignore[union-attr]
            for t in (models.UserRow, models.TokenRow, models.RunnerRow, models.WorkflowRow,
                      models.EventRow, models.OutputRow)
        ],
    )


def _v2_pending_index(conn: Connection) -> None:
    # Read by services.scheduler.db.pending_queue (one index seek per user with waiting work).
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_workflows_pending "
                      "ON workflows (status, runner_id, priority, user_id, created_at, id)"))


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ... ADD COLUMN for each column the table lacks (step 1 creates tables from
    the current models, so on a new database the columns may already be there)."""
    present = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, ddl in columns.items():
        if name not in present:
            if conn.dialect.name == "postgresql":
                ddl = ddl.replace("DATETIME", "TIMESTAMP WITH TIME ZONE")
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


def _create_tables(conn: Connection, *tables: type[SQLModel]) -> None:
    SQLModel.metadata.create_all(conn, tables=[t.__table__ for t in tables])  # type: ignore[attr-defined]


def _v3_runner_endpoints(conn: Connection) -> None:
    _add_columns(conn, "runners", {"endpoint": "VARCHAR NOT NULL DEFAULT ''",
                                   "headers_json": "VARCHAR NOT NULL DEFAULT '{}'"})


def _v7_workflow_counts(conn: Connection) -> None:
    """Read by WorkflowStore: count_open seeks (user_id, status) for the open statuses only; a
    list orders by (user_id, created_at, id) from the index alone; a list's total without
    filters is the user's row of `workflow_counts`, which triggers keep on every insert and
    delete of a workflow, whoever writes it (so it cannot drift from the table)."""
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_workflows_user_status ON workflows (user_id, status)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_workflows_user_created_id "
                      "ON workflows (user_id, created_at, id)"))
    conn.execute(text("CREATE TABLE IF NOT EXISTS workflow_counts "
                      "(user_id VARCHAR PRIMARY KEY, total BIGINT NOT NULL)"))
    conn.execute(text("DELETE FROM workflow_counts"))
    conn.execute(text("INSERT INTO workflow_counts (user_id, total) "
                      "SELECT user_id, count(*) FROM workflows GROUP BY user_id"))
    bump = ("INSERT INTO workflow_counts (user_id, total) VALUES (NEW.user_id, 1) "
            "ON CONFLICT (user_id) DO UPDATE SET total = workflow_counts.total + 1")
    drop = "UPDATE workflow_counts SET total = total - 1 WHERE user_id = OLD.user_id"
    if conn.dialect.name == "postgresql":
        conn.execute(text(
            "CREATE OR REPLACE FUNCTION workflow_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'INSERT' THEN {bump}; ELSE {drop}; END IF; RETURN NULL; END $$"))
        conn.execute(text("DROP TRIGGER IF EXISTS workflow_counts_keep ON workflows"))
        conn.execute(text("CREATE TRIGGER workflow_counts_keep AFTER INSERT OR DELETE ON workflows "
                          "FOR EACH ROW EXECUTE FUNCTION workflow_counts_keep()"))
    else:
        conn.execute(text(f"CREATE TRIGGER IF NOT EXISTS workflow_counts_insert AFTER INSERT ON workflows "
                          f"BEGIN {bump}; END"))
        conn.execute(text(f"CREATE TRIGGER IF NOT EXISTS workflow_counts_delete AFTER DELETE ON workflows "
                          f"BEGIN {drop}; END"))


def _v8_user_event_numbers(conn: Connection) -> None:
    """Per-user event numbers (services.scheduler.db.event_numbers): workflow_events gets its
    owner and `user_seq`, existing rows numbered per user in (created_at, workflow_id, seq)
    order; `event_numbers` holds each user's last number given out."""
    _add_columns(conn, "workflow_events", {"user_id": "VARCHAR NOT NULL DEFAULT ''",
                                           "user_seq": "BIGINT NOT NULL DEFAULT 0"})
    conn.execute(text(
        "UPDATE workflow_events SET user_id = numbered.user_id, user_seq = numbered.n FROM ("
        "SELECT e.workflow_id, e.seq, w.user_id, ROW_NUMBER() OVER ("
        "PARTITION BY w.user_id ORDER BY e.created_at, e.workflow_id, e.seq) AS n "
        "FROM workflow_events e JOIN workflows w ON w.id = e.workflow_id) AS numbered "
        "WHERE workflow_events.workflow_id = numbered.workflow_id AND workflow_events.seq = numbered.seq"))
    conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS ix_workflow_events_user_seq "
                      "ON workflow_events (user_id, user_seq)"))
    conn.execute(text("CREATE TABLE IF NOT EXISTS event_numbers "
                      "(user_id VARCHAR PRIMARY KEY, last_user_seq BIGINT NOT NULL)"))
    conn.execute(text("DELETE FROM event_numbers"))
    conn.execute(text("INSERT INTO event_numbers (user_id, last_user_seq) "
                      "SELECT user_id, max(user_seq) FROM workflow_events GROUP BY user_id"))


OPEN_STATUSES = [s.value for s in Status if s not in TERMINAL]


def _v10_open_workflow_counts(conn: Connection) -> None:
    """`open_workflow_counts` holds each user's unfinished workflows (a status of
    OPEN_STATUSES), kept by triggers on every insert, delete and status change of a
    workflow, whoever writes it: a create checks the concurrent_workflows limit by reading
    one row, where counting the user's open workflows cost a step per workflow waiting (a
    backlog of 10,000 made every create batch walk 10,000 index entries).
    A change of which statuses are terminal needs a step that rewrites these triggers."""
    listed = ", ".join(f"'{status}'" for status in OPEN_STATUSES)

    def is_open(row: str) -> str:
        return f"{row}.status IN ({listed})"

    def up(row: str) -> str:
        return (f"INSERT INTO open_workflow_counts (user_id, total) VALUES ({row}.user_id, 1) "
                "ON CONFLICT (user_id) DO UPDATE SET total = open_workflow_counts.total + 1")

    def down(row: str) -> str:
        return f"UPDATE open_workflow_counts SET total = total - 1 WHERE user_id = {row}.user_id"

    conn.execute(text("CREATE TABLE IF NOT EXISTS open_workflow_counts "
                      "(user_id VARCHAR PRIMARY KEY, total BIGINT NOT NULL)"))
    conn.execute(text("DELETE FROM open_workflow_counts"))
    conn.execute(text("INSERT INTO open_workflow_counts (user_id, total) "
                      f"SELECT user_id, count(*) FROM workflows WHERE status IN ({listed}) GROUP BY user_id"))
    if conn.dialect.name == "postgresql":
        conn.execute(text(
            "CREATE OR REPLACE FUNCTION open_workflow_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'INSERT' THEN IF {is_open('NEW')} THEN {up('NEW')}; END IF; "
            f"ELSIF TG_OP = 'DELETE' THEN IF {is_open('OLD')} THEN {down('OLD')}; END IF; "
            f"ELSIF {is_open('OLD')} AND NOT {is_open('NEW')} THEN {down('NEW')}; "
            f"ELSIF {is_open('NEW')} AND NOT {is_open('OLD')} THEN {up('NEW')}; "
            "END IF; RETURN NULL; END $$"))
        conn.execute(text("DROP TRIGGER IF EXISTS open_workflow_counts_keep ON workflows"))
        conn.execute(text("CREATE TRIGGER open_workflow_counts_keep AFTER INSERT OR DELETE OR UPDATE OF status "
                          "ON workflows FOR EACH ROW EXECUTE FUNCTION open_workflow_counts_keep()"))
        return
    for name, when, action in [
        ("insert", f"AFTER INSERT ON workflows WHEN {is_open('NEW')}", up("NEW")),
        ("delete", f"AFTER DELETE ON workflows WHEN {is_open('OLD')}", down("OLD")),
        ("finish", f"AFTER UPDATE OF status ON workflows WHEN {is_open('OLD')} AND NOT {is_open('NEW')}", down("NEW")),
        ("reopen", f"AFTER UPDATE OF status ON workflows WHEN {is_open('NEW')} AND NOT {is_open('OLD')}", up("NEW")),
    ]:
        conn.execute(text(f"CREATE TRIGGER IF NOT EXISTS open_workflow_counts_{name} {when} BEGIN {action}; END"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _v1_initial),
    (2, "index of the placement queue", _v2_pending_index),
    (3, "runners registered by endpoint", _v3_runner_endpoints),
    (4, "templates", lambda conn: _create_tables(conn, models.TemplateRow)),
    (5, "token names and revocation", lambda conn: _add_columns(
        conn, "tokens", {"name": "VARCHAR NOT NULL DEFAULT ''", "revoked_at": "DATETIME"})),
    (6, "idempotency keys", lambda conn: _create_tables(conn, models.IdempotencyRow)),
    (7, "per-user workflow counts and list indexes", _v7_workflow_counts),
    (8, "per-user event numbers", _v8_user_event_numbers),
    (9, "webhooks", lambda conn: _create_tables(
        conn, models.WebhookEndpointRow, models.WebhookUserSecretRow, models.WorkflowWebhookRow,
        models.WebhookCursorRow, models.WebhookDeliveryRow, models.WebhookAttemptRow)),
    (10, "per-user open workflow counts", _v10_open_workflow_counts),
]


# pg_advisory_xact_lock key of a migration run ("cfmigrat" as a big-endian int64).
MIGRATION_LOCK_KEY = int.from_bytes(b"cfmigrat", "big") - 2**63


def migrate_schema(conn: Connection) -> None:
    """Runs the steps this database has not had, in order, in the caller's transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # The driver starts no transaction before DDL: take the write lock now (busy_timeout waits).
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT)"))
    done = {row[0] for row in conn.execute(text("SELECT version FROM schema_version"))}
    for version, name, step in MIGRATIONS:
        if version in done:
            continue
        log.info("migrating database to version %d (%s)", version, name)
        step(conn)
        conn.execute(text("INSERT INTO schema_version (version, name) VALUES (:v, :n)"), {"v": version, "n": name})


