"""The Cloud Storage objects the emulator keeps: buckets of named objects with generations (no HTTP here).

Buckets come into being with their first object (our choice: a self-contained emulator needs no bucket admin).
Every write makes a new generation; `if_generation_match` is Google's precondition (0: only if absent).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from batcher.emulator.gemini.files import rfc3339

GS_SCHEME = "gs://"


class PreconditionFailed(Exception):
    """The object's generation did not match ifGenerationMatch (HTTP 412)."""


@dataclass(slots=True)
class StoredObject:
    bucket: str
    name: str
    data: bytes
    generation: int
    content_type: str
    created_wall: float
    metadata: dict[str, str] = field(default_factory=dict)

    def resource(self, origin: str) -> dict[str, Any]:
        """The object resource of the JSON API; int64 fields are strings."""
        path = f"b/{quote(self.bucket, safe='')}/o/{quote(self.name, safe='')}"
        out: dict[str, Any] = {
            "kind": "storage#object",
            "id": f"{self.bucket}/{self.name}/{self.generation}",
            "selfLink": f"{origin}/storage/v1/{path}",
            "mediaLink": f"{origin}/download/storage/v1/{path}?generation={self.generation}&alt=media",
            "name": self.name,
            "bucket": self.bucket,
            "generation": str(self.generation),
            "metageneration": "1",
            "contentType": self.content_type,
            "storageClass": "STANDARD",
            "size": str(len(self.data)),
            "md5Hash": base64.b64encode(hashlib.md5(self.data, usedforsecurity=False).digest()).decode(),
            "timeCreated": rfc3339(self.created_wall),
            "updated": rfc3339(self.created_wall),
        }
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


def split_gs(uri: str) -> tuple[str, str]:
    """(bucket, object name) of ``gs://bucket/name``; raises ValueError."""
    if not uri.startswith(GS_SCHEME):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    bucket, _, name = uri[len(GS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, name


class ObjectStore:
    """Objects by bucket and name."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        self._generation = 1_700_000_000_000_000  # generations look like Google's (microseconds)

    def get(self, bucket: str, name: str) -> StoredObject | None:
        return self.buckets.get(bucket, {}).get(name)

    def put(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        wall: float,
        *,
        if_generation_match: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        """Write (or overwrite) an object; raises PreconditionFailed."""
        found = self.get(bucket, name)
        if if_generation_match is not None and (found.generation if found else 0) != if_generation_match:
            raise PreconditionFailed(name)
        self._generation += 1
        stored = StoredObject(bucket, name, data, self._generation, content_type, wall, metadata or {})
        self.buckets.setdefault(bucket, {})[name] = stored
        return stored

    def delete(self, bucket: str, name: str) -> bool:
        objects = self.buckets.get(bucket, {})
        return objects.pop(name, None) is not None

    def listing(self, bucket: str, prefix: str, delimiter: str) -> tuple[list[StoredObject], list[str]]:
        """Objects under `prefix` in name order, and with a delimiter the "folders" below it."""
        items: list[StoredObject] = []
        prefixes: set[str] = set()
        for name in sorted(self.buckets.get(bucket, {})):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest[: rest.index(delimiter) + len(delimiter)])
                continue
            items.append(self.buckets[bucket][name])
        return items, sorted(prefixes)
