"""The Gemini emulator's aiohttp application: routes for both API versions, auth, counting and admin.

Every API route exists under ``/v1beta`` and ``/v1``. The key comes in the ``x-goog-api-key`` header (or the
``key`` query parameter); a wrong key is HTTP 400 INVALID_ARGUMENT with ErrorInfo API_KEY_INVALID, a missing
one HTTP 403 PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import json_response
from batcher.emulator.gemini import batch_api as batches
from batcher.emulator.gemini import lifecycle
from batcher.emulator.gemini import uploads as files
from batcher.emulator.gemini.errors import api_error, invalid_key, missing_key
from batcher.emulator.gemini.online import generate_content
from batcher.emulator.gemini.state import GeminiState
from batcher.emulator.gemini.stats import NO_REPLY
from batcher.emulator.gemini.wire import NoReply
from batcher.emulator.serving import AdminRoutes

VERSION = "{version:v1beta|v1}"
KEY_HEADER = "x-goog-api-key"
# A request body may carry base64 images; the configured cap is checked per request, this is aiohttp's.
MAX_BODY_BYTES = 64 * 2**20

Inner = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GeminiApp(AdminRoutes[GeminiState]):
    """Handlers over one GeminiState and its clock."""

    def __init__(self, state: GeminiState, clock: EmulatorClock) -> None:
        self.state = state
        self.clock = clock

    def build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(f"/{VERSION}/models/{{call}}", self.model_call)
        app.router.add_post(f"/upload/{VERSION}/files", self.upload)
        app.router.add_get(f"/{VERSION}/files/{{call}}", self.file_call)
        app.router.add_delete(f"/{VERSION}/files/{{call}}", self.file_call)
        app.router.add_get(f"/download/{VERSION}/files/{{call}}", self.file_call)
        app.router.add_get(f"/{VERSION}/batches", self.list_batches)
        app.router.add_get(f"/{VERSION}/batches/{{call}}", self.batch_call)
        app.router.add_post(f"/{VERSION}/batches/{{call}}", self.batch_call)
        app.router.add_delete(f"/{VERSION}/batches/{{call}}", self.batch_call)
        self.add_admin_routes(app)
        return app

    async def counted(self, request: web.Request, kind: str, inner: Inner, *, auth: bool = True) -> web.StreamResponse:
        """Authenticate, then run a handler while counting concurrency; record the status it answered."""
        state = self.state
        state.in_flight += 1
        state.stats.peak_concurrent_requests = max(state.stats.peak_concurrent_requests, state.in_flight)
        status = 500  # what aiohttp sends if the handler raises
        try:
            refused = self._auth(request) if auth else None
            response = refused if refused is not None else await inner(request)
            status = NO_REPLY if isinstance(response, NoReply) else response.status
            return response
        finally:
            state.in_flight -= 1
            state.stats.record(kind, status, request.match_info.get("version", ""))

    def _auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get(KEY_HEADER) or request.query.get("key")
        if not key:
            return missing_key()
        if key != self.state.config.api_key:
            return invalid_key()
        return None

    async def model_call(self, request: web.Request) -> web.StreamResponse:
        """``models/{model}:{method}``: one route, since a path segment holds both."""
        model, _, method = request.match_info["call"].partition(":")
        version = request.match_info["version"]
        if method == "generateContent":
            return await self.counted(
                request, "generate", lambda r: generate_content(self.state, self.clock, r, version, model)
            )
        if method == "batchGenerateContent":
            return await self.counted(request, "batch", lambda r: batches.create(self.state, self.clock, r, model))
        return await self.counted(request, "other", lambda r: _not_found(f"method {method!r} is not served"))

    async def upload(self, request: web.Request) -> web.StreamResponse:
        # A session's upload URL is its own credential, as with Google's resumable uploads.
        in_session = "upload_id" in request.query
        return await self.counted(
            request, "upload", lambda r: files.upload(self.state, self.clock, r), auth=not in_session
        )

    async def file_call(self, request: web.Request) -> web.StreamResponse:
        """``files/{id}`` (get, delete) and ``files/{id}:download``."""
        file_id, _, method = request.match_info["call"].partition(":")
        state, clock = self.state, self.clock
        if method == "download" and request.method == "GET":
            return await self.counted(request, "download", lambda r: batches.download(state, clock, r, file_id))
        if method:
            return await self.counted(request, "file", lambda r: _not_found(f"method {method!r} is not served"))
        if request.method == "DELETE":
            return await self.counted(request, "file", lambda r: files.delete_file(state, clock, r, file_id))
        return await self.counted(request, "file", lambda r: files.get_file(state, clock, r, file_id))

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        return await self.counted(request, "batch", lambda r: batches.list_batches(self.state, self.clock, r))

    async def batch_call(self, request: web.Request) -> web.StreamResponse:
        """``batches/{id}`` (get, delete) and ``batches/{id}:cancel``."""
        batch_id, _, method = request.match_info["call"].partition(":")
        state, clock = self.state, self.clock
        if request.method == "POST" and method == "cancel":
            return await self.counted(request, "batch", lambda r: batches.cancel(state, clock, r, batch_id))
        if request.method == "DELETE" and not method:
            return await self.counted(request, "batch", lambda r: batches.delete(state, clock, r, batch_id))
        if request.method == "GET" and not method:
            return await self.counted(request, "batch", lambda r: batches.get(state, clock, r, batch_id))
        return await self.counted(request, "batch", lambda r: _not_found(f"method {method!r} is not served"))

    # -- administration (no auth, not counted) -----------------------------------------------------------

    async def get_stats(self, request: web.Request) -> web.Response:
        return json_response(lifecycle.settle(self.state, self.clock.now()).as_dict(self.state.config.prices))


async def _not_found(message: str) -> web.Response:
    return api_error(404, message)
