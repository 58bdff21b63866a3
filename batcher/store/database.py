"""Opening a store's engine, and turning driver errors into errors a user can act on.

SQLite allows one writer at a time whatever the pool size, and a deferred transaction that reads then writes
fails with SQLITE_BUSY at once, ignoring busy_timeout. So: WAL and BEGIN IMMEDIATE for every
transaction; `writer.Writer` is the one writer of each process.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from batcher.errors import StoreBusyError, StoreError, StoreFullError, StoreReadOnlyError

BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another process's transaction on SQLite
BUSY_TIMEOUT_ENV = "BATCHER_BUSY_TIMEOUT_MS"  # overrides it (tests make a locked store fail fast)
# SQLite's page cache per connection, KiB. A run's reads and writes touch the pages of its tasks in flight, the
# claim index's head, or scan in order: a few MB serve them, and a store has several connections (the writer's,
# reads, the inline one). An import inserts keys that are hashes all over the unique index: below 64 MB of cache
# a million of them turn into re-reads, so an import's transaction has that much while it lasts.
CACHE_KIB = 8_192
IMPORT_CACHE_KIB = 65_536
PRAGMA_RETRY_FIRST_S, PRAGMA_RETRY_MAX_S = 0.002, 0.1  # pauses between tries of a pragma the lock refused
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


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store's URL (`database_url`'s); None for another engine or an in-memory store."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).absolute()


def redacted(url: str) -> str:
    """The URL with any password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def create_engine(url: str, *, create: bool = True) -> AsyncEngine:
    """`create`: a SQLite file that is not there is created (owner-only); else the caller checked it is there."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, create)
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def _sqlite_engine(url: str, create: bool = True) -> AsyncEngine:
    path = make_url(url).database
    if path and path != ":memory:":
        if create:
            _create_private(Path(path))
        _sqlite_dirs.add(Path(path).parent)
    busy_ms = busy_timeout_ms()
    engine = create_async_engine(url, connect_args={"timeout": busy_ms / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event below emit BEGIN itself
        apply_pragmas(dbapi_conn)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def sqlite_pragmas() -> list[str]:
    """What every connection to a SQLite store sets first."""
    synchronous = os.environ.get("BATCHER_SQLITE_SYNC", "NORMAL").upper()
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        synchronous = "NORMAL"
    return [
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={synchronous}",
        f"PRAGMA busy_timeout={busy_timeout_ms()}",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA cache_size=-{CACHE_KIB}",
        "PRAGMA temp_store=MEMORY",
    ]


def apply_pragmas(dbapi_conn: Any) -> None:
    """Set `sqlite_pragmas()` on a new connection (sqlite3's own, or SQLAlchemy's adapter of aiosqlite's).

    When processes open a new, empty store at the same moment, each turns it to WAL, and SQLite may answer one of
    them "database is locked" at once, without waiting on the busy timeout (two runs started together on a new
    store): such a pragma is tried again, a few milliseconds later, until the busy timeout has passed."""
    deadline = time.monotonic() + busy_timeout_ms() / 1000
    cur = dbapi_conn.cursor()
    try:
        for pragma in sqlite_pragmas():
            pause = PRAGMA_RETRY_FIRST_S
            while True:
                try:
                    cur.execute(pragma)
                    break
                except sqlite3.OperationalError as e:
                    if not is_locked(e) or time.monotonic() + pause > deadline:
                        raise
                time.sleep(pause)  # the first open of a store only; the race it waits out lasts milliseconds
                pause = min(pause * 2, PRAGMA_RETRY_MAX_S)
    finally:
        cur.close()


def is_locked(e: BaseException | None) -> bool:
    """Is `e` SQLite saying that another connection holds a lock?"""
    return isinstance(e, sqlite3.OperationalError) and e.sqlite_errorcode in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


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
        raise store_error(e.orig if e.orig is not None else e, where) from None
    except sqlite3.Error as e:  # from the row writer's own connection
        raise store_error(e, where) from None


def store_error(orig: BaseException, where: str) -> StoreError:
    text = str(orig).lower()
    if isinstance(orig, sqlite3.OperationalError) or "sqlite" in type(orig).__module__:
        if "locked" in text or "busy" in text:
            return StoreBusyError(f"{where}: the job store is locked by another process; try again later")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return StoreReadOnlyError(f"{where}: the job store is read-only or cannot be opened ({orig})")
        if "full" in text or ("disk i/o error" in text and _a_store_disk_is_full()):
            return StoreFullError(f"{where}: the disk holding the job store is full; free space, then resume")
    if "no space" in text or "disk full" in text:
        return StoreFullError(f"{where}: the disk holding the job store is full; free space, then resume")
    return StoreError(f"{where}: {type(orig).__name__}: {orig}")


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
