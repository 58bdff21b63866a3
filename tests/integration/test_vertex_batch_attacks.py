"""Attacks on the Vertex batch client's money path, over real HTTP against the Vertex emulator: a create refused
for an expired token is sent once more and makes exactly one job; an output file deleted between the listing and
its read breaks the read off (ResultsCut: read again later) instead of ending it as if the file had no lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.emulator import Latency
from batcher.providers.base import Created, LineKind, ResultsCut, ResultStream, Uploaded
from batcher.providers.vertex_jobs import KEY_LABEL
from tests.conftest import StartVertex
from tests.emulator.emu_helpers import LITE
from tests.integration.test_vertex_batch_client import BUCKET, ended, items, opened, staged_job

QUICK = Latency("fixed", 1.0)


async def _nothing() -> None:
    return None


async def test_a_create_refused_for_an_expired_token_is_sent_once_more_and_makes_one_job(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(batch_latency=QUICK, token_lifetime_s=600)
    async with opened(emu, tmp_path) as client:
        path = tmp_path / "shard-401.jsonl"
        client.write_shard(path, items("a", "b", "c"))
        up = await client.upload(path, "shard-401")
        assert isinstance(up, Uploaded), up
        issued = emu.stats.tokens_issued
        emu.advance(601)  # the token the client holds has expired by the service's clock, not by the client's
        intents = 0

        async def intent() -> None:
            nonlocal intents
            intents += 1

        made = await client.create(LITE, up.file_name, "shard-401", before_send=intent)
        assert isinstance(made, Created), made
        stats = emu.stats
        assert stats.expired_tokens == 1 and stats.unauthenticated == 1  # the first send was refused ...
        assert stats.tokens_issued == issued + 1  # ... a token renewed ...
        assert stats.jobs_created == 1 and stats.jobs_by_display_name == {"shard-401": 1}  # ... one job made
        assert intents == 1  # the intent is committed once, before the first send
        got = await ended(client, emu, made.batch.name)
        assert got.batch.stats.succeeded == 3 and emu.stats.batch_rows_billed == 3


async def test_a_create_refused_twice_is_not_sent_a_third_time(start_vertex: StartVertex, tmp_path: Path) -> None:
    """A renewed token refused too: the run stops on the credential (no loop of creates)."""
    emu = await start_vertex(batch_latency=QUICK, token_lifetime_s=0.0)  # every token expired as issued
    async with opened(emu, tmp_path) as client:
        path = tmp_path / "shard-dead.jsonl"
        client.write_shard(path, items("a"))
        up = await client.upload(path, "shard-dead")
        assert isinstance(up, Uploaded), up
        before = emu.stats.unauthenticated
        made = await client.create(LITE, up.file_name, "shard-dead", before_send=_nothing)
        assert type(made).__name__ == "AuthRejected", made
        assert emu.stats.unauthenticated - before == 2 and emu.stats.jobs_created == 0


async def test_an_output_file_deleted_between_listing_and_read_breaks_the_read_off_and_a_new_read_skips_it(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    n = 9
    emu = await start_vertex(batch_latency=QUICK, batch_output_files=3)
    async with opened(emu, tmp_path) as client:
        _, made = await staged_job(client, tmp_path, "shard-gone", n)
        info = (await ended(client, emu, made.batch.name)).batch
        assert info.responses_file is not None
        files = sorted(o for o in emu.state.store.buckets[BUCKET] if "/output/" in o)
        assert len(files) == 3
        read: list[str | None] = []
        async with client.results(info.responses_file) as got:
            assert isinstance(got, ResultStream), got
            emu.state.store.buckets[BUCKET].pop(files[1])  # gone after the listing named it
            with pytest.raises(ResultsCut):
                async for line in got.lines():
                    read.append(line.key)
        assert len(read) == n // 3  # the first file's lines, then the break: never a silent end
        async with client.results(info.responses_file) as again:
            assert isinstance(again, ResultStream), again
            lines = [line async for line in again.lines()]
        assert len(lines) == n - n // 3 and all(line.kind is LineKind.IMAGE for line in lines)
        assert {line.key for line in lines} >= set(read)  # the lines read before come again: settled by key once
        assert emu.stats.batch_rows_billed == n and KEY_LABEL
