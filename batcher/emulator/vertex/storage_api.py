"""The Cloud Storage JSON API over the emulator's ObjectStore: enough for gcsfs and Google's own libraries.

Served: object get (metadata, or ``alt=media`` with Range), list (prefix, delimiter, paging), delete, uploads
under ``/upload/storage/v1`` (``uploadType`` media, multipart and resumable), ``ifGenerationMatch`` (412), the
batch endpoint gcsfs deletes through, and bucket get/insert. No authentication is checked, as Google's own
storage emulators do not check it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from batcher.emulator.envelope import json_response
from batcher.emulator.vertex.stats import VertexStats
from batcher.emulator.vertex.storage import ObjectStore, PreconditionFailed, StoredObject

DEFAULT_MAX_RESULTS = 1000
DEFAULT_CONTENT_TYPE = "application/octet-stream"
BATCH_BOUNDARY = "batch_emulator"
_REASONS = {
    400: "invalid",
    404: "notFound",
    409: "conflict",
    412: "conditionNotMet",
    416: "requestedRangeNotSatisfiable",
}
_BATCH_DELETE = re.compile(r"DELETE\s+/storage/v1/b/([^/\s]+)/o/([^\s?]+)\S*\s+HTTP", re.IGNORECASE)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")


def storage_error(code: int, message: str) -> web.Response:
    """The JSON API's error body, with its legacy `errors` list."""
    reason = _REASONS.get(code, "backendError")
    error = {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}
    return json_response({"error": error}, code)


@dataclass(slots=True)
class Resumable:
    bucket: str
    name: str
    content_type: str
    if_generation_match: int | None
    metadata: dict[str, str]
    received: bytearray = field(default_factory=bytearray)


class StorageApi:
    """Handlers over one ObjectStore; `wall` gives the wall time stamped on objects."""

    def __init__(self, store: ObjectStore, stats: VertexStats, wall: Callable[[], float]) -> None:
        self.store = store
        self.stats = stats
        self.wall = wall
        self.sessions: dict[str, Resumable] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/storage/v1/b", self.insert_bucket)
        app.router.add_get("/storage/v1/b/{bucket}", self.get_bucket)
        app.router.add_get("/storage/v1/b/{bucket}/o", self.list_objects)
        app.router.add_get("/storage/v1/b/{bucket}/o/{name:.+}", self.get_object)
        app.router.add_get("/download/storage/v1/b/{bucket}/o/{name:.+}", self.get_object)
        app.router.add_delete("/storage/v1/b/{bucket}/o/{name:.+}", self.delete_object)
        app.router.add_post("/upload/storage/v1/b/{bucket}/o", self.upload)
        app.router.add_put("/upload/storage/v1/b/{bucket}/o", self.upload)
        app.router.add_post("/batch/storage/v1", self.batch)

    # -- buckets -------------------------------------------------------------------------------------------

    def _bucket(self, name: str) -> dict[str, Any]:
        return {"kind": "storage#bucket", "id": name, "name": name, "location": "US", "storageClass": "STANDARD"}

    async def insert_bucket(self, request: web.Request) -> web.Response:
        try:
            name = json.loads(await request.read())["name"]
        except (ValueError, KeyError, TypeError):
            return storage_error(400, "The bucket resource needs a name.")
        if not isinstance(name, str) or not name:
            return storage_error(400, "The bucket resource needs a name.")
        if name in self.store.buckets:
            return storage_error(
                409, "Your previous request to create the named bucket succeeded and you already own it."
            )
        self.store.buckets[name] = {}
        return json_response(self._bucket(name))

    async def get_bucket(self, request: web.Request) -> web.Response:
        name = request.match_info["bucket"]
        if name not in self.store.buckets:
            return storage_error(404, "The specified bucket does not exist.")
        return json_response(self._bucket(name))

    # -- objects -------------------------------------------------------------------------------------------

    async def list_objects(self, request: web.Request) -> web.Response:
        bucket = request.match_info["bucket"]
        if bucket not in self.store.buckets:
            return storage_error(404, "The specified bucket does not exist.")
        query = request.query
        try:
            size = int(query.get("maxResults", DEFAULT_MAX_RESULTS)) or DEFAULT_MAX_RESULTS
            token = query.get("pageToken", "")
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except (ValueError, binascii.Error):
            return storage_error(400, "Invalid maxResults or pageToken.")
        items, prefixes = self.store.listing(bucket, query.get("prefix", ""), query.get("delimiter", ""))
        # Objects and folders share the pages, objects first (our choice: Google interleaves them by name).
        entries: list[StoredObject | str] = [*items, *prefixes]
        page = entries[start : start + min(size, DEFAULT_MAX_RESULTS)]
        origin = f"{request.scheme}://{request.host}"
        out: dict[str, Any] = {"kind": "storage#objects"}
        objects = [e.resource(origin) for e in page if isinstance(e, StoredObject)]
        folders = [e for e in page if isinstance(e, str)]
        if objects:
            out["items"] = objects
        if folders:
            out["prefixes"] = folders
        if start + len(page) < len(entries):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + len(page)).encode()).decode()
        return json_response(out)

    def _found(self, request: web.Request) -> StoredObject | web.Response:
        bucket, name = request.match_info["bucket"], unquote(request.match_info["name"])
        stored = self.store.get(bucket, name)
        if stored is None:
            return storage_error(404, f"No such object: {bucket}/{name}")
        return stored

    async def get_object(self, request: web.Request) -> web.Response:
        stored = self._found(request)
        if isinstance(stored, web.Response):
            return stored
        media = request.query.get("alt") == "media" or request.path.startswith("/download/")
        if not media:
            return json_response(stored.resource(f"{request.scheme}://{request.host}"))
        data = stored.data
        headers = {"x-goog-generation": str(stored.generation), "Content-Type": stored.content_type}
        wanted = request.headers.get("Range")
        if wanted is None:
            return web.Response(body=data, headers=headers)
        found = _RANGE.match(wanted.strip())
        if found is None:
            return storage_error(416, "The requested range cannot be satisfied.")
        first, last = found.groups()
        if first == "":  # the last N bytes
            start, end = max(0, len(data) - int(last or 0)), len(data) - 1
        else:
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        if start >= len(data) and len(data) > 0:
            return storage_error(416, "The requested range cannot be satisfied.")
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return web.Response(status=206, body=data[start : end + 1], headers=headers)

    async def delete_object(self, request: web.Request) -> web.Response:
        bucket, name = request.match_info["bucket"], unquote(request.match_info["name"])
        if not self.store.delete(bucket, name):
            return storage_error(404, f"No such object: {bucket}/{name}")
        self.stats.objects_deleted += 1
        return web.Response(status=204)

    async def batch(self, request: web.Request) -> web.Response:
        """The batch endpoint, for the DELETEs gcsfs sends through it; each part answered in a multipart reply."""
        text = (await request.read()).decode("utf-8", "replace")
        parts: list[str] = []
        for number, (bucket, raw_name) in enumerate(_BATCH_DELETE.findall(text), start=1):
            name = unquote(raw_name)
            if self.store.delete(unquote(bucket), name):
                self.stats.objects_deleted += 1
                answer = "HTTP/1.1 204 No Content\r\n\r\n"
            else:
                body = json.dumps({"error": {"code": 404, "message": f"No such object: {bucket}/{name}"}})
                answer = f"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n{body}"
            parts.append(
                f"--{BATCH_BOUNDARY}\r\nContent-Type: application/http\r\n"
                f"Content-ID: <response-{number}>\r\n\r\n{answer}\r\n"
            )
        body = "".join(parts) + f"--{BATCH_BOUNDARY}--\r\n"
        return web.Response(body=body.encode(), headers={"Content-Type": f"multipart/mixed; boundary={BATCH_BOUNDARY}"})

    # -- uploads -------------------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        query = request.query
        bucket = request.match_info["bucket"]
        kind = query.get("uploadType", "")
        try:
            match = int(query["ifGenerationMatch"]) if "ifGenerationMatch" in query else None
        except ValueError:
            return storage_error(400, "Invalid ifGenerationMatch.")
        if "upload_id" in query:
            return await self._chunk(request, query["upload_id"])
        data = await request.read()
        if kind == "media":
            name = query.get("name", "")
            content_type = request.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
            return self._write(request, bucket, name, data, content_type, match, {})
        if kind == "multipart":
            try:
                meta, content_type, payload = _multipart(request.headers.get("Content-Type", ""), data)
            except ValueError as exc:
                return storage_error(400, str(exc))
            name = str(meta.get("name") or query.get("name", ""))
            content_type = str(meta.get("contentType") or content_type)
            return self._write(request, bucket, name, payload, content_type, match, dict(meta.get("metadata") or {}))
        if kind == "resumable":
            try:
                meta = json.loads(data) if data.strip() else {}
            except ValueError:
                return storage_error(400, "The upload's metadata is not JSON.")
            name = str(meta.get("name") or query.get("name", ""))
            if not name:
                return storage_error(400, "Required parameter: name")
            content_type = (
                request.headers.get("X-Upload-Content-Type") or meta.get("contentType") or DEFAULT_CONTENT_TYPE
            )
            upload_id = secrets.token_urlsafe(16)
            self.sessions[upload_id] = Resumable(bucket, name, content_type, match, dict(meta.get("metadata") or {}))
            location = f"{request.scheme}://{request.host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={upload_id}"
            return web.Response(status=200, headers={"Location": location})
        return storage_error(400, f"Unsupported uploadType {kind!r}: use media, multipart or resumable.")

    async def _chunk(self, request: web.Request, upload_id: str) -> web.Response:
        session = self.sessions.get(upload_id)
        if session is None:
            return storage_error(404, "No such upload session.")
        data = await request.read()
        found = _CONTENT_RANGE.match(request.headers.get("Content-Range", f"bytes */{len(data)}").strip())
        if found is None:
            return storage_error(400, "Invalid Content-Range.")
        first, _, total = found.groups()
        if first is not None:
            if int(first) != len(session.received):
                return storage_error(400, f"The chunk starts at {first}, {len(session.received)} bytes were received.")
            session.received += data
        if total == "*" or int(total) > len(session.received):
            headers = {"Range": f"bytes=0-{len(session.received) - 1}"} if session.received else {}
            return web.Response(status=308, headers=headers)
        del self.sessions[upload_id]
        s = session
        return self._write(
            request, s.bucket, s.name, bytes(s.received), s.content_type, s.if_generation_match, s.metadata
        )

    def _write(
        self,
        request: web.Request,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        match: int | None,
        metadata: dict[str, str],
    ) -> web.Response:
        if not name:
            return storage_error(400, "Required parameter: name")
        try:
            stored = self.store.put(
                bucket, name, data, content_type, self.wall(), if_generation_match=match, metadata=metadata
            )
        except PreconditionFailed:
            return storage_error(412, "At least one of the pre-conditions you specified did not hold.")
        self.stats.objects_written += 1
        return json_response(stored.resource(f"{request.scheme}://{request.host}"))


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], str, bytes]:
    """(metadata, media content type, media bytes) of a multipart/related upload, CRLF or bare LF lines."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if "multipart/related" not in content_type or found is None:
        raise ValueError("A multipart upload needs Content-Type multipart/related with a boundary.")
    delimiter = b"--" + found.group(1).encode()
    sections = body.split(delimiter)
    if len(sections) < 4:
        raise ValueError("A multipart upload needs a metadata part and a media part.")
    (_, meta_raw), (media_headers, media) = (_part(s) for s in sections[1:3])
    try:
        meta = json.loads(meta_raw)
    except ValueError:
        raise ValueError("The metadata part of a multipart upload is not JSON.") from None
    kind = re.search(r"content-type:\s*([^\r\n]+)", media_headers, re.IGNORECASE)
    return (meta if isinstance(meta, dict) else {}), (kind.group(1).strip() if kind else DEFAULT_CONTENT_TYPE), media


def _part(section: bytes) -> tuple[str, bytes]:
    section = section.removeprefix(b"\r\n").removeprefix(b"\n")
    cuts = [i for i in (section.find(b"\r\n\r\n"), section.find(b"\n\n")) if i >= 0]
    if not cuts:
        return "", b""
    cut = min(cuts)
    gap = 4 if section[cut : cut + 4] == b"\r\n\r\n" else 2
    content = section[cut + gap :]
    content = content.removesuffix(b"\r\n") if content.endswith(b"\r\n") else content.removesuffix(b"\n")
    return section[:cut].decode("latin-1"), content
