"""Saving images to object storage (`s3://`, `gs://`): fetched into memory, then one conditional create under the
task's own key (prefix + the file name it would get locally). An object there that this task did not write is
never replaced; a failed upload leaves the task "paid, not saved" for `retry --only download`. An image the API
cannot serve again (a Gemini online reply holds its bytes) is first kept on this machine's disk, in the
temporary folder, so that the retry stores those bytes instead of finding them gone."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path, PurePosixPath

from batcher.errors import OutputError
from batcher.imageinfo import ImageInfo, sniff
from batcher.models import CallRecord, Failure
from batcher.outputs import AtomicFile, MemorySink, with_real_extension
from batcher.providers.base import Fetched, Image
from batcher.runner.base import RunnerBase, log
from batcher.storage import join
from batcher.storage.objects import write_once
from batcher.store import Stray, Task


class RemotePart(RunnerBase):
    def _key(self, filename: str, info: ImageInfo) -> str:
        """The object's location: the output root plus the file name the task would get on a local disk."""
        name = with_real_extension(PurePosixPath(filename), info)
        return join(self.output_root, str(name))

    async def _fetch_to_memory(self, image: Image) -> tuple[Fetched, MemorySink, ImageInfo | None]:
        sink = MemorySink()
        result = await self.provider.fetch(image, sink)
        return result, sink, sink.image() if result.ok else None

    def _unsaved_path(self, task: Task) -> Path:
        """Where this machine keeps a paid image the bucket refused and the API cannot serve again."""
        name = hashlib.sha256(f"{self.output_root}\n{task.filename}\n{task.key}".encode()).hexdigest()[:32]
        return Path(tempfile.gettempdir()) / "batcher" / "unsaved" / f"{name}.img"

    async def _store_remote(
        self, task: Task, sink: MemorySink, info: ImageInfo, call: CallRecord | None, *, only_copy: bool = False
    ) -> bool:
        """Write a fetched image to the bucket and settle the task: succeeded (True), or paid but not stored.
        `only_copy`: the API cannot serve these bytes again, so a refused upload keeps them on this disk."""
        try:
            written = await write_once(self._key(task.filename, info), sink.data, sink.sha256)
        except OutputError as e:  # retried with backoff already: paid, not saved; `retry --only download` ends it
            why = f"paid, but the image could not be stored: {e.message}"
            if only_copy:
                kept = self._unsaved_path(task)
                try:
                    await asyncio.to_thread(_keep, kept, sink.data)
                    why += (f"; its bytes are kept on this machine at {kept}: `batcher retry JOB --only download`, "
                            "then a run here, stores them at no charge")  # fmt: skip
                except OutputError as kept_error:
                    why += f"; they could not be kept on this disk either ({kept_error.message}): the image is lost"
            await self.store.failed(task, why, call, self._now(), failure=Failure.DOWNLOAD)
            self.progress.failed += 1
            log.warning("task %s: %s", task.key, why)
            return False
        if written.note:
            log.warning("task %s: %s", task.key, written.note)
        cost = self._cost(task)
        await self.store.succeeded(task, output_path=written.location, sha256=sink.sha256, size=sink.size,
                                   width=info.width, height=info.height, fmt=info.format, cost_micros=cost,
                                   call=call, now=self._now(), note=written.note)  # fmt: skip
        self.progress.succeeded += 1
        self.progress.spent_micros += cost
        return True

    async def _store_kept(self, task: Task) -> bool:
        """A paid image an earlier run kept on this disk when the bucket refused it: stored now, and the task
        settled (True); False when this machine keeps none for the task."""
        kept = self._unsaved_path(task)
        try:
            data = await asyncio.to_thread(kept.read_bytes)
        except OSError:
            return False
        info = sniff(data)
        if info is None:
            return False
        sink = MemorySink()
        sink.write(data)
        if await self._store_remote(task, sink, info, None, only_copy=True):
            await asyncio.to_thread(kept.unlink, True)
        return True

    async def _stray_to_bucket(self, stray: Stray, name: str, sink: MemorySink, info: ImageInfo) -> None:
        """A stray's paid image, kept in the bucket under `name` (`NAME.dup-HANDLE.png`)."""
        try:
            written = await write_once(self._key(name, info), sink.data, sink.sha256)
        except OutputError as e:
            await self.store.stray_done(stray, "failed", self._now(), billed=True,
                                        detail=f"paid duplicate, image not stored: {e.message}")  # fmt: skip
            return
        await self.store.stray_done(stray, "succeeded", self._now(), billed=True, output_path=written.location,
                                    sha256=sink.sha256)  # fmt: skip


def _keep(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = AtomicFile(path, whole=True)
    sink.write(data)
    sink.finish(path)
