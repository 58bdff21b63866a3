"""The local folder behind the storage verbs. The runner's own hot path keeps `outputs.AtomicFile` (temporary
file, fsync, rename, one folder fsync per batch); these verbs serve the cache, reports, `pull` and the rest."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from batcher.storage.base import STREAM_CHUNK_BYTES, Listed, ObjectExists, Storage


class LocalStorage(Storage):
    """Files on this machine's disks; locations are absolute paths."""

    async def put_new(self, location: str, data: bytes) -> None:
        await asyncio.to_thread(put_new_file, Path(location), data)

    async def put_file(self, location: str, path: Path) -> int:
        await asyncio.to_thread(_copy, path, Path(location))
        return os.stat(location).st_size

    async def read(self, location: str) -> bytes:
        return await asyncio.to_thread(Path(location).read_bytes)

    async def stream(self, location: str, size: int, chunk_bytes: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        with open(location, "rb") as f:  # each read below is one chunk, in a thread
            while chunk := await asyncio.to_thread(f.read, chunk_bytes):
                yield chunk

    async def size(self, location: str) -> int | None:
        try:
            return os.stat(location).st_size
        except OSError:
            return None

    async def copy(self, source: str, target: str) -> None:
        await asyncio.to_thread(_copy, Path(source), Path(target))

    async def list(self, folder: str, prefix: str = "") -> list[Listed]:
        return await asyncio.to_thread(_walk, folder, prefix)

    async def delete(self, location: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(location)

    async def browser_url(self, location: str, expires_s: int) -> str:
        return Path(os.path.abspath(location)).as_uri()


def put_new_file(target: Path, data: bytes) -> None:
    """Write `data` to `target` unless a file is there: a temporary file, fsync, then a hard link (which, unlike
    a rename, refuses to replace), so the name only ever holds whole bytes. Raises ObjectExists."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise ObjectExists(str(target)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _copy(source: Path, target: Path) -> None:
    """Copy through a temporary file and a rename: the target name only ever holds whole bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _walk(folder: str, prefix: str) -> list[Listed]:
    found: list[Listed] = []
    for here, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(here, name)
            if os.path.relpath(path, folder).replace(os.sep, "/").startswith(prefix):
                with contextlib.suppress(OSError):
                    found.append(Listed(path, os.stat(path).st_size))
    return found
