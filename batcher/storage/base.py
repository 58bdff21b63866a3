"""The verbs every place that keeps or reads outputs uses, whatever holds them (a local folder, an S3 bucket, a
Cloud Storage bucket). A location is a full string: an absolute path, or `s3://BUCKET/KEY`, `gs://BUCKET/KEY`."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

REMOTE_SCHEMES = ("s3://", "gs://")
STREAM_CHUNK_BYTES = 8 << 20  # what `stream` holds of an object at a time


class ObjectExists(Exception):
    """A conditional create found an object already at the location."""


@dataclass(frozen=True)
class Listed:
    location: str
    size: int


def is_remote(location: str) -> bool:
    """True for an object-storage URI (`s3://`, `gs://`), False for a local path."""
    return location.startswith(REMOTE_SCHEMES)


def split(uri: str) -> tuple[str, str, str]:
    """`s3://bucket/a/b.png` -> ("s3", "bucket", "a/b.png")."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key


def join(root: str, name: str) -> str:
    """`name` (a relative file name, `/`-separated) under the root `root`."""
    return root.rstrip("/") + "/" + name.lstrip("/")


class Storage(abc.ABC):
    """One backend. Every verb takes full locations; none rewrites an image's bytes."""

    @abc.abstractmethod
    async def put_new(self, location: str, data: bytes) -> None:
        """Write `data` at `location` only if nothing is there (atomically: whole or not at all). Raises
        ObjectExists when something is."""

    @abc.abstractmethod
    async def put_file(self, location: str, path: Path) -> int:
        """Copy the local file `path` to `location` (replacing what is there), streamed: never whole in memory.
        The byte count written."""

    @abc.abstractmethod
    async def read(self, location: str) -> bytes:
        """The object's bytes. Raises FileNotFoundError when there is none."""

    @abc.abstractmethod
    def stream(self, location: str, size: int, chunk_bytes: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The object's `size` bytes (its size as listed), `chunk_bytes` at a time. Raises FileNotFoundError when
        there is none; any other failure part-way as the backend raises it."""

    @abc.abstractmethod
    async def size(self, location: str) -> int | None:
        """The object's byte count, or None when there is none."""

    @abc.abstractmethod
    async def copy(self, source: str, target: str) -> None:
        """Copy within this backend (server-side for a bucket): the bytes never pass through this process."""

    @abc.abstractmethod
    async def list(self, folder: str, prefix: str = "") -> list[Listed]:
        """Every object under `folder`, at any depth, whose name below it starts with `prefix`."""

    @abc.abstractmethod
    async def delete(self, location: str) -> None:
        """Remove the object; nothing happens when there is none."""

    @abc.abstractmethod
    async def browser_url(self, location: str, expires_s: int) -> str:
        """A URL a browser can open: a time-limited signed HTTPS URL for a bucket's object."""

    async def close(self) -> None:  # noqa: B027  (a backend with nothing to release keeps this)
        """Release connections."""
