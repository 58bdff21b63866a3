"""The Files API over HTTP: resumable uploads, files.get and files.delete."""

from __future__ import annotations

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import json_response
from batcher.emulator.gemini.errors import api_error
from batcher.emulator.gemini.files import FILES_PREFIX, StoredFile, UploadSession
from batcher.emulator.gemini.request import field
from batcher.emulator.gemini.state import GeminiState
from batcher.emulator.gemini.wire import BodyError, read_json

CHUNK_GRANULARITY = str(8 * 2**20)
START_BODY_BYTES = 64 * 1024
DEFAULT_MIME = "application/octet-stream"


def origin_of(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def missing_file(file_id: str) -> web.Response:
    """How Google answers for a file that is not there (or not yours)."""
    return api_error(403, f"You do not have permission to access the File {file_id} or it may not exist.")


def find_file(state: GeminiState, file_id: str, now: float) -> StoredFile | web.Response:
    """The stored file, or the answer for one that is not there: 404 past its time to live (files are deleted
    after 48 h), the drawn status for a responses file that is gone (`results_gone_rate`), else 403."""
    name = FILES_PREFIX + file_id
    stored = state.files.get(name, now)
    if stored is None and name in state.files.expired:
        state.stats.expired_file_answers += 1
        return api_error(404, f"File {name} not found: it has expired.")
    if stored is None:
        return missing_file(file_id)
    if stored.gone_status is not None:
        state.stats.gone_file_answers += 1
        if stored.gone_status == 404:
            return api_error(404, f"File {name} not found.")
        return missing_file(file_id)
    return stored


async def upload(state: GeminiState, clock: EmulatorClock, request: web.Request) -> web.Response:
    """``POST /upload/{v}/files``: a start request, or a chunk sent to a session's upload URL."""
    upload_id = request.query.get("upload_id")
    if upload_id is not None:
        return await _chunk(state, clock, request, upload_id)
    if request.headers.get("X-Goog-Upload-Protocol", "").lower() != "resumable":
        return api_error(400, "Only the resumable upload protocol is supported: send X-Goog-Upload-Protocol.")
    if request.headers.get("X-Goog-Upload-Command", "").lower() != "start":
        return api_error(400, "A new upload needs X-Goog-Upload-Command: start.")
    try:
        body = await read_json(request, START_BODY_BYTES) if request.can_read_body else {}
    except BodyError as exc:
        return api_error(400, str(exc))
    meta = field(body, "file", {}) if isinstance(body, dict) else {}
    declared = request.headers.get("X-Goog-Upload-Header-Content-Length")
    try:
        declared_bytes = None if declared is None else int(declared)
    except ValueError:
        return api_error(400, "X-Goog-Upload-Header-Content-Length must be a number of bytes.")
    if declared_bytes is not None and declared_bytes > state.config.max_upload_bytes:
        return api_error(400, f"The file is larger than {state.config.max_upload_bytes} bytes.")
    mime = request.headers.get("X-Goog-Upload-Header-Content-Type") or field(meta, "mimeType") or DEFAULT_MIME
    session = UploadSession(state.next_id(), str(field(meta, "displayName", "") or ""), str(mime), declared_bytes)
    state.files.uploads[session.upload_id] = session
    version = request.match_info["version"]
    url = f"{origin_of(request)}/upload/{version}/files?upload_id={session.upload_id}&upload_protocol=resumable"
    headers = {
        "X-Goog-Upload-URL": url,
        "X-Goog-Upload-Status": "active",
        "X-Goog-Upload-Chunk-Granularity": CHUNK_GRANULARITY,
    }
    return web.Response(status=200, headers=headers)


async def _chunk(state: GeminiState, clock: EmulatorClock, request: web.Request, upload_id: str) -> web.Response:
    session = state.files.uploads.get(upload_id)
    if session is None:
        return api_error(404, "No such upload session.")
    commands = {c.strip().lower() for c in request.headers.get("X-Goog-Upload-Command", "").split(",")}
    if "query" in commands:
        return _active(session)
    if not commands & {"upload", "finalize"}:
        return api_error(400, "X-Goog-Upload-Command must be upload, finalize, or both.")
    data = await request.read()
    if "upload" in commands:
        if request.headers.get("X-Goog-Upload-Offset") != str(len(session.received)):
            return api_error(400, f"X-Goog-Upload-Offset must be {len(session.received)}.")
        if len(session.received) + len(data) > state.config.max_upload_bytes:
            return api_error(400, f"The file is larger than {state.config.max_upload_bytes} bytes.")
        session.received += data
    if "finalize" not in commands:
        return _active(session)
    if session.declared_bytes is not None and session.declared_bytes != len(session.received):
        return api_error(400, f"Received {len(session.received)} bytes, {session.declared_bytes} were declared.")
    del state.files.uploads[upload_id]
    if state.config.upload_finalize_delay_s:  # every byte is in; the file is stored only after this wait
        await clock.sleep_until(clock.now() + state.config.upload_finalize_delay_s)
    now = clock.now()
    data = bytes(session.received)
    expires = now + state.config.file_ttl_s
    stored = StoredFile(
        FILES_PREFIX + state.next_id(),
        session.display_name,
        session.mime_type,
        len(data),
        now,
        expires,
        "UPLOADED",
        data,
    )
    state.files.add(stored)
    state.stats.files_uploaded += 1
    resource = stored.resource(origin_of(request), request.match_info["version"], state.wall_offset_s)
    return json_response({"file": resource}, headers={"X-Goog-Upload-Status": "final"})


def _active(session: UploadSession) -> web.Response:
    headers = {"X-Goog-Upload-Status": "active", "X-Goog-Upload-Size-Received": str(len(session.received))}
    return web.Response(status=200, headers=headers)


async def get_file(state: GeminiState, clock: EmulatorClock, request: web.Request, file_id: str) -> web.Response:
    stored = find_file(state, file_id, clock.now())
    if isinstance(stored, web.Response):
        return stored
    return json_response(stored.resource(origin_of(request), request.match_info["version"], state.wall_offset_s))


async def delete_file(state: GeminiState, clock: EmulatorClock, request: web.Request, file_id: str) -> web.Response:
    if not state.files.delete(FILES_PREFIX + file_id, clock.now()):
        return missing_file(file_id)
    state.stats.files_deleted += 1
    return json_response({})
