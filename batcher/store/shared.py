"""What runs learned for the next run, and the account's rate shared by every worker (PostgreSQL)."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import case, func, select, update

from batcher.store.base import StoreBase
from batcher.store.changes import WriteConnection
from batcher.store.tables import learned, rate_buckets


class SharedPart(StoreBase):
    async def learned(self) -> dict[str, Any]:
        return {r["name"]: json.loads(r["value"]) for r in await self._read(select(learned))}

    async def remember(self, values: dict[str, Any], now: float) -> None:
        async def op(conn: WriteConnection) -> None:
            for name, value in values.items():
                stmt = self._insert(learned).values(name=name, value=json.dumps(value), updated_at=now)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[learned.c.name], set_={"value": stmt.excluded.value, "updated_at": now}
                )
                await conn.execute(stmt)

        await self.writer.run(op)

    async def bucket_setup(self, name: str, rate: float, capacity: float) -> None:
        """Create the bucket, or set its rate (the newest configuration wins; its tokens are kept)."""

        async def op(conn: WriteConnection) -> None:
            now = await _db_now(conn)
            stmt = self._insert(rate_buckets).values(name=name, rate=rate, capacity=capacity, tokens=capacity,
                                                     updated_at=now)  # fmt: skip
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[rate_buckets.c.name], set_={"rate": rate, "capacity": capacity}
                )
            )

        await self.writer.run(op)

    async def bucket_take(self, name: str) -> float:
        """Take one token: 0 when granted, else the seconds until one will be there (by the database's clock,
        so workers on machines with skewed clocks still share one rate)."""

        async def op(conn: WriteConnection) -> float:
            now = await _db_now(conn)
            elapsed = now - rate_buckets.c.updated_at
            refilled = rate_buckets.c.tokens + rate_buckets.c.rate * case((elapsed > 0, elapsed), else_=0.0)
            level = case((refilled > rate_buckets.c.capacity, rate_buckets.c.capacity), else_=refilled)
            got = await conn.execute(
                update(rate_buckets)
                .where(rate_buckets.c.name == name, level >= 1.0)
                .values(tokens=level - 1.0, updated_at=now)
                .returning(rate_buckets.c.tokens)
            )
            if got.first() is not None:
                return 0.0
            row = (await conn.execute(select(rate_buckets).where(rate_buckets.c.name == name))).mappings().first()
            if row is None:
                return 0.0
            have = min(row["capacity"], row["tokens"] + row["rate"] * max(now - row["updated_at"], 0.0))
            return max((1.0 - float(have)) / float(row["rate"]), 0.001)

        return await self.writer.run(op)

    async def bucket_hold(self, name: str, seconds: float, factor: float) -> None:
        """A 429 seen by one worker holds every worker: the bucket owes `seconds` of tokens, and its rate is cut."""

        async def op(conn: WriteConnection) -> None:
            now = await _db_now(conn)
            await conn.execute(
                update(rate_buckets)
                .where(rate_buckets.c.name == name)
                .values(tokens=-rate_buckets.c.rate * seconds, rate=rate_buckets.c.rate * factor, updated_at=now)
            )

        await self.writer.run(op)


async def _db_now(conn: WriteConnection) -> float:
    """Epoch seconds by the database server's clock on PostgreSQL (one clock for all machines)."""
    if conn.dialect.name == "postgresql":
        return float((await conn.execute(select(func.extract("epoch", func.clock_timestamp())))).scalar_one())
    return time.time()
