"""The one writer every change of a process goes through: group commits.

A single writer task coalesces the changes queued while the previous commit ran into one transaction ("group
commit": many changes share one commit's cost). A caller that awaits a write knows it is committed. A patient
change (a task's progress, a call record) may wait up to `gather_s` for others to share its commit: when the
rate gate spreads requests out evenly, changes arrive one at a time and would otherwise each pay for a commit of
their own. Any other change commits at once, and takes the patient ones queued before it along. Row changes
(prepared statements: a task's transitions, call records) are batched per statement into one executemany. On
SQLite, groups commit on the loop's own thread (`inline.InlineSqlite`) unless another process holds the lock;
then, and for imports, they run on the engine's connection in aiosqlite's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from batcher.store.changes import Change, RowChange, WriteConnection, row_steps
from batcher.store.database import translated
from batcher.store.inline import CHECKPOINT_EVERY, InlineSqlite

T = TypeVar("T")
log = logging.getLogger("batcher")


MAX_GROUP = 500  # changes at most in one group commit


class Writer:
    """Runs queued changes in group commits; each caller learns its own result."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # (op, future or None, alone): an op marked alone gets a transaction of its own (a long import that
        # may roll back must not take unrelated changes down with it).
        self._queue: asyncio.Queue[tuple[Change, asyncio.Future[Any] | None, bool]] = asyncio.Queue()
        self.gather_s = 0.0  # how long a patient change may wait for company (set by the runner)
        self._prompt = False  # a change that may not wait is queued
        self._gathering: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # posted changes (nobody awaits them) of a group that failed: tried once more with the next group, so
        # one failed commit neither loses them nor stops the writer
        self._carried: list[Change] = []
        self._pending: tuple[Change, asyncio.Future[Any] | None, bool] | None = None
        self._conn: AsyncConnection | None = None  # the writer's own connection, kept open between groups
        self._inline = InlineSqlite.for_engine(engine)  # None: every group goes through the engine
        self.groups = 0  # transactions committed, and the changes in them (for benchmarks)
        self.ops = 0

    async def run(self, op: Callable[[WriteConnection], Coroutine[Any, Any, T]], *, alone: bool = False) -> T:
        """Queue `op` and wait for its commit."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(op, fut, alone)
        return await fut

    async def change(self, row: RowChange, *, patient: bool = False) -> int:
        """Queue a row change and wait for its commit; returns the rows it changed. `patient`: the commit may
        wait up to `gather_s` for other changes."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._put(row, fut, False, patient)
        return await fut

    def post(self, op: Change) -> None:
        """Queue a change for a coming commit without waiting (append-only records: patient)."""
        self._put(op, None, False, True)

    def _put(self, op: Change, fut: asyncio.Future[Any] | None, alone: bool, patient: bool = False) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher-store-writer")
        self._queue.put_nowait((op, fut, alone))
        if not patient:
            self._prompt = True
        if self._gathering is not None and (not patient or self._queue.qsize() >= MAX_GROUP - 1):
            _resolve(self._gathering)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""

        async def nothing(_: WriteConnection) -> None:
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
        if self._inline is not None:
            self._inline.close()

    async def _loop(self) -> None:
        while True:
            first = self._pending if self._pending is not None else await self._queue.get()
            self._pending = None
            if not self._prompt and not first[2] and self.gather_s > 0:
                await self._gather()
            elif self._queue.empty():
                await asyncio.sleep(0)  # one turn of the loop: changes made ready by the same wake-up join in
            self._prompt = False
            if self._carried:  # once more, in a transaction of their own: they cannot fail this group again
                carried, self._carried = self._carried, []
                await self._commit([(c, None) for c in carried], self._in_transaction, retried=True)
            batch: list[tuple[Change, asyncio.Future[Any] | None]] = [(first[0], first[1])]
            while not first[2] and len(batch) < MAX_GROUP and not self._queue.empty():
                op, fut, alone = self._queue.get_nowait()
                if alone:
                    self._pending = (op, fut, alone)
                    break
                batch.append((op, fut))
            self.groups += 1
            self.ops += len(batch)
            inline = self._inline is not None and not first[2]  # an import may run long: not on the loop
            await self._commit(batch, self._inline_first if inline else self._in_transaction)
            if self._inline is not None and self._inline.commits >= CHECKPOINT_EVERY:
                self._inline.commits = 0
                try:
                    await self._checkpoint()
                except Exception as e:  # upkeep, not a change: the next one tries again
                    log.warning("checkpointing the job store failed: %s", e)

    async def _gather(self) -> None:
        """Wait for company: until a change that may not wait is queued, the group is full, or `gather_s`."""
        if self._queue.qsize() >= MAX_GROUP - 1:
            return
        loop = asyncio.get_running_loop()
        self._gathering = loop.create_future()
        timer = loop.call_later(self.gather_s, _resolve, self._gathering)
        try:
            await self._gathering
        finally:
            timer.cancel()
            self._gathering = None

    async def _commit(
        self,
        batch: list[tuple[Change, asyncio.Future[Any] | None]],
        apply: Callable[[list[Any]], Awaitable[list[Any]]],
        *,
        retried: bool = False,
    ) -> None:
        """Commit one group; every waiter learns its result, or why the whole group rolled back. The posted
        changes of a failed group (nobody awaits them) are tried once more before the next group; `retried`:
        this is that second try, and a second failure drops them (logged), so the writer goes on."""
        try:
            with translated("writing the job store"):
                results = await apply([op for op, _ in batch])
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.cancel()
                raise
            if retried:
                log.error("dropped %d records that could not be written twice: %s", len(batch), e)
            else:
                self._carried = [op for op, fut in batch if fut is None]
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if fut is not None and not fut.done():
                fut.set_result(result)

    async def _in_transaction(self, changes: list[Change]) -> list[Any]:
        conn = await self._connection()
        results: list[Any] = [None] * len(changes)
        async with conn.begin():
            await _apply(conn, changes, results)
        return results

    async def _inline_first(self, changes: list[Change]) -> list[Any]:
        assert self._inline is not None
        results = self._inline.commit(changes)
        if results is None:  # another process holds the lock: wait for it off the loop
            return await self._in_transaction(changes)
        return results

    async def _checkpoint(self) -> None:
        """Copy SQLite's log into the database (it fsyncs: off the loop), without waiting for readers."""
        driver = (await (await self._connection()).get_raw_connection()).driver_connection
        assert driver is not None
        cursor = await driver.execute("PRAGMA wal_checkpoint(PASSIVE)")
        await cursor.close()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = await self._engine.connect()
        return self._conn


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _apply(conn: AsyncConnection, changes: list[Change], results: list[Any]) -> None:
    """Run one group's changes: callables in order, then the prepared statements' rows in `row_steps`, each
    step one executemany."""
    for i, change in enumerate(changes):
        if not isinstance(change, RowChange):
            results[i] = await change(conn)
    for indexes in row_steps(changes, lambda row: id(row.stmt)):
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
