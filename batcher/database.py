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
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from batcher.errors import StoreBusyError, StoreError, StoreFullError, StoreReadOnlyError

T = TypeVar("T")
Op = Callable[[AsyncConnection], Awaitable[Any]]

BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another process's transaction on SQLite
MAX_GROUP = 500  # changes at most in one group commit


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
    engine = create_async_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
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
            f"busy_timeout={BUSY_TIMEOUT_MS}",
            "foreign_keys=ON",
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


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
        if "full" in text:
            return StoreFullError(f"{where}: the disk holding the job store is full; free space, then resume")
    if "no space" in text or "disk full" in text:
        return StoreFullError(f"{where}: the disk holding the job store is full; free space, then resume")
    return StoreError(f"{where}: {type(e.orig).__name__}: {e.orig}")


class Writer:
    """Runs queued changes in group commits on one connection; each caller learns its own result."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # (op, future or None, alone): an op marked alone gets a transaction of its own (a long import that
        # may roll back must not take unrelated changes down with it).
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[Any] | None, bool]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._pending: tuple[Op, asyncio.Future[Any] | None, bool] | None = None

    async def run(self, op: Callable[[AsyncConnection], Awaitable[T]], *, alone: bool = False) -> T:
        """Queue `op` and wait for its commit."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(op, fut, alone)
        return await fut

    def post(self, op: Op) -> None:
        """Queue `op` for the next commit without waiting (append-only records)."""
        self._put(op, None, False)

    def _put(self, op: Op, fut: asyncio.Future[Any] | None, alone: bool) -> None:
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

    async def _loop(self) -> None:
        while True:
            first = self._pending if self._pending is not None else await self._queue.get()
            self._pending = None
            batch = [(first[0], first[1])]
            while not first[2] and len(batch) < MAX_GROUP and not self._queue.empty():
                op, fut, alone = self._queue.get_nowait()
                if alone:
                    self._pending = (op, fut, alone)
                    break
                batch.append((op, fut))
            results: list[Any] = []
            try:
                with translated("writing the job store"):
                    async with self._engine.begin() as conn:
                        for op, _ in batch:
                            results.append(await op(conn))
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
