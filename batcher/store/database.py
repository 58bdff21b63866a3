"""Opening a store's engine, and the one writer every change goes through.

SQLite allows one writer at a time whatever the pool size, and a deferred transaction that reads then writes
fails with SQLITE_BUSY at once, ignoring busy_timeout. So (NOTES.md): WAL, BEGIN IMMEDIATE for every
transaction, and in each process a single writer task that coalesces the changes queued while the previous
commit ran into one transaction ("group commit"). A caller that awaits a write knows it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable

from batcher.errors import StoreBusyError, StoreError, StoreFullError, StoreReadOnlyError

T = TypeVar("T")
Op = Callable[[AsyncConnection], Awaitable[Any]]

BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another process's transaction on SQLite
BUSY_TIMEOUT_ENV = "BATCHER_BUSY_TIMEOUT_MS"  # overrides it (tests make a locked store fail fast)
CACHE_KIB = 65_536  # SQLite page cache per connection, KiB
MAX_GROUP = 500  # changes at most in one group commit
FULL_BELOW_BYTES = 64 * 1024  # a disk with less free space than this counts as full when SQLite reports I/O errors

# Folders of the SQLite stores this process opened. SQLite reports a full disk as SQLITE_FULL when a write fails,
# but as a plain "disk I/O error" when it cannot grow its shared-memory file; these are where to look then.
_sqlite_dirs: set[Path] = set()


def database_url(db: str) -> str:
    """`--db` as given (a path or a URL) → an async SQLAlchemy URL."""
    if "://" not in db:
        return f"sqlite+aiosqlite:///{Path(db).expanduser().resolve()}"
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if db.startswith(plain):
            return driver + db[len(plain) :]
    return db


def redacted(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def _sqlite_engine(url: str) -> AsyncEngine:
    path = make_url(url).database
    if path and path != ":memory:":
        _create_private(Path(path))
        _sqlite_dirs.add(Path(path).parent)
    busy_ms = busy_timeout_ms()
    engine = create_async_engine(url, connect_args={"timeout": busy_ms / 1000})
    synchronous = os.environ.get("BATCHER_SQLITE_SYNC", "NORMAL").upper()
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        synchronous = "NORMAL"

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event below emit BEGIN itself
        cur = dbapi_conn.cursor()
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={synchronous}",
            f"busy_timeout={busy_ms}",
            "foreign_keys=ON",
            # a task's key is a hash: a million inserts land all over its index, which SQLite's default 2 MB
            # page cache turns into re-reads; 64 MB holds it (the cache fills only as far as it is used)
            f"cache_size=-{CACHE_KIB}",
            "temp_store=MEMORY",
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def busy_timeout_ms() -> int:
    """Milliseconds a write waits for a lock held by another process: BATCHER_BUSY_TIMEOUT_MS or the default."""
    raw = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    return int(raw) if raw.isdigit() else BUSY_TIMEOUT_MS


def _create_private(path: Path) -> None:
    """Create the store file readable by its owner only, before SQLite creates it with the umask's mode."""
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except PermissionError as e:
        raise StoreReadOnlyError(f"cannot create the job store {path}: {e.strerror}") from None
    except OSError as e:
        raise StoreError(f"cannot create the job store {path}: {e.strerror}") from None


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    """Turn driver errors into store errors a user can act on."""
    try:
        yield
    except exc.DBAPIError as e:
        raise store_error(e, where) from None


def store_error(e: exc.DBAPIError, where: str) -> StoreError:
    text = str(e.orig).lower()
    if isinstance(e.orig, sqlite3.OperationalError) or "sqlite" in type(e.orig).__module__:
        if "locked" in text or "busy" in text:
            return StoreBusyError(f"{where}: the job store is locked by another process; try again later")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return StoreReadOnlyError(f"{where}: the job store is read-only or cannot be opened ({e.orig})")
        if "full" in text or ("disk i/o error" in text and _a_store_disk_is_full()):
            return StoreFullError(f"{where}: the disk holding the job store is full; free space, then resume")
    if "no space" in text or "disk full" in text:
        return StoreFullError(f"{where}: the disk holding the job store is full; free space, then resume")
    return StoreError(f"{where}: {type(e.orig).__name__}: {e.orig}")


def _a_store_disk_is_full() -> bool:
    for folder in _sqlite_dirs:
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        free_blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
        if free_blocks * st.f_frsize < FULL_BELOW_BYTES:
            return True
    return False


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row's change by a prepared statement. The writer runs all changes of one statement in a group as a
    single executemany (one trip to the driver's thread instead of one per row)."""

    stmt: Executable
    params: dict[str, Any]
    fenced: bool = False  # must change exactly one row; the caller learns the row count either way


Change = Op | RowChange


class Writer:
    """Runs queued changes in group commits on one connection; each caller learns its own result."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # (op, future or None, alone): an op marked alone gets a transaction of its own (a long import that
        # may roll back must not take unrelated changes down with it).
        self._queue: asyncio.Queue[tuple[Change, asyncio.Future[Any] | None, bool]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._pending: tuple[Change, asyncio.Future[Any] | None, bool] | None = None
        self._conn: AsyncConnection | None = None  # the writer's own connection, kept open between groups
        self.groups = 0  # transactions committed, and the changes in them (for benchmarks)
        self.ops = 0

    async def run(self, op: Callable[[AsyncConnection], Awaitable[T]], *, alone: bool = False) -> T:
        """Queue `op` and wait for its commit."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(op, fut, alone)
        return await fut

    async def change(self, row: RowChange) -> int:
        """Queue a row change and wait for its commit; returns the rows it changed."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._put(row, fut, False)
        return await fut

    def post(self, op: Change) -> None:
        """Queue a change for the next commit without waiting (append-only records)."""
        self._put(op, None, False)

    def _put(self, op: Change, fut: asyncio.Future[Any] | None, alone: bool) -> None:
        if self._failure is not None:
            raise self._failure
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher-store-writer")
        self._queue.put_nowait((op, fut, alone))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""

        async def nothing(_: AsyncConnection) -> None:
            return None

        if self._task is not None or not self._queue.empty():
            await self.run(nothing)

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await self.flush()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(BaseException):
                await self._conn.close()
            self._conn = None

    async def _loop(self) -> None:
        while True:
            first = self._pending if self._pending is not None else await self._queue.get()
            self._pending = None
            if self._queue.empty():
                await asyncio.sleep(0)  # one turn of the loop: changes made ready by the same wake-up join in
            batch = [(first[0], first[1])]
            while not first[2] and len(batch) < MAX_GROUP and not self._queue.empty():
                op, fut, alone = self._queue.get_nowait()
                if alone:
                    self._pending = (op, fut, alone)
                    break
                batch.append((op, fut))
            self.groups += 1
            self.ops += len(batch)
            results: list[Any] = [None] * len(batch)
            try:
                with translated("writing the job store"):
                    if self._conn is None or self._conn.closed or self._conn.invalidated:
                        self._conn = await self._engine.connect()
                    async with self._conn.begin():
                        await _apply(self._conn, [op for op, _ in batch], results)
            except BaseException as e:  # the whole group rolled back: every waiter learns why
                if isinstance(e, asyncio.CancelledError):
                    for _, fut in batch:
                        if fut is not None and not fut.done():
                            fut.cancel()
                    raise
                if not any(fut is not None for _, fut in batch):
                    self._failure = e  # nobody waits for this group: fail the next caller instead
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(result)


async def _apply(conn: AsyncConnection, changes: list[Change], results: list[Any]) -> None:
    """Run one group's changes: callables in order, then each prepared statement's rows as one executemany."""
    by_stmt: dict[int, list[int]] = {}
    for i, change in enumerate(changes):
        if isinstance(change, RowChange):
            by_stmt.setdefault(id(change.stmt), []).append(i)
        else:
            results[i] = await change(conn)
    for indexes in by_stmt.values():
        rows = [changes[i] for i in indexes]
        stmt = rows[0].stmt  # type: ignore[union-attr]
        params = [r.params for r in rows]  # type: ignore[union-attr]
        if len(rows) == 1:
            results[indexes[0]] = (await conn.execute(stmt, params[0])).rowcount
            continue
        fenced = any(r.fenced for r in rows)  # type: ignore[union-attr]
        if not fenced:
            await conn.execute(stmt, params)
            for i in indexes:
                results[i] = 1
            continue
        savepoint = await conn.begin_nested()
        changed = (await conn.execute(stmt, params)).rowcount
        if changed == len(rows):
            await savepoint.commit()
            for i in indexes:
                results[i] = 1
            continue
        # some fenced row no longer matched (a claim was taken over): redo them one by one to learn which
        await savepoint.rollback()
        for i, p in zip(indexes, params, strict=True):
            results[i] = (await conn.execute(stmt, p)).rowcount
