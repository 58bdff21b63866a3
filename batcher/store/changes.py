"""What the writer is given to commit: ops (coroutines on a connection) and row changes (prepared statements).

Its own module so that imports point one way, writer -> inline -> changes: `inline.InlineSqlite` commits groups
of these on the loop's thread, and `writer.Writer` hands groups to it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.expression import Executable


class WriteConnection(Protocol):
    """What an op of the writer may use: an `AsyncConnection`, or on SQLite `inline.InlineConnection`."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]: ...

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> CursorResult[Any]: ...


Op = Callable[[WriteConnection], Coroutine[Any, Any, Any]]


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row's change by a prepared statement. The writer runs the changes of one statement in a group as a
    single executemany (one trip to the driver instead of one per row), in the steps `row_steps` gives."""

    stmt: UpdateBase  # an INSERT or UPDATE
    params: dict[str, Any]
    fenced: bool = False  # must change exactly one row; the caller learns the row count either way


Change = Op | RowChange


def row_steps(changes: Sequence[Change], key: Callable[[RowChange], Hashable]) -> list[list[int]]:
    """The row changes of a group (by index) as the executemany steps to run, in order: rows of one statement
    (`key`) share a step, except that a change never runs ahead of an earlier change to the same row (its `_id`)
    made by another statement. Without that exception a task's failure could run before its billing, which then
    no longer matched the row and was lost."""
    steps: list[list[int]] = []
    latest: dict[Hashable, int] = {}  # statement -> its newest step
    touched: dict[Any, int] = {}  # row -> the newest step that changes it
    for i, change in enumerate(changes):
        if not isinstance(change, RowChange):
            continue
        k, row = key(change), change.params.get("_id")
        step = latest.get(k)
        if step is None or (row is not None and touched.get(row, -1) > step):
            step = latest[k] = len(steps)
            steps.append([])
        steps[step].append(i)
        if row is not None:
            touched[row] = max(touched.get(row, -1), step)
    return steps
