"""What the writer is given to commit: ops (coroutines on a connection) and row changes (prepared statements).

Its own module so that imports point one way, writer -> inline -> changes: `inline.InlineSqlite` commits groups
of these on the loop's thread, and `writer.Writer` hands groups to it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
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
    """One row's change by a prepared statement. The writer runs all changes of one statement in a group as a
    single executemany (one trip to the driver instead of one per row)."""

    stmt: UpdateBase  # an INSERT or UPDATE
    params: dict[str, Any]
    fenced: bool = False  # must change exactly one row; the caller learns the row count either way


Change = Op | RowChange
