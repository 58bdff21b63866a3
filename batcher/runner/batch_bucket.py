"""Batch Mode when the job's outputs are in a bucket: no worker depends on another machine's disk.

A shard's JSONL is only needed between its planning and its upload. It is written to this machine's temporary
folder, and a worker that takes over a planned shard whose file is not on its own disk writes it again from the
store (the tasks' prompts, settings and input images, the parent's fetched from the bucket). Each result line's
image goes to the bucket by conditional create, as an online run's does; one that cannot be stored stops the run
before its line is settled, so a later run collects the shard again (its results file stays at the API)."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from batcher import cache
from batcher.imageinfo import SNIFF_BYTES, ImageInfo, sniff
from batcher.models import Failure
from batcher.outputs import with_real_extension
from batcher.providers.base import BatchClient, Request
from batcher.storage import join
from batcher.storage.objects import Written, write_once
from batcher.store import Job, Store, Submission, Task


def shard_folder(job: Job, shards_dir: str) -> Path:
    """Where a bucket job's shard files wait for their upload on this machine."""
    return Path(tempfile.gettempdir()) / "batcher" / f"job-{job.id}" / shards_dir


async def rebuild_shard_file(store: Store, client: BatchClient, tasks: Iterable[Task], path: Path) -> bool:
    """Write a planned shard's JSONL again from the store; False when a request cannot be made again now (an
    input gone), and the shard is then abandoned as a lost file is (its tasks go back to pending, unbilled)."""
    items: list[tuple[str, Request]] = []
    for task in tasks:
        images = await cache.request_images(store, task)
        if images is None:
            return False
        items.append((task.key, Request(task.model, task.prompt, task.quality, task.size, images)))
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    written = await asyncio.to_thread(client.write_shard, path, items)
    return not written.invalid


@dataclass(frozen=True)
class StoredLine:
    written: Written
    sha256: str
    size: int
    info: ImageInfo


async def store_line(root: str, filename: str, data: bytes) -> StoredLine | None:
    """A result line's image, written under `filename` (a task's, or a known duplicate's) in the bucket; None when
    the bytes are no image. Raises OutputError when the bucket will not take it (after its retries)."""
    info = sniff(data[:SNIFF_BYTES])
    if info is None:
        return None
    name = with_real_extension(PurePosixPath(filename), info)
    sha = hashlib.sha256(data).hexdigest()
    return StoredLine(await write_once(join(root, str(name)), data, sha), sha, len(data), info)


async def bucket_line(store: Store, sub: Submission, task: Task, data: bytes, root: str, now: float) -> bool:
    """Settle a result line of a bucket job: its image stored and the line succeeded (True), or the line failed
    as paid but unusable when its bytes are no image (False). Raises OutputError when the bucket refuses it."""
    stored = await store_line(root, task.filename, data)
    if stored is None:
        await store.shard_line_failed(sub, task, Failure.DOWNLOAD, "paid, but the line's bytes are not an image; "
                                      "nothing was written", billed=True, now=now)  # fmt: skip
        return False
    info = stored.info
    await store.shard_line_succeeded(sub, task, output_path=stored.written.location, sha256=stored.sha256,
                                     size=stored.size, width=info.width, height=info.height, fmt=info.format,
                                     cost_micros=sub.price_each, now=now)  # fmt: skip
    return True
