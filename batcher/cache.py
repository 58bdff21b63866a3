"""Before a create: settle a task without the API when possible, and ready its input images when not.

Three things are decided here, in this order, for a task about to be created:
- chains: a task whose input task (`from:`) failed fails too ("input task X failed"); its own children then
  fail the same way when they are claimed, so a failed step stops exactly its descendants;
- the cache: a finished output of the same spec (same key, in any job) whose file is still there with its
  recorded sha256 is copied to this task's path (temporary file, fsync, rename) and the task succeeds at no
  cost, with `cached_from` naming the task whose output it reused. A corrupted or missing file is skipped;
- inputs: local files and the parent's output are read, checked and inlined as data: URIs (inputs.py).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from batcher.imageinfo import ImageInfo, sniff
from batcher.manifest.inputs import InputProblem, ParentOutput, resolve
from batcher.models import FROM_REF, LOCAL_REF, Failure, TaskStatus, parent_of
from batcher.outputs import AtomicFile, target_path, with_real_extension
from batcher.store import Store, Task

COPY_CHUNK_BYTES = 1 << 20


class Outcome(enum.Enum):
    READY = "ready"  # to be created; `Prepared.images` holds what the create sends
    CACHED = "cached"  # succeeded from the cache
    FAILED = "failed"  # failed for good (its input task failed, or an input cannot be read)
    WAITING = "waiting"  # its input task is not finished: let go of it (the claim will not hand it out again)


@dataclass(frozen=True)
class Prepared:
    outcome: Outcome
    images: tuple[str, ...] | None = None  # the API's values for `images`, when they differ from the references


@dataclass(frozen=True)
class Copied:
    path: str
    sha256: str
    size: int
    info: ImageInfo


async def prepare(store: Store, task: Task, output_dir: Path, *, use_cache: bool) -> Prepared:
    """Settle `task` without the API if its input failed or the cache has it; else ready its inputs."""
    parent = None
    if parent_of(task.images) is not None:
        parent = await store.parent_row(task)
        if parent is None:  # only a store filled by hand can hold one: a manifest names its parents
            await store.failed(task, "its input task is not in the job", None, time.time(), failure=Failure.INPUT)
            return Prepared(Outcome.FAILED)
        if parent["status"] == TaskStatus.FAILED:
            why = f": {parent['last_error']}" if parent["last_error"] else ""
            await store.failed(
                task,
                f"input task {_label(parent['name'], parent['key'])} failed{why}",
                None,
                time.time(),
                failure=Failure.INPUT,
            )
            return Prepared(Outcome.FAILED)
        if parent["status"] != TaskStatus.SUCCEEDED or parent["output_path"] is None:
            await store.release(task, time.time())
            return Prepared(Outcome.WAITING)
    if use_cache and await _from_cache(store, task, output_dir):
        return Prepared(Outcome.CACHED)
    if not any(ref.startswith((FROM_REF, LOCAL_REF)) for ref in task.images):
        return Prepared(Outcome.READY)
    given = None
    if parent is not None:
        given = ParentOutput(_label(parent["name"], parent["key"]), parent["output_path"], parent["sha256"])
    try:
        images = await asyncio.to_thread(resolve, task.images, given)
    except InputProblem as problem:
        await store.failed(task, f"input image not usable: {problem.message}", None, time.time(), failure=Failure.INPUT)
        return Prepared(Outcome.FAILED)
    return Prepared(Outcome.READY, images)


async def _from_cache(store: Store, task: Task, output_dir: Path) -> bool:
    target = target_path(output_dir, task.filename)
    for candidate in await store.cache_candidates(task.key, task.id):
        copied = await asyncio.to_thread(copy_verified, Path(candidate.path), candidate.sha256, target)
        if copied is None:
            continue  # gone or changed since it was recorded: try the next one, or generate anew
        await store.succeeded_from_cache(
            task, origin=candidate.task_id, output_path=copied.path, sha256=copied.sha256, size=copied.size,
            width=copied.info.width, height=copied.info.height, fmt=copied.info.format, now=time.time(),
        )  # fmt: skip
        return True
    return False


def copy_verified(source: Path, sha256: str, target: Path) -> Copied | None:
    """Copy `source` to `target` atomically if its bytes still have `sha256` and are an image; None (and nothing
    written) if not. Blocking: run it in a thread. Raises OutputError when the target cannot be written."""
    sink = AtomicFile(target)
    try:
        with source.open("rb") as f:
            while chunk := f.read(COPY_CHUNK_BYTES):
                sink.write(chunk)
    except OSError:
        sink.discard()
        return None
    info = sink.image()
    if info is None or sink.sha256 != sha256:
        sink.discard()
        return None
    final = with_real_extension(target, info)
    sink.finish(final)
    return Copied(str(final), sink.sha256, sink.size, info)


@dataclass(frozen=True)
class Saved:
    path: str
    sha256: str
    size: int
    info: ImageInfo


def saved_image(target: Path) -> Saved | None:
    """An image already in place under `target`'s name (any image extension). Only a whole, verified image is
    ever renamed to a final name, so one found there was written by the task of that name. Blocking."""
    for path in dict.fromkeys([target, *(target.with_suffix(ext) for ext in (".png", ".jpg", ".jpeg", ".webp"))]):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        info = sniff(data)
        if info is not None:
            return Saved(str(path), hashlib.sha256(data).hexdigest(), len(data), info)
    return None


async def adopt_saved(store: Store, task: Task, output_dir: Path, cost_micros: int, now: float) -> bool:
    """A run killed between renaming a paid task's image into place and committing it left the image under the
    task's name: a resume takes it as the task's output (read back and verified) instead of fetching it again,
    unless another task records that file as its own. True when the task succeeded so."""
    saved = await asyncio.to_thread(saved_image, target_path(output_dir, task.filename))
    if saved is None or await store.output_taken(saved.path, task.id):
        return False
    await store.succeeded(task, output_path=saved.path, sha256=saved.sha256, size=saved.size, width=saved.info.width,
                          height=saved.info.height, fmt=saved.info.format, cost_micros=cost_micros, call=None,
                          now=now)  # fmt: skip
    return True


def _label(name: str | None, key: str) -> str:
    return f"'{name}'" if name else key[:12]
