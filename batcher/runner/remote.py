"""Saving images to object storage (`s3://`, `gs://`): fetched into memory, then one conditional create under the
task's own key (prefix + the file name it would get locally). An object there that this task did not write is
never replaced; a failed upload leaves the task "paid, not saved" for `retry --only download`."""

from __future__ import annotations

from pathlib import PurePosixPath

from batcher.errors import OutputError
from batcher.imageinfo import ImageInfo
from batcher.models import CallRecord, Failure
from batcher.outputs import MemorySink, with_real_extension
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

    async def _store_remote(self, task: Task, sink: MemorySink, info: ImageInfo, call: CallRecord | None) -> None:
        """Write a fetched image to the bucket and settle the task: succeeded, or paid but not stored."""
        try:
            written = await write_once(self._key(task.filename, info), sink.data, sink.sha256)
        except OutputError as e:  # retried with backoff already: paid, not saved; `retry --only download` ends it
            await self.store.failed(task, f"paid, but the image could not be stored: {e.message}", call,
                                    self._now(), failure=Failure.DOWNLOAD)  # fmt: skip
            self.progress.failed += 1
            log.warning("task %s: %s", task.key, e.message)
            return
        if written.note:
            log.warning("task %s: %s", task.key, written.note)
        cost = self._cost(task)
        await self.store.succeeded(task, output_path=written.location, sha256=sink.sha256, size=sink.size,
                                   width=info.width, height=info.height, fmt=info.format, cost_micros=cost,
                                   call=call, now=self._now(), note=written.note)  # fmt: skip
        self.progress.succeeded += 1
        self.progress.spent_micros += cost

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
