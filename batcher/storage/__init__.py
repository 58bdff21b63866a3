"""Where outputs live: a local folder, an S3 bucket (`s3://BUCKET/PREFIX`) or a Cloud Storage bucket
(`gs://BUCKET/PREFIX`), behind one set of verbs (`base.Storage`). `backend(location)` gives the one that holds a
location; `close_all()` releases the connections this event loop opened."""

from __future__ import annotations

import asyncio

from batcher.storage.base import REMOTE_SCHEMES, Listed, ObjectExists, Storage, is_remote, join, split
from batcher.storage.local import LocalStorage

__all__ = [
    "REMOTE_SCHEMES", "Listed", "ObjectExists", "Storage", "backend", "close_all", "is_remote", "join", "split",
]  # fmt: skip

_LOCAL = LocalStorage()
_OPEN: dict[tuple[int, str], Storage] = {}  # by (event loop, scheme): an async client belongs to its loop


def backend(location: str) -> Storage:
    """The backend holding `location` (a path, or an `s3://` / `gs://` URI)."""
    if not is_remote(location):
        return _LOCAL
    from batcher.storage.remote import FsspecStorage

    scheme = split(location)[0]
    key = (id(asyncio.get_running_loop()), scheme)
    found = _OPEN.get(key)
    if found is None:
        found = _OPEN[key] = FsspecStorage(scheme)
    return found


async def close_all() -> None:
    """Close the clients opened on the running loop (before it ends, so that no connection is left unclosed)."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _OPEN if k[0] == loop]:
        await _OPEN.pop(key).close()
