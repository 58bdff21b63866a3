"""Collecting a batch that has ended, in any state: every line it finished is saved at the batch price, lines
the API counts as succeeded that no results file holds are paid with their result lost, and only the lines it
never finished go to a later shard.

A CANCELLED, FAILED or EXPIRED batch keeps and bills the lines it finished, as every batch API does: its
`batchStats` and its responses file (when it names one) are read exactly as a SUCCEEDED batch's are. A results
file the API no longer has (404, or 403 on a file: files are deleted 48 hours after they are made) is final:
its lines are paid, result lost, counted, and made again only by `batcher retry --recreate`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass

from batcher.errors import OutputError
from batcher.models import Failure
from batcher.outputs import AtomicFile, target_path, with_real_extension
from batcher.providers.base import (
    AuthRejected,
    BatchInfo,
    BatchState,
    BatchStats,
    Gone,
    Got,
    LineKind,
    RateLimited,
    Refused,
    ResultLine,
    ResultsCut,
    ResultStream,
)
from batcher.runner.base import log
from batcher.runner.batch.shard import ENDED, Shard, ShardWork
from batcher.runner.batch_bucket import bucket_line
from batcher.store import Task

# lines settled at once while the next are read (a local job's): their images are hashed, written and synced in
# parallel threads (each holds its decoded image, about 1.5 MB, until its file is in place)
LOOKAHEAD = 16
# lines of a results file that carry a `response` (what successfulRequestCount counts); a malformed line is
# counted so too, since it may have been billed: the lost count errs toward fewer, never toward resending
_ANSWERED = (LineKind.IMAGE, LineKind.REFUSED, LineKind.MALFORMED)


@dataclass
class _Read:
    answered: int = 0  # lines of the file that carry a response, settled now or by an earlier collection
    gone: bool = False  # the file is no longer at the API


async def _settle_rest(settling: deque[asyncio.Task[None]]) -> None:
    """Let the lines in flight finish (one failed: the others' files are finished and recorded all the same); if
    this task is itself cancelled, cancel them (a line cut short is settled again by the next collection)."""
    try:
        await asyncio.gather(*settling, return_exceptions=True)  # cancelled, it cancels them
    finally:
        settling.clear()


class CollectPart(ShardWork):
    async def _collect(self, shard: Shard) -> None:
        """The shard's batch has ended (its state recorded): look it up for its counts and results file, then
        settle every line."""
        info = shard.info
        if info is None or not info.state.is_done:
            assert shard.sub.remote_name is not None
            got = await self.client.get(shard.sub.remote_name)
            self._log_shard_call(shard, got.call)
            if isinstance(got, AuthRejected):
                self._auth(got.message)
            if isinstance(got, (Gone, Refused)):  # deleted after it ended: its results are gone with it
                await self._ended_unknown(shard, got.message)
                return
            if not isinstance(got, Got) or not got.batch.state.is_done:
                self._fault(shard, "the ended batch could not be looked up")
                return
            info = shard.info = got.batch
        await self._ended(shard, info)

    async def _ended_outliving(self, shard: Shard, why: str) -> bool:
        """The API no longer knows the shard's batch, but its results outlive it (Vertex deletes only an ended job
        and leaves its output in Cloud Storage): collected from there, never sent and paid again. The counts
        recorded with its ending, if the store has them, say what it billed; else the lines its results do not
        hold go again, each counted as an unknown submission. False: nothing outlives it here."""
        sub = shard.sub
        folder = self.client.results_outliving(sub.display_name)
        if folder is None or sub.remote_name is None:
            return False
        log.error("shard %s: the API no longer knows its batch %s (%s); collecting its results from %s",
                  sub.display_name, sub.remote_name, why, folder)  # fmt: skip
        if sub.detail is not None and sub.state in ENDED:
            counts = json.loads(sub.detail)
            stats = BatchStats(counts["requests"], counts["succeeded"], counts["failed"], counts["pending"])
            info = BatchInfo(sub.remote_name, sub.display_name, BatchState(sub.state), stats, folder)
            await self._ended(shard, info)
        else:  # its ending never seen: how it ended, and what it billed, only its results tell
            info = BatchInfo(sub.remote_name, sub.display_name, BatchState.SUCCEEDED, BatchStats(0, 0, 0, 0), folder)
            await self._ended(shard, info, unseen=True)
        return True

    async def _ended_unknown(self, shard: Shard, why: str) -> None:
        """The API no longer knows a batch whose ending the store recorded: its results, where they outlive it;
        else the counts recorded with it say what it billed, settled as a results file gone; without them, its
        lines go again, each counted as an unknown submission."""
        sub = shard.sub
        if await self._ended_outliving(shard, why):
            return
        log.error("shard %s: the API no longer knows its ended batch %s (%s)", sub.display_name, sub.remote_name, why)
        if sub.detail is None or sub.remote_name is None:
            await self._abandon(shard, "expired", f"the API no longer knows batch {sub.remote_name}: {why}",
                                maybe_billed=True)  # fmt: skip
            return
        counts = json.loads(sub.detail)
        stats = BatchStats(counts["requests"], counts["succeeded"], counts["failed"], counts["pending"])
        await self._ended(shard, BatchInfo(sub.remote_name, sub.display_name, BatchState(sub.state), stats), gone=True)

    async def _ended(self, shard: Shard, info: BatchInfo, *, gone: bool = False, unseen: bool = False) -> None:
        """`unseen`: the batch's counts are unknown (its ending never seen): a line its results do not hold may
        have been billed, so it goes again counted as an unknown submission."""
        sub = shard.sub
        shard.info = info
        read = _Read(gone=gone)  # gone: nothing of the batch is left to read at the API
        if not gone and info.responses_file is not None:
            got = await self._read_results(shard, info.responses_file)
            if got is None:
                return  # a transient fault: the download goes again later
            read = got
        elif not gone and info.state is BatchState.SUCCEEDED:
            self._fault(shard, "the succeeded batch names no results file yet")
            return
        # lines the API counts as succeeded that no file holds were billed: paid, result lost, never resent
        # unasked. A file read now names every answered line, settled now or before; a file gone names none,
        # so the lines an earlier collection (a restart) settled with a response are taken off the API's count
        # instead (not those that answered an error: the API does not count them as succeeded)
        answered = read.answered if not read.gone else await self.store.shard_lines_answered(sub)
        lost = min(len(shard.tasks), max(0, info.stats.succeeded - answered))
        now = self._now()
        if read.gone:
            log.error("shard %s: the results file of batch %s is gone (files live 48 hours); %d lines the API "
                      "billed are paid, their results lost (`batcher retry --recreate` makes them again)",
                      sub.display_name, sub.remote_name, lost)  # fmt: skip
        elif lost:
            log.error("shard %s: batch %s counts %d succeeded lines its results file does not hold: paid, "
                      "result lost", sub.display_name, sub.remote_name, lost)  # fmt: skip
        why = "its batch's results file is gone" if read.gone else "missing from its batch's results"
        # the API billed `lost` of these lines without saying which: the others may have been billed too, so
        # each goes again counted as a possible double charge (an unknown submission), never silently
        maybe = unseen or 0 < lost < len(shard.tasks)
        capped = info.state is not BatchState.CANCELLED  # a cancel is ours: it spends no attempt of the line
        for task in list(shard.tasks.values()):
            if lost > 0:
                lost -= 1
                await self.store.shard_line_failed(sub, task, Failure.RESULT_LOST, f"paid, result lost: {why}",
                                                   billed=True, now=now)  # fmt: skip
                self.progress.failed += 1
            elif capped and not maybe and task.attempts >= self.config.retry.max_attempts:
                reason = info.error or f"not finished by its batch ({info.state}) in {task.attempts} attempts"
                await self.store.shard_line_failed(sub, task, Failure.GENERATION, reason, billed=False, now=now,
                                                   generation_failed=True)  # fmt: skip
                self.progress.failed += 1
            else:
                reason = why if info.state is BatchState.SUCCEEDED else info.error or f"its batch ended {info.state}"
                await self.store.shard_line_back_to_pending(sub, task, reason, generation_failed=False, now=now,
                                                            maybe_billed=maybe)  # fmt: skip
        shard.tasks.clear()
        await self._close(shard, info)

    async def _close(self, shard: Shard, info: BatchInfo) -> None:
        """Every line is settled: the shard closes, and only then are its remote files deleted."""
        sub = shard.sub
        if shard.recreated:
            await self._late_duplicates(shard)
        if info.state is BatchState.SUCCEEDED:
            await self.store.shard_collected(sub, self._now())
        else:
            await self.store.shard_abandoned(sub, info.state.value.lower(), self._now(), info.error)
        for name in (sub.input_file, info.responses_file):
            if name:
                done = await self.client.delete_file(name)
                self._log_shard_call(shard, done.call)
        self.shards.pop(sub.id, None)
        self.progress.shards_done += 1
        log.info("shard %s collected (its batch %s)", sub.display_name, info.state)

    async def _read_results(self, shard: Shard, responses: str) -> _Read | None:
        """Every line of the results file, each settled as it is read. None: a fault to try again later."""
        read = _Read()
        async with self.client.results(responses) as opened:
            if not isinstance(opened, ResultStream):
                self._log_shard_call(shard, opened.call)
                if isinstance(opened, AuthRejected):
                    self._auth(opened.message)
                if isinstance(opened, Gone):
                    read.gone = True
                    return read
                if isinstance(opened, RateLimited):
                    self._later(shard, opened.wait_s or 10.0)
                    return None
                self._fault(shard, f"the results download answered {opened.message}")
                return None
            settling: deque[asyncio.Task[None]] = deque()  # lines being settled while the next are read
            try:
                async for line in opened.lines():
                    if line.kind in _ANSWERED:
                        read.answered += 1
                    task = shard.tasks.pop(line.key, None) if line.key is not None else None
                    if task is None:
                        continue  # settled by an earlier collection (a restart), or no task of this shard
                    if self.remote:  # a bucket job stores its lines one by one, each by conditional create
                        await self._line(shard, task, line)
                        continue
                    settling.append(asyncio.ensure_future(self._line(shard, task, line)))
                    if len(settling) >= LOOKAHEAD:
                        await settling.popleft()
                while settling:
                    await settling.popleft()
            except ResultsCut as e:
                await _settle_rest(settling)  # the lines read before the cut are settled all the same
                self._fault(shard, str(e))
                return None
            finally:
                await _settle_rest(settling)
                for call in opened.calls:
                    self._log_shard_call(shard, call)
        return read

    async def _line(self, shard: Shard, task: Task, line: ResultLine) -> None:
        sub, now = shard.sub, self._now()
        if line.kind is LineKind.IMAGE and line.image is not None and line.image.data is not None:
            if self.remote:  # a bucket job: stored by conditional create, never on this disk
                try:
                    stored = await bucket_line(self.store, sub, task, line.image.data, self.output_root, now)
                except OutputError as e:  # the shard stays open: its results file is deleted only once settled
                    raise OutputError(f"{e.message}; the paid lines of shard {sub.display_name} stay at the API "
                                      "until they are stored: run again to store them, at no new "
                                      "charge") from None  # fmt: skip
                if stored:
                    self.progress.succeeded += 1
                    self.progress.lines_done += 1
                    self.progress.spent_micros += sub.price_each
                else:
                    self.progress.failed += 1
                return
            target = target_path(self.output_dir, task.filename)
            sink = AtomicFile(target, whole=True)
            try:
                sink.write(line.image.data)
                info = sink.image()
                if info is None:
                    sink.discard()
                    await self.store.shard_line_failed(sub, task, Failure.DOWNLOAD, "paid, but the line's bytes "
                                                       "are not an image; nothing was written", billed=True,
                                                       now=now)  # fmt: skip
                    self.progress.failed += 1
                    return
                final = with_real_extension(target, info)
                await self._finisher.finish(sink, final)
            except BaseException:
                sink.discard()
                raise
            await self.store.shard_line_succeeded(sub, task, output_path=str(final), sha256=sink.sha256,
                                                  size=sink.size, width=info.width, height=info.height,
                                                  fmt=info.format, cost_micros=sub.price_each, now=now)  # fmt: skip
            self.progress.succeeded += 1
            self.progress.lines_done += 1
            self.progress.spent_micros += sub.price_each
            return
        if line.kind is LineKind.REFUSED:
            await self.store.shard_line_failed(sub, task, Failure.BLOCKED, line.reason, billed=False, now=now,
                                               generation_failed=True)  # fmt: skip
            self.progress.failed += 1
            return
        if line.kind is LineKind.MALFORMED:  # an image may have been made and billed: counted as unusable
            await self.store.shard_line_failed(sub, task, Failure.DOWNLOAD, f"paid, unusable: {line.reason}",
                                               billed=True, now=now)  # fmt: skip
            self.progress.failed += 1
            return
        if task.attempts >= self.config.retry.max_attempts:  # a failed line, too often
            await self.store.shard_line_failed(sub, task, Failure.GENERATION, line.reason, billed=False, now=now,
                                               generation_failed=True)  # fmt: skip
            self.progress.failed += 1
            return
        await self.store.shard_line_back_to_pending(sub, task, line.reason, generation_failed=True, now=now)

    async def _abandon(self, shard: Shard, state: str, reason: str, *, maybe_billed: bool = False) -> None:
        """The shard ends with no batch to collect (never created, refused, or one the API no longer answers
        for): its unfinished tasks go back to pending (`maybe_billed`: each counted as an unknown submission);
        its uploaded requests file, if any, is deleted."""
        back = await self.store.shard_abandoned(shard.sub, state, self._now(), reason, maybe_billed=maybe_billed)
        log.warning("shard %s ended %s (%s): %d tasks go to a later shard", shard.sub.display_name, state,
                    reason, len(back))  # fmt: skip
        if shard.sub.input_file:
            done = await self.client.delete_file(shard.sub.input_file)
            self._log_shard_call(shard, done.call)
        (self.work_dir / f"{shard.sub.display_name}.jsonl").unlink(missing_ok=True)
        self.shards.pop(shard.sub.id, None)
