"""The Files API's store: uploaded files (a batch's JSONL input) and generated ones (a batch's results).

Uploads use Google's resumable protocol: a start request makes an upload session, then chunks arrive at its
URL with ``X-Goog-Upload-Offset``, the last one with ``X-Goog-Upload-Command: upload, finalize``. Files are
deleted `file_ttl_s` after creation (48 hours in the real service).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Source = Literal["UPLOADED", "GENERATED"]
FILES_PREFIX = "files/"


def rfc3339(wall: float) -> str:
    """A wall-clock time as Google's timestamps spell it."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class StoredFile:
    """One file of the Files API. A generated file's bytes are made when downloaded (`batch` names its batch)."""

    name: str  # files/<id>
    display_name: str
    mime_type: str
    size_bytes: int
    created_at: float  # emulator clock
    expires_at: float
    source: Source
    data: bytes = b""
    batch: str | None = None
    gone_status: int | None = None  # a responses file that is gone: files.get and the download answer this

    def resource(self, origin: str, version: str, offset_s: float) -> dict[str, Any]:
        """The File resource; `offset_s` turns the emulator's clock into wall time."""
        out: dict[str, Any] = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size_bytes),
            "createTime": rfc3339(self.created_at + offset_s),
            "updateTime": rfc3339(self.created_at + offset_s),
            "expirationTime": rfc3339(self.expires_at + offset_s),
            "sha256Hash": "",
            "uri": f"{origin}/{version}/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            out["displayName"] = self.display_name
        if self.source == "GENERATED":
            out["downloadUri"] = f"{origin}/download/{version}/{self.name}:download?alt=media"
        return out


@dataclass(slots=True)
class UploadSession:
    """A resumable upload in progress."""

    upload_id: str
    display_name: str
    mime_type: str
    declared_bytes: int | None
    received: bytearray = field(default_factory=bytearray)


class FileStore:
    """Files by name and upload sessions by id; expired files disappear when looked up (their names are
    remembered, since a file past its time answers 404 where one that never was answers 403)."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, UploadSession] = {}
        self.expired: set[str] = set()

    def get(self, name: str, now: float) -> StoredFile | None:
        found = self.files.get(name)
        if found is not None and now >= found.expires_at:
            del self.files[name]
            self.expired.add(name)
            return None
        return found

    def __contains__(self, name: object) -> bool:
        return name in self.files

    def add(self, stored: StoredFile) -> None:
        self.files[stored.name] = stored

    def delete(self, name: str, now: float) -> bool:
        if self.get(name, now) is None:
            return False
        del self.files[name]
        return True
