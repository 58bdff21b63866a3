"""Where outputs live: a local folder, an S3 bucket (`s3://BUCKET/PREFIX`) or a Cloud Storage bucket
(`gs://BUCKET/PREFIX`), behind one set of verbs (`base.Storage`). `backend(location)` gives the one that holds a
location; `close_all()` releases the connections this event loop opened. A client that stages files on a server of its own
(an emulator's Cloud Storage) names its `endpoint`: a backend of its own, anonymous, as Google's libraries speak to
an emulator."""

from __future__ import annotations

import asyncio

from batcher.storage.base import REMOTE_SCHEMES, Listed, ObjectExists, Storage, is_remote, join, split
from batcher.storage.local import LocalStorage

__all__ = [
    "REMOTE_SCHEMES", "Listed", "ObjectExists", "Storage", "backend", "close_all", "is_remote", "join", "split",
]  # fmt: skip

_LOCAL = LocalStorage()
# by (event loop, scheme, endpoint): an async client belongs to its loop
_OPEN: dict[tuple[int, str, str | None], Storage] = {}


def backend(location: str, endpoint: str | None = None) -> Storage:
    """The backend holding `location` (a path, or an `s3://` / `gs://` URI); `endpoint`: the object store's own
    URL (`http://HOST:PORT` of an emulator) over the environment's."""
    if not is_remote(location):
        return _LOCAL
    from batcher.storage.remote import FsspecStorage

    scheme = split(location)[0]
    key = (id(asyncio.get_running_loop()), scheme, endpoint)
    found = _OPEN.get(key)
    if found is None:
        found = _OPEN[key] = FsspecStorage(scheme, endpoint)
    return found


async def close_all() -> None:
    """Close the clients opened on the running loop (before it ends, so that no connection is left unclosed)."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _OPEN if k[0] == loop]:
        await _OPEN.pop(key).close()
