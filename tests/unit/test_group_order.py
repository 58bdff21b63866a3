"""The order a group commit runs its changes in: every op where it was queued, row changes between ops batched
by statement (one executemany each) without a change to a row running ahead of an earlier one to that row."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from batcher.store.changes import Change, RowChange, WriteConnection, in_order
from batcher.store.tables import strays, tasks

BILL, SUCCEED = update(tasks), update(tasks).values(status="x")  # two statements
DUP = update(strays)


async def op(_: WriteConnection) -> Any:
    return None


def row(stmt: Any, task: int) -> RowChange:
    return RowChange(stmt, {"_id": task})


def group(text: str) -> list[Change]:
    """`b1` bills task 1, `s1` succeeds it, `d1` a stray's row, `op` an op."""
    stmts = {"b": BILL, "s": SUCCEED, "d": DUP}
    return [op if word == "op" else row(stmts[word[0]], int(word[1:])) for word in text.split()]


@pytest.mark.parametrize(
    ("text", "plan"),
    [
        ("b1 b2 b3", [[0, 1, 2]]),
        ("op b1 b2", [0, [1, 2]]),
        # a worker's stop (op) queued behind its tasks' billing and success runs after them
        ("b1 s1 op", [[0], [1], 2]),
        ("b1 b2 s1 s2 op", [[0, 1], [2, 3], 4]),
        ("b1 op b2", [[0], 1, [2]]),
        ("b1 d1 op op s1", [[0], [1], 2, 3, [4]]),
        ("s1 b2 b1", [[0], [1, 2]]),
        ("b1 s1 b1", [[0], [1], [2]]),  # the second change to task 1 by B waits for S's
    ],
)
def test_ops_keep_their_place_and_rows_between_them_are_batched(text: str, plan: list[int | list[int]]) -> None:
    assert in_order(group(text), lambda r: id(r.stmt)) == plan
