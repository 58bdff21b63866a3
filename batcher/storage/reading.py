"""Reading outputs back wherever they are: for thumbnails (from worker threads), signed links for the HTML
report, and `batcher pull`, which copies a job's outputs to a local folder checking each sha256."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from batcher.errors import BatcherError, OutputError
from batcher.outputs import AtomicFile, target_path
from batcher.storage import backend, is_remote

PULL_CONCURRENCY = 8  # objects fetched at once by `pull`


def fetcher(loop: asyncio.AbstractEventLoop) -> Callable[[str], bytes]:
    """A blocking read of a bucket's object, for threads while `loop` runs (the clients belong to the loop)."""

    async def read(location: str) -> bytes:
        return await backend(location).read(location)  # the backend of `loop`: looked up there

    def fetch(location: str) -> bytes:
        return asyncio.run_coroutine_threadsafe(read(location), loop).result()

    return fetch


async def signed_links(files: Iterable[str], expires_s: int) -> dict[str, str]:
    """A time-limited signed HTTPS URL for each bucket object in `files` (local files need none)."""
    links: dict[str, str] = {}
    for location in files:
        if is_remote(location):
            links[location] = await backend(location).browser_url(location, expires_s)
    return links


def expires_label(expires_s: int) -> str:
    """When links signed now stop working, for the page that shows them."""
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_s)
    return at.strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Pulled:
    copied: int = 0
    present: int = 0  # already in the folder with the right sha256
    refused: list[str] = field(default_factory=list)  # one line per object missing or not what was recorded


def local_name(location: str, root: str) -> str:
    """The file's name under the job's root (its name on a local disk), else its last component."""
    prefix = root.rstrip("/") + ("/" if is_remote(root) else os.sep)
    if location.startswith(prefix):
        return location[len(prefix) :]
    return location.rsplit("/", 1)[-1]


async def pull(outputs: Iterable[tuple[str, str | None]], root: str, folder: str) -> Pulled:
    """Copy each (location, sha256) to `folder` under its name below `root`, verified; never a half file."""
    done = Pulled()
    gate = asyncio.Semaphore(PULL_CONCURRENCY)

    async def one(location: str, sha256: str | None) -> None:
        target = target_path(Path(folder), local_name(location, root))
        async with gate:
            if sha256 is not None and await asyncio.to_thread(_sha_of, target) == sha256:
                done.present += 1
                return
            try:
                data = await backend(location).read(location)
            except FileNotFoundError:
                done.refused.append(f"{location}: missing")
                return
            except Exception as e:  # the bucket's own failure: said per object, the rest go on
                done.refused.append(f"{location}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                return
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
                done.refused.append(f"{location}: sha256 differs from the one recorded; not copied")
                return
            await asyncio.to_thread(_write, target, data)
            done.copied += 1

    results = await asyncio.gather(*(one(loc, sha) for loc, sha in outputs), return_exceptions=True)
    for r in results:
        if isinstance(r, BatcherError):
            raise r
        if isinstance(r, BaseException):
            raise OutputError(f"cannot pull into {folder}: {r}")
    return done


def _sha_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _write(target: Path, data: bytes) -> None:
    sink = AtomicFile(target, whole=True)
    sink.write(data)
    sink.finish(target)
