"""Writing downloaded images: a temporary file beside the target, fsync, atomic rename; bytes never re-encoded
(the C2PA manifest lives in them)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import mmap
import os
import threading
import uuid
from pathlib import Path, PurePath
from typing import Any, BinaryIO, TypeVar

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
    """A download in progress. `finish()` renames it into place once its bytes are durable.

    A download is written and hashed piece by piece as it comes, so a long one never sits whole in memory. An
    image that comes `whole` (a reply's, a batch line's, bytes already in memory) is held as it is, then hashed
    and written in one go when the file is finished, off the event loop (`Finisher`), past the page cache where
    the filesystem allows (`write_new`): nothing is on disk before then (a second piece would be written as a
    download's are), and an output folder that cannot be written is found then."""

    def __init__(self, final: Path, *, whole: bool = False) -> None:
        self.final = final
        self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
        self._held: bytes | None = None  # the one piece of a whole image
        self._file: BinaryIO | None = None if whole else _create(self._tmp, final)
        self._sha: Any = None if whole else hashlib.sha256()  # hashlib's running sha256 of the pieces written
        self._digest: str | None = None
        self._head = b""
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._digest = None
        if self._file is None and self._held is None and not self.size:
            self._held = chunk if type(chunk) is bytes else bytes(chunk)
            self._head = self._held[:SNIFF_BYTES]
            self.size = len(self._held)
            return
        if self._file is None:  # a second piece of a "whole" image: from now on, written as it comes
            self._file = _create(self._tmp, self.final)
            self._sha = hashlib.sha256()
            held, self._held = self._held, None
            if held:
                self._piece(held)
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
        self.size += len(chunk)
        self._piece(chunk)

    def _piece(self, chunk: bytes) -> None:
        assert self._file is not None
        self._sha.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as e:
            self.discard()
            raise _output_error(e, self.final) from None

    def image(self) -> ImageInfo | None:
        return sniff(self._head)

    @property
    def sha256(self) -> str:
        if self._digest is None:
            self._digest = (
                self._sha.hexdigest() if self._sha is not None else hashlib.sha256(self._held or b"").hexdigest()
            )
        return self._digest

    def finish(self, final: Path) -> None:
        """Durably move the bytes to `final` (blocking: run it in a thread)."""
        self.move(final)
        try:
            fsync_folder(final.parent)
        except OSError as e:
            raise _output_error(e, final) from None

    def move(self, final: Path) -> None:
        """Make the bytes durable and rename them to `final`; the rename is durable once its folder is synced.
        Blocking: hashing, writing and syncing all free the GIL, so files finish in parallel in threads."""
        try:
            if self._file is None:
                _ = self.sha256  # hashed here, off the event loop
                write_new(self._tmp, self.final, self._held or b"")
            else:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            os.replace(self._tmp, final)
        except OSError as e:
            self.discard()
            raise _output_error(e, final) from None
        self._held = None

    def discard(self) -> None:
        self._held = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def _create(tmp: Path, final: Path) -> BinaryIO:
    try:
        try:
            return open(tmp, "xb")
        except FileNotFoundError:  # the first file of its folder: make the folder (not a syscall per file)
            final.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "xb")
    except OSError as e:
        raise _output_error(e, final) from None


# O_DIRECT wants the buffer's address, the length and the offset aligned to the device's logical block: a page
# (4 KiB) is a multiple of every common one. Where the filesystem refuses it, the bytes go the usual way.
DIRECT_ALIGN = 4096
_DIRECT = getattr(os, "O_DIRECT", 0)
_MIB = 1 << 20
_buffers = threading.local()  # each thread's aligned buffer, kept: memory touched once, not once per image


def write_new(path: Path, final: Path, data: bytes) -> None:
    """Create `path` (its folder too, if need be) holding `data`, synced to disk. Raises OSError.

    The whole pages of `data` go past the page cache (O_DIRECT, from an aligned buffer this thread keeps), the
    last partial page through it. An image is written once and not read back: copying it into the page cache
    only to write it out costs a copy and fresh pages for every file (about 2 ms for 1.5 MB on a virtual machine
    whose guest must fault each new page in; bench/google_reply.py), and pushes out what the cache held."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        done = _write_direct(fd, data) if len(data) >= DIRECT_ALIGN else 0
        view = memoryview(data)
        while done < len(data):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_direct(fd: int, data: bytes) -> int:
    """The whole pages of `data` written with O_DIRECT; how many bytes were (0: the filesystem refused it). The
    file is left without O_DIRECT, for the rest to be written the usual way."""
    if not _DIRECT:
        return 0
    import fcntl  # where O_DIRECT is (Linux), fcntl is too

    whole = len(data) - len(data) % DIRECT_ALIGN
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _DIRECT)
    except OSError:  # EINVAL: this filesystem has no direct I/O (tmpfs before Linux 6.6, ...)
        return 0
    try:
        buf = _aligned_buffer(whole)
        buf[:whole] = memoryview(data)[:whole]
        with memoryview(buf) as view:
            return os.write(fd, view[:whole])  # short only if interrupted: the rest goes the usual way
    except OSError as e:
        if e.errno != errno.EINVAL:  # a real write error (no space, ...): the caller's to report
            raise
        os.lseek(fd, 0, os.SEEK_SET)  # an alignment this device does not take: the usual way, from the start
        return 0
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _aligned_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned buffer of at least `size` bytes (an anonymous mapping is page-aligned)."""
    buf: mmap.mmap | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = _buffers.buf = mmap.mmap(-1, -(-size // _MIB) * _MIB)
    return buf


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
    """Finishes files off the loop. The files waiting when a trip starts are written and synced in parallel
    threads (hashing, writing and syncing free the GIL: one file's sync overlaps another's hashing), then each
    folder is synced once for all of them. Files that come while a trip runs go on the next one."""

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
            errors = await _finish_all([(sink, final) for sink, final, _ in trip])
            for (_, _, fut), error in zip(trip, errors, strict=True):
                if fut.done():  # its caller was cancelled: the file is in place all the same
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)


async def _finish_all(files: list[tuple[AtomicFile, Path]]) -> list[OutputError | None]:
    moved = await asyncio.gather(*(asyncio.to_thread(_move, sink, final) for sink, final in files))
    errors: list[OutputError | None] = list(moved)
    folders: dict[Path, list[int]] = {}
    for i, (_, final) in enumerate(files):
        if errors[i] is None:
            folders.setdefault(final.parent, []).append(i)
    synced = await asyncio.to_thread(_sync_folders, list(folders))
    for folder, error in zip(folders, synced, strict=True):
        if error is not None:
            for i in folders[folder]:
                errors[i] = _output_error(error, files[i][1])
    return errors


def _move(sink: AtomicFile, final: Path) -> OutputError | None:
    try:
        sink.move(final)
    except OutputError as e:
        return e
    return None


def _sync_folders(folders: list[Path]) -> list[OSError | None]:
    errors: list[OSError | None] = []
    for folder in folders:
        try:
            fsync_folder(folder)
        except OSError as e:
            errors.append(e)
        else:
            errors.append(None)
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
