"""The storage verbs put together for outputs: prove a destination writable before paying, write an image under a
name nobody else holds, and turn a backend's failure into one line that names the bucket (never a secret)."""

from __future__ import annotations

import hashlib
import posixpath
import uuid
from dataclasses import dataclass

from batcher.errors import DestinationError, OutputError
from batcher.storage import ObjectExists, backend, is_remote, join, split

PROBE_PREFIX = ".batcher-probe-"


@dataclass(frozen=True)
class Written:
    location: str  # where the image is: its task's own name, or a derived one
    note: str | None = None  # why it is not under its own name


def where(location: str) -> str:
    """`s3://BUCKET` for messages: the bucket, not the key."""
    scheme, bucket, _ = split(location)
    return f"{scheme}://{bucket}" if is_remote(location) else location


def failure(location: str, e: BaseException) -> OutputError:
    """One line naming the bucket and the cause."""
    if isinstance(e, FileNotFoundError):
        cause = "the bucket does not exist"
    elif isinstance(e, PermissionError):
        cause = f"the credentials may not write there ({_first_line(e)})"
    else:
        cause = f"{type(e).__name__}: {_first_line(e)}"
    return OutputError(f"cannot write to {where(location)}: {cause}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


async def probe(root: str, endpoint: str | None = None) -> None:
    """Write and delete a small object under `root`: the bucket exists and these credentials may write there.
    `endpoint`: the object store's own URL (an emulator's), over the environment's. Raises DestinationError
    (exit 2) naming the bucket and the cause."""
    if not is_remote(root):
        return
    store = backend(root, endpoint)
    probe_at = join(root, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    try:
        await store.put_new(probe_at, b"batcher write probe\n")
        await store.delete(probe_at)
        # a run killed between its probe's write and delete left one: gone now (one list of that name prefix)
        for left in await store.list(root, PROBE_PREFIX):
            await store.delete(left.location)
    except ObjectExists:
        await store.delete(probe_at)
    except DestinationError:
        raise
    except Exception as e:
        raise DestinationError(failure(root, e).message) from None


def derived(location: str, sha256: str) -> str:
    """`NAME.dup-SHA12.EXT` beside `NAME.EXT`: where an image goes when its own name holds another's object."""
    head, ext = posixpath.splitext(location)
    return f"{head}.dup-{sha256[:12]}{ext or '.png'}"


async def write_once(location: str, data: bytes, sha256: str | None = None) -> Written:
    """Write `data` at `location` by conditional create, never replacing an object that is not these bytes.
    An object already there with the same sha256 is this task's own (written before a crash). A foreign one is
    left untouched, and the image kept under `derived(...)`, with a note saying why. Raises OutputError."""
    store = backend(location)
    sha = sha256 or hashlib.sha256(data).hexdigest()  # `sha256`: the bytes' hash, when the caller has it
    for at in (location, derived(location, sha)):
        try:
            await store.put_new(at, data)
            return Written(at, None if at == location else _note(location, at))
        except ObjectExists:
            try:
                there = await store.read(at)
            except Exception as e:
                raise failure(at, e) from None
            if hashlib.sha256(there).hexdigest() == sha:
                return Written(at, None if at == location else _note(location, at))
        except Exception as e:
            raise failure(at, e) from None
    raise OutputError(f"cannot write {location}: both it and {derived(location, sha)} hold other objects")


def _note(own: str, kept: str) -> str:
    return f"an object this task did not write is at {own}; it was left unchanged and the image kept as {kept}"
