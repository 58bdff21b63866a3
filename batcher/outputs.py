"""Writing downloaded images: a temporary file beside the target, fsync, atomic rename; bytes never re-encoded
(the C2PA manifest lives in them)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import uuid
from pathlib import Path, PurePath
from typing import TypeVar

from batcher.errors import OutputError
from batcher.imageinfo import SNIFF_BYTES, ImageInfo, extension, sniff

P = TypeVar("P", bound=PurePath)  # a local path, or an object's key (PurePosixPath)
_KNOWN_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}


def target_path(output_dir: Path, filename: str) -> Path:
    """`filename` under `output_dir`, refusing anything that would land outside it.

    Checked on the normalised text, not with resolve(): one lstat per path component per image cost more than
    the rest of a task's bookkeeping. The manifest already refuses `..`, absolute names and control characters;
    this is the last line of defence against a hand-edited store."""
    root = os.path.normpath(os.path.abspath(output_dir))
    path = os.path.normpath(os.path.join(root, filename))
    if os.path.isabs(filename) or path == root or not path.startswith(root + os.sep):
        raise OutputError(f"file name {filename!r} would leave the output directory {output_dir}")
    return Path(path)


def with_real_extension(path: P, info: ImageInfo) -> P:
    """The API may send JPEG where the template says .png: name the file for what it is."""
    ext = extension(info.format)
    if path.suffix.lower() == ext or (info.format == "jpeg" and path.suffix.lower() == ".jpeg"):
        return path
    if path.suffix.lower() in _KNOWN_EXTENSIONS:
        return path.with_suffix(ext)
    return path.with_name(path.name + ext)


class AtomicFile:
    """A download in progress. `finish()` verifies it is an image and renames it into place."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            try:
                self._file = open(self._tmp, "xb")
            except FileNotFoundError:  # the first file of its folder: make the folder (not a syscall per file)
                final.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self._tmp, "xb")
        except OSError as e:
            raise _output_error(e, final) from None
        self._sha = hashlib.sha256()
        self._head = bytearray()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
        self._sha.update(chunk)
        self.size += len(chunk)
        try:
            self._file.write(chunk)
        except OSError as e:
            self.discard()
            raise _output_error(e, self.final) from None

    def image(self) -> ImageInfo | None:
        return sniff(bytes(self._head))

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def finish(self, final: Path) -> None:
        """Durably move the bytes to `final` (blocking: run it in a thread)."""
        self.move(final)
        try:
            fsync_folder(final.parent)
        except OSError as e:
            raise _output_error(e, final) from None

    def move(self, final: Path) -> None:
        """Make the bytes durable and rename them to `final`; the rename is durable once its folder is synced."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, final)
        except OSError as e:
            self.discard()
            raise _output_error(e, final) from None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


class MemorySink:
    """A download bound for object storage: held in memory (an image is a few MB) and hashed as it arrives, then
    written in one conditional PUT, so that no partial object can ever stand under a task's name. Its chunks are
    joined once, when the bytes are asked for: one copy of the image, not two."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._head = bytearray()
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
        self._chunks.append(chunk)
        self._sha.update(chunk)
        self.size += len(chunk)

    def image(self) -> ImageInfo | None:
        return sniff(bytes(self._head))

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def data(self) -> bytes:
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Finisher:
    """Finishes downloads off the loop. Files that finish while the thread is busy all go on its next trip:
    one hand-over between threads, and one fsync per folder, for many files."""

    def __init__(self) -> None:
        self._waiting: list[tuple[AtomicFile, Path, asyncio.Future[None]]] = []
        self._trips: asyncio.Task[None] | None = None

    async def finish(self, sink: AtomicFile, final: Path) -> None:
        """`sink.finish(final)`, shared with others. The file is finished even if the caller is cancelled."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting.append((sink, final, fut))
        if self._trips is None or self._trips.done():
            self._trips = loop.create_task(self._run_trips(), name="batcher-finisher")
        await fut

    async def _run_trips(self) -> None:
        while self._waiting:
            trip, self._waiting = self._waiting, []
            errors = await asyncio.to_thread(_finish_all, [(sink, final) for sink, final, _ in trip])
            for (_, _, fut), error in zip(trip, errors, strict=True):
                if fut.done():  # its caller was cancelled: the file is in place all the same
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)


def _finish_all(files: list[tuple[AtomicFile, Path]]) -> list[OutputError | None]:
    errors: list[OutputError | None] = [None] * len(files)
    folders: dict[Path, list[int]] = {}
    for i, (sink, final) in enumerate(files):
        try:
            sink.move(final)
        except OutputError as e:
            errors[i] = e
            continue
        folders.setdefault(final.parent, []).append(i)
    for folder, moved in folders.items():
        try:
            fsync_folder(folder)
        except OSError as e:
            for i in moved:
                errors[i] = _output_error(e, files[i][1])
    return errors


def sweep_stale_parts(output_dir: Path, older_than_s: float, now: float) -> int:
    """Remove downloads a killed process left half-written (`.NAME.xxxx.part`) once they are surely abandoned;
    returns how many. Blocking: run it in a thread."""
    removed = 0
    stack = [str(output_dir)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.name.startswith(".") and entry.name.endswith(".part"):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                        os.unlink(entry.path)
                        removed += 1
    return removed


def _output_error(e: OSError, path: Path) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left for {path}: free space, then run again to resume")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {path}: permission denied; fix the output directory, then resume")
    return OutputError(f"cannot write {path}: {e.strerror}")
