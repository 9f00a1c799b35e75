"""Core statements run straight on the driver's cursor: the group commit's hot statements
(db/changes.py, db/event_numbers.py) and the placement batch's reads (db/pending_queue.py),
without SQLAlchemy's per-execution work.

Through `Connection.execute` a cached statement costs ~60-130 us of Python on top of SQLite's
own ~10 us (execution context, parameter and result processing, an expanding IN's
post-compile step, the result object), and every workflow change runs five. A
`DriverStatement` is compiled by SQLAlchemy once per dialect and shape, so it sends the SQL
Core would send (Postgres bind casts and FOR UPDATE included); it applies the column types'
own bind and result processors, so values are stored and read as through Core (SQLite's
DATETIME text, its 0/1 booleans); it runs on the Connection's DBAPI connection, inside the
Connection's transaction. Driver errors are raised as `Connection.execute` raises them: as
SQLAlchemy's `DBAPIError` subclasses, the connection invalidated on a disconnect.

Its statement is built by a function of the shape, e.g. the number of ids of an IN list
(`in_list`, one bind each) or the columns an UPDATE sets; each shape is compiled once
(0.5-4 ms).
It must bind every value it needs: a column default filled in by SQLAlchemy's execution
(an INSERT leaving out a column with a default) is refused when compiled.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import bindparam
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnClause
from sqlalchemy.sql.selectable import SelectBase

Processor = Callable[[Any], Any]


def in_list(column: ColumnClause[Any], n: int) -> list[BindParameter[Any]]:
    """Binds for `column IN (...)` of n values, named by `listed`."""
    return [bindparam(f"{column.name}_{i}", type_=column.type) for i in range(n)]


def listed(column: ColumnClause[Any], values: Sequence[Any]) -> tuple[dict[str, Any], int]:
    """The parameters of `in_list(column, n)` holding `values` (one or more), and n: their
    number rounded up to a power of two, the last value repeated (harmless in an IN), so that
    a statement is compiled for at most 9 lengths up to the group commit's 256, not for each."""
    n = 1 << max(0, len(values) - 1).bit_length()
    padded = [*values, *[values[-1]] * (n - len(values))]
    return {f"{column.name}_{i}": value for i, value in enumerate(padded)}, n


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the binds in positional order (a name may repeat)
    binds: tuple[Processor | None, ...]
    columns: tuple[str, ...]  # the columns a SELECT (or a text() given its `.columns`) gives back
    results: tuple[tuple[int, str, Processor], ...]  # (position, name, processor) of those that have one
    # The values in one C call, then the few binds with a processor (SQLite's DATETIME): a
    # Python step per bind was most of the group commit's parameter work.
    getter: Callable[[Mapping[str, Any]], Any] | None = field(init=False)  # None: fewer than 2 binds
    processed: tuple[tuple[int, Processor], ...] = field(init=False)  # (position, processor)

    def __post_init__(self) -> None:
        object.__setattr__(self, "getter", operator.itemgetter(*self.names) if len(self.names) > 1 else None)
        object.__setattr__(self, "processed", tuple((i, b) for i, b in enumerate(self.binds) if b is not None))

    def parameters(self, params: Mapping[str, Any]) -> list[Any]:
        values = list(self.getter(params)) if self.getter is not None else [params[name] for name in self.names]
        for i, bind in self.processed:
            values[i] = bind(values[i])
        return values


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    if compiled.insert_prefetch or compiled.update_prefetch:
        raise ValueError(f"{statement}: leaves a column default to the execution; bind every column")
    names = tuple(compiled.positiontup or ())
    binds = tuple(compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names)
    selected = list(statement.selected_columns) if isinstance(statement, SelectBase) else []
    results = tuple((i, c.name, processor) for i, c in enumerate(selected)
                    if (processor := c.type.dialect_impl(dialect).result_processor(dialect, None)) is not None)
    return _Compiled(compiled.string, names, binds, tuple(c.name for c in selected), results)


class DriverStatement:
    """A statement, `build(*shape)`, run on the DBAPI cursor of a Connection."""

    def __init__(self, build: Callable[..., ClauseElement]) -> None:
        self._build = build
        self._compiled: dict[tuple[object, ...], _Compiled] = {}

    def rows(self, conn: Connection, params: Mapping[str, Any], *shape: Hashable) -> list[dict[str, Any]]:
        """The rows a SELECT finds, as {column name: value}."""
        compiled = self._for(conn, shape)
        found = self._run(conn, compiled, compiled.parameters(params), many=False)
        rows = []
        for values in found:
            row = dict(zip(compiled.columns, values, strict=True))
            for i, name, processor in compiled.results:
                row[name] = processor(values[i])
            rows.append(row)
        return rows

    def scalar(self, conn: Connection, params: Mapping[str, Any], *shape: Hashable) -> Any:
        """The first column of the first row the statement returns (e.g. by RETURNING)."""
        compiled = self._for(conn, shape)
        return self._run(conn, compiled, compiled.parameters(params), many=False)[0][0]

    def execute(self, conn: Connection, params: Mapping[str, Any], *shape: Hashable) -> None:
        compiled = self._for(conn, shape)
        self._run(conn, compiled, compiled.parameters(params), many=False)

    def execute_many(self, conn: Connection, params: Sequence[Mapping[str, Any]], *shape: Hashable) -> None:
        """Once per parameter set, in one call of the driver (`executemany`)."""
        compiled = self._for(conn, shape)
        self._run(conn, compiled, [compiled.parameters(p) for p in params], many=True)

    def _for(self, conn: Connection, shape: tuple[Hashable, ...]) -> _Compiled:
        key: tuple[object, ...] = (type(conn.dialect), conn.dialect.paramstyle, *shape)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(self._build(*shape), conn.dialect)
        return compiled

    @staticmethod
    def _run(conn: Connection, compiled: _Compiled, parameters: Any, *, many: bool) -> list[Any]:
        dbapi_conn = conn.connection
        dialect = conn.dialect
        cursor = dbapi_conn.cursor()
        try:
            if many:
                cursor.executemany(compiled.sql, parameters)
                return []
            cursor.execute(compiled.sql, parameters)
            return list(cursor.fetchall()) if cursor.description is not None else []
        except dialect.loaded_dbapi.Error as err:
            disconnected = dialect.is_disconnect(err, dbapi_conn.dbapi_connection, cursor)
            if disconnected:
                conn.invalidate(err)
            raise DBAPIError.instance(compiled.sql, parameters, err, dialect.loaded_dbapi.Error,
                                      connection_invalidated=disconnected, dialect=dialect) from err
        finally:
            cursor.close()
