"""SQLite only: the writer's group commits run on the event loop's own thread.

Through aiosqlite, BEGIN, each statement, each fetch and COMMIT is a trip of its own to the driver's thread, and
each trip wakes two threads: a claim cost about 7 ms of CPU and a small group commit about 2 ms, more than all
the rest of a task's bookkeeping. The same transactions run here directly take tens of microseconds (WAL with
synchronous=NORMAL: a commit appends to the log and does not wait for the disk).

The loop is never blocked on another process: this connection does not wait for locks (busy_timeout 0), and a
group that meets one is handed back to the writer, which runs it on the engine's connection in aiosqlite's
thread, waiting as long as the store's busy timeout allows. Checkpoints (which fsync) run there too.

Ops are the same coroutines either way: `InlineConnection` offers what they use of an `AsyncConnection`.
Row changes skip SQLAlchemy's per-row work: each statement is compiled once, and its rows go to the driver's
executemany inside the same transaction.
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from batcher.store.changes import Change, RowChange, row_steps
from batcher.store.database import apply_pragmas, is_locked

T = TypeVar("T")
Rows = list[Sequence[Any]]

CHECKPOINT_EVERY = 500  # inline commits between two checkpoints of the log (run off the loop)


class InlineConnection:
    """What a writer op uses of an `AsyncConnection`, over a synchronous connection on the loop's thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> CursorResult[Any]:
        return self._conn.exec_driver_sql(statement, parameters)


class InlineSqlite:
    """`commit(changes)` runs a group in one transaction: their results, or None when another process holds
    the write lock (nothing was written)."""

    def __init__(self, path: str) -> None:
        self._engine = _engine(path)
        self._conn: Connection | None = None
        self._compiled: dict[tuple[int, tuple[str, ...]], _Compiled] = {}
        self.commits = 0  # since the last checkpoint

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> InlineSqlite | None:
        """For a SQLite store in a file (an in-memory database is private to its connection)."""
        path = engine.url.database
        if engine.dialect.name != "sqlite" or not path or path == ":memory:":
            return None
        return cls(path)

    def commit(self, changes: Sequence[Change]) -> list[Any] | None:
        conn = self._connection()
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        # the transaction is the driver's own: a group of row changes alone then never enters SQLAlchemy, and
        # ops see SQLAlchemy's autobegin, which pysqlite leaves to the driver
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if is_locked(e):
                return None
            raise
        results: list[Any] = [None] * len(changes)
        try:
            inline = InlineConnection(conn)
            for i, change in enumerate(changes):
                if not isinstance(change, RowChange):
                    results[i] = _run_inline(change, inline)
            for indexes in row_steps(changes, lambda row: (id(row.stmt), tuple(row.params))):
                rows: list[RowChange] = [changes[i] for i in indexes]  # type: ignore[misc]
                compiled = self._compile(conn.dialect, rows[0])
                values = [compiled.values(r.params) for r in rows]
                changed = _executemany(driver, compiled.sql, values, any(r.fenced for r in rows))
                for i, n in zip(indexes, changed, strict=True):
                    results[i] = n
            if conn.in_transaction():
                conn.commit()  # the driver's commit, and SQLAlchemy's bookkeeping
            if driver.in_transaction:
                driver.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(exc.DBAPIError, sqlite3.Error):
                if conn.in_transaction():
                    conn.rollback()
                if driver.in_transaction:
                    driver.execute("ROLLBACK")
            raise
        self.commits += 1
        return results

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self._engine.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(exc.DBAPIError):
                self._conn.close()
            self._conn = None
        self._engine.dispose()

    def _compile(self, dialect: Dialect, change: RowChange) -> _Compiled:
        key = (id(change.stmt), tuple(change.params))
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = _Compiled.of(change, dialect)
        return found


def _run_inline(op: Callable[[InlineConnection], Coroutine[Any, Any, T]], conn: InlineConnection) -> T:
    """Run an op to its end without letting the loop in: on this connection nothing it awaits suspends."""
    coro = op(conn)
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a writer op awaited something other than its connection")


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A row change's statement as SQL for the driver, and how to lay out its parameters."""

    stmt: object  # held, so that its id is not reused while this entry lives
    sql: str
    row: Callable[[dict[str, Any]], tuple[Any, ...]]  # the positional parameters, in order, from the given ones
    fixed: dict[str, Any]  # values compiled into the statement (literals)
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # the types' bind processing, where any has one

    @classmethod
    def of(cls, change: RowChange, dialect: Dialect) -> _Compiled:
        # as SQLAlchemy itself does on execute: the parameters given decide an INSERT's columns
        compiled: Any = change.stmt.compile(dialect=dialect, column_keys=list(change.params))
        names = tuple(compiled.positiontup)
        fixed: dict[str, Any] = {}
        processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(names):
            bind = compiled.binds[name]
            if bind.expanding:
                raise TypeError(f"a row change cannot expand a parameter list ({name})")
            if name not in change.params:
                if bind.required or callable(bind.value):
                    raise TypeError(f"a row change must give every parameter; {name} is missing")
                fixed[name] = bind.value
            processor = bind.type.bind_processor(dialect)
            if processor is not None:
                processors.append((i, processor))
        return cls(change.stmt, compiled.string, _picker(names), fixed, tuple(processors))

    def values(self, params: dict[str, Any]) -> Sequence[Any]:
        row = self.row({**self.fixed, **params} if self.fixed else params)
        if not self.processors:
            return row
        processed = list(row)
        for i, process in self.processors:
            processed[i] = process(processed[i])
        return processed


def _picker(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The values of `names`, in order (itemgetter: in C; given one name it returns the value, not a tuple)."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    return lambda params: tuple(params[name] for name in names)


def _executemany(driver: sqlite3.Connection, sql: str, rows: Rows, fenced: bool) -> list[int]:
    """One statement's rows; how many rows each changed."""
    if len(rows) == 1:
        return [driver.execute(sql, rows[0]).rowcount]
    if not fenced:
        driver.executemany(sql, rows)
        return [1] * len(rows)
    driver.execute("SAVEPOINT fenced")
    if driver.executemany(sql, rows).rowcount == len(rows):
        driver.execute("RELEASE fenced")
        return [1] * len(rows)
    # some fenced row no longer matched (a claim was taken over): redo them one by one to learn which
    driver.execute("ROLLBACK TO fenced")
    driver.execute("RELEASE fenced")
    return [driver.execute(sql, row).rowcount for row in rows]


def _engine(path: str) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # `commit` begins each transaction itself
        apply_pragmas(dbapi_conn)
        dbapi_conn.execute("PRAGMA busy_timeout=0")  # never wait on the loop: the writer waits off it
        dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints fsync: the writer runs them off the loop

    return engine
