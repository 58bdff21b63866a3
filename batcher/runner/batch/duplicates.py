"""A shard's second batch (created after a listing lagged past the grace period) is collected like the first:
its image lines are known second charges, billed in the ledger, each image kept beside its task's as
`NAME.dup-BATCH.png`; lines it counts as succeeded that no file holds are billed, their result lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batcher.outputs import AtomicFile, target_path, with_real_extension
from batcher.providers.base import (
    Absent,
    AuthRejected,
    Found,
    Gone,
    Got,
    LineKind,
    ResultLine,
    ResultsCut,
    ResultStream,
)
from batcher.runner.base import log
from batcher.runner.batch.shard import Shard, ShardWork
from batcher.runner.batch_bucket import store_line
from batcher.shards import next_check_in
from batcher.store import Stray
from batcher.store.shard_duplicates import DUPLICATE_BATCH, batch_of

_ANSWERED = (LineKind.IMAGE, LineKind.REFUSED, LineKind.MALFORMED)


@dataclass
class DuplicateBatch:
    name: str
    lines: dict[str, Stray] = field(default_factory=dict)  # by task key
    due: float = 0.0
    checks: int = 0


class DuplicatesPart(ShardWork):
    duplicates: dict[str, DuplicateBatch]

    async def _take_duplicates(self) -> None:
        """Take the job's second batches nobody collects (found now, or left by a worker that stopped)."""
        now = self._now()
        taken = await self.store.claim_strays(self.job.id, now, now + self.config.lease_s, DUPLICATE_BATCH)
        keys = await self.store.task_keys([s.task_id for s in taken])
        for stray in taken:
            name = batch_of(stray.remote_task_id)
            self.duplicates.setdefault(name, DuplicateBatch(name)).lines[keys[stray.task_id]] = stray

    async def _record_duplicates(self, shard: Shard, names: list[str]) -> None:
        """More batches of the shard than its own: each of their lines a known duplicate, collected."""
        await self.store.shard_duplicates(shard.sub, names, self._now())
        await self._take_duplicates()

    async def _late_duplicates(self, shard: Shard) -> None:
        """A shard sent again after the grace period: before it closes, list once more for a batch of its first
        create that showed up late (billed all the same)."""
        found = await self.client.find_by_display_name(shard.sub.display_name)
        for call in found.calls:
            self._log_shard_call(shard, call)
        if isinstance(found, Found):
            extra = [b.name for b in found.batches if b.name != shard.sub.remote_name]
            if extra:
                log.error("shard %s: a late batch of its first create showed up: its lines are known duplicates",
                          shard.sub.display_name)  # fmt: skip
                await self._record_duplicates(shard, extra)
        elif not isinstance(found, Absent):
            log.warning("shard %s: the listing for a late batch failed (%s)", shard.sub.display_name, found.message)

    async def _advance_duplicates(self) -> None:
        for dup in list(self.duplicates.values()):
            if dup.due <= self._now():
                await self._check_duplicate(dup)

    async def _check_duplicate(self, dup: DuplicateBatch) -> None:
        got = await self.client.get(dup.name)
        first = next(iter(dup.lines.values()), None)
        if first is not None:
            self.store.log_call(first, got.call)
        dup.checks += 1
        if isinstance(got, AuthRejected):
            self._auth(got.message)
        if not isinstance(got, Got) or not got.batch.state.is_done:
            dup.due = self._now() + next_check_in(10.0 * dup.checks, dup.checks)
            return
        info, answered, gone = got.batch, 0, False
        if info.responses_file is not None:
            async with self.client.results(info.responses_file) as opened:
                if not isinstance(opened, ResultStream):
                    if first is not None:
                        self.store.log_call(first, opened.call)
                    if not isinstance(opened, Gone):
                        dup.due = self._now() + 10.0
                        return
                    gone = True
                else:
                    try:
                        async for line in opened.lines():
                            answered += 1 if line.kind in _ANSWERED else 0
                            await self._duplicate_line(dup, line)
                    except ResultsCut:
                        dup.due = self._now() + 10.0
                        return
                    finally:
                        for call in opened.calls:
                            if first is not None:
                                self.store.log_call(first, call)
        lost = max(0, info.stats.succeeded - (0 if gone else answered))
        for stray in list(dup.lines.values()):
            billed = lost > 0
            lost -= 1 if billed else 0
            await self.store.stray_done(stray, "failed", self._now(), billed=billed,
                                        detail="paid duplicate, result lost" if billed else "not run")  # fmt: skip
        dup.lines.clear()
        if info.responses_file:
            await self.client.delete_file(info.responses_file)
        self.duplicates.pop(dup.name, None)
        log.warning("second batch %s collected: its lines are known duplicates", dup.name)

    async def _duplicate_line(self, dup: DuplicateBatch, line: ResultLine) -> None:
        stray = dup.lines.pop(line.key, None) if line.key is not None else None
        if stray is None:
            return
        now = self._now()
        if line.kind is LineKind.IMAGE and line.image is not None and line.image.data is not None:
            stem = Path(stray.filename)
            tag = "".join(c if c.isalnum() else "_" for c in dup.name.removeprefix("batches/"))[:64]
            name = str(stem.with_name(f"{stem.stem}.dup-{tag}{stem.suffix or '.png'}"))
            if self.remote:  # a bucket job: kept in the bucket by conditional create
                stored = await store_line(self.output_root, name, line.image.data)
                if stored is None:
                    await self.store.stray_done(
                        stray, "failed", now, billed=True, detail="paid duplicate, not an image"
                    )
                else:
                    await self.store.stray_done(stray, "succeeded", now, billed=True,
                                                output_path=stored.written.location, sha256=stored.sha256)  # fmt: skip
                return
            target = target_path(self.output_dir, name)
            sink = AtomicFile(target, whole=True)
            sink.write(line.image.data)
            info = sink.image()
            if info is None:
                sink.discard()
                await self.store.stray_done(stray, "failed", now, billed=True, detail="paid duplicate, not an image")
                return
            final = with_real_extension(target, info)
            await self._finisher.finish(sink, final)
            await self.store.stray_done(stray, "succeeded", now, billed=True, output_path=str(final),
                                        sha256=sink.sha256)  # fmt: skip
            return
        billed = line.kind is LineKind.MALFORMED
        await self.store.stray_done(stray, "failed", now, billed=billed, detail=line.reason)
