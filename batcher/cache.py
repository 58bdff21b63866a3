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
import contextlib
import enum
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import RowMapping

from batcher.imageinfo import SNIFF_BYTES, ImageInfo, sniff
from batcher.manifest.inputs import InputProblem, ParentOutput, resolve
from batcher.models import FROM_REF, LOCAL_REF, Failure, TaskStatus, parent_of
from batcher.outputs import AtomicFile, target_path, with_real_extension
from batcher.storage import backend, is_remote, join
from batcher.storage.objects import failure, write_once
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


async def prepare(store: Store, task: Task, output_dir: Path | str, *, use_cache: bool) -> Prepared:
    """Settle `task` without the API if its input failed or the cache has it; else ready its inputs.
    `output_dir`: a folder, or a bucket URI (`s3://BUCKET/PREFIX`)."""
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
    given = None if parent is None else await _parent_output(parent)
    try:
        images = await asyncio.to_thread(resolve, task.images, given)
    except InputProblem as problem:
        await store.failed(task, f"input image not usable: {problem.message}", None, time.time(), failure=Failure.INPUT)
        return Prepared(Outcome.FAILED)
    return Prepared(Outcome.READY, images)


async def _parent_output(parent: RowMapping) -> ParentOutput:
    """The parent's recorded output; its bytes fetched when another machine stored them in a bucket."""
    data = None
    if is_remote(parent["output_path"]):
        try:
            data = await backend(parent["output_path"]).read(parent["output_path"])
        except FileNotFoundError:
            pass  # said "missing" by `resolve`, as a local file would be
        except Exception as e:
            raise failure(parent["output_path"], e) from None
    return ParentOutput(_label(parent["name"], parent["key"]), parent["output_path"], parent["sha256"], data)


async def request_images(store: Store, task: Task) -> tuple[str, ...] | None:
    """The task's `images` as its create sends them (inputs inlined), changing nothing in the store; None when
    an input cannot be read now. For writing a request again (a Batch Mode shard planned on another machine)."""
    if not any(ref.startswith((FROM_REF, LOCAL_REF)) for ref in task.images):
        return task.images
    parent = await store.parent_row(task) if parent_of(task.images) is not None else None
    given = None if parent is None or parent["output_path"] is None else await _parent_output(parent)
    try:
        return await asyncio.to_thread(resolve, task.images, given)
    except InputProblem:
        return None


async def _from_cache(store: Store, task: Task, output_dir: Path | str) -> bool:
    root = str(output_dir)
    target = None if is_remote(root) else target_path(Path(root), task.filename)
    for candidate in await store.cache_candidates(task.key, task.id):
        if target is None or is_remote(candidate.path):
            copied = await copy_object(candidate.path, candidate.sha256, root, task.filename)
        else:
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


async def copy_object(source: str, sha256: str, root: str, filename: str) -> Copied | None:
    """`copy_verified` where the source or the target is in a bucket: the source is read and checked (sha256,
    an image), then written to the target by conditional create: never overwriting an object there, even one
    written meanwhile. None when the source is gone or changed."""
    try:
        data = await backend(source).read(source)
    except Exception:  # gone, or unreadable from here: the task is generated anew
        return None
    info = sniff(data[:SNIFF_BYTES])
    if info is None or hashlib.sha256(data).hexdigest() != sha256:
        return None
    name = str(with_real_extension(PurePosixPath(filename), info))
    target = join(root, name) if is_remote(root) else str(target_path(Path(root), name))
    if not is_remote(target):  # a local job reusing a bucket's image: written as every local output is
        await asyncio.to_thread(_write_local, Path(target), data)
        return Copied(target, sha256, len(data), info)
    # a conditional create of the bytes just read and checked, not a server-side copy: a copy is conditional on
    # neither test server (moto and fake-gcs-server both ignore If-None-Match / ifGenerationMatch=0 on it), and
    # a check for absence followed by a plain copy could replace an object written in between
    written = await write_once(target, data, sha256)
    return Copied(written.location, sha256, len(data), info)


def _write_local(target: Path, data: bytes) -> None:
    sink = AtomicFile(target, whole=True)
    sink.write(data)
    sink.finish(target)


@dataclass(frozen=True)
class Saved:
    path: str
    sha256: str
    size: int
    info: ImageInfo


MTIME_SLACK_S = 2.0  # file systems that keep modification times to the second (or two, FAT), seconds


def saved_image(target: Path, not_before: float | None = None) -> tuple[Saved | None, list[Path]]:
    """The image a run left under `target`'s name (any image extension), and the other files standing under
    those names. Only a whole, verified image is ever renamed to a final name, so an image found there, written
    after `not_before` (the task's submission, on this host's clock), was written by the task of that name; an
    older one, or one that is not an image, was not. Blocking."""
    saved: Saved | None = None
    others: list[Path] = []
    for path in dict.fromkeys([target, *(target.with_suffix(ext) for ext in (".png", ".jpg", ".jpeg", ".webp"))]):
        try:
            with path.open("rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                data = f.read()
        except OSError:
            continue
        info = sniff(data)
        fresh = not_before is None or mtime >= not_before - MTIME_SLACK_S
        if saved is None and info is not None and fresh:
            saved = Saved(str(path), hashlib.sha256(data).hexdigest(), len(data), info)
        else:
            others.append(path)
    return saved, others


async def adopt_saved(
    store: Store, task: Task, output_dir: Path, cost_micros: int, now: float, *, not_before: float | None = None
) -> bool:
    """A run killed between renaming a submitted task's image into place and committing it (its billing too,
    perhaps) left the image under the task's name: a resume takes it as the task's output (read back and
    verified: an image, written after the task's submission `not_before`, recorded by no other task) instead of
    fetching it again. True when the task succeeded so. When none is taken, what else stands under the task's
    names and no other task records is removed: the task is fetched again, and must end with its own image
    there or with nothing, never with an unclaimed file beside its failure."""
    saved, others = await asyncio.to_thread(saved_image, target_path(output_dir, task.filename), not_before)
    if saved is not None and not await store.output_taken(saved.path, task.id):
        await store.succeeded(task, output_path=saved.path, sha256=saved.sha256, size=saved.size,
                              width=saved.info.width, height=saved.info.height, fmt=saved.info.format,
                              cost_micros=cost_micros, call=None, now=now)  # fmt: skip
        return True
    for path in others:
        if not await store.output_taken(str(path), task.id):
            await asyncio.to_thread(_remove, path)
    return False


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _label(name: str | None, key: str) -> str:
    return f"'{name}'" if name else key[:12]
