"""The aiohttp application: routes, the fault pipeline and the handlers. Decisions live in `state`."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import MALFORMED_BODY, envelope, json_response
from batcher.emulator.limiter import retry_after_seconds
from batcher.emulator.serving import AdminRoutes
from batcher.emulator.state import EmulatorState
from batcher.emulator.stats import NO_REPLY
from batcher.emulator.tasks import Task
from batcher.emulator.validate import InvalidRequest, parse_create

API_BASE = "/api/v1"
CREATE_PATH = f"{API_BASE}/image-generation"
QUERY_PATH = f"{API_BASE}/query/image-generation"
FILES_PREFIX = "/files"
# Large enough for ten data: URIs at the default size cap; the cap itself is checked per image.
MAX_BODY_BYTES = 160 * 2**20
BEARER = "Bearer "
# Hostile file URLs (hostile_file_rate): what each kind serves or names.
HOSTILE_SCHEME_URLS = ("file:///etc/passwd", "ftp://{host}/files/{task_id}/image.png")
HOSTILE_NAME = "../../../../tmp/batcher-traversal.png"  # a file name that climbs out of any directory
HOSTILE_NOT_IMAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Session expired</body></html>\n"
HUGE_CHUNK = bytes(256 * 1024)
GATEWAY_PAGE = "<html><head><title>{status}</title></head><body><h1>{status} Gateway Error</h1></body></html>\n"  # one zero-filled chunk, sent again and again: a huge reply never sits in memory

Inner = Callable[[web.Request, float], Awaitable[web.StreamResponse]]


class _NoReply(web.Response):
    """Returned after the connection was closed on purpose; aiohttp's write of it fails quietly."""


def _close_connection(request: web.Request, *, flush: bool = False) -> _NoReply:
    transport = request.transport
    if transport is not None:
        if flush:
            transport.close()  # sends what is buffered, then FIN
        else:
            transport.abort()
    return _NoReply()


class EmulatorApp(AdminRoutes[EmulatorState]):
    """Handlers over one EmulatorState. `origin` (scheme://host:port) is set once the socket is bound."""

    def __init__(self, state: EmulatorState, clock: EmulatorClock) -> None:
        self.state = state
        self.clock = clock
        self.origin: str | None = None

    def build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(CREATE_PATH, self.create)
        app.router.add_get(QUERY_PATH, self.query)
        app.router.add_get(FILES_PREFIX + "/{task_id}/{token}.png", self.download)
        # a hostile "traversal" URL: the same file under a last segment that decodes to ../../..
        app.router.add_get(FILES_PREFIX + "/{task_id}/{token}/{name}", self.download)
        self.add_admin_routes(app)
        return app

    # -- request accounting ------------------------------------------------------------------------------

    async def _counted(self, request: web.Request, kind: str, inner: Inner) -> web.StreamResponse:
        """Run a handler while counting concurrency, then record the request with its arrival time."""
        state = self.state
        now, wall = self.clock.now(), time.time()
        state.in_flight += 1
        if state.in_flight > state.stats.peak_concurrent_requests:
            state.stats.peak_concurrent_requests = state.in_flight
        status = 500  # what aiohttp sends if the handler raises
        try:
            response = await inner(request, now)
            status = NO_REPLY if isinstance(response, _NoReply) else response.status
            return response
        finally:
            state.in_flight -= 1
            state.stats.record(kind, status, now, wall)

    def _request_id(self) -> str:
        return "req-" + self.state.next_id()

    def _error(self, code: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
        config = self.state.config
        body = envelope(code, None, msg, self._request_id(), config.variant == "field")
        return json_response(body, 200 if config.errors_http_200 else code, headers)

    def _ok(self, data: dict[str, Any], msg: str = "") -> web.Response:
        return json_response(envelope(0, data, msg, self._request_id(), self.state.config.variant == "field"))

    async def _faults(self, request: web.Request, kind: str) -> web.StreamResponse | None:
        """Inject this request's configured faults, in a fixed order; None lets it through."""
        state = self.state
        config = state.config
        if kind not in config.fault_kinds:
            return None
        if state.roll(config.slow_rate):  # on the emulator's clock, as Gemini's: a test's advance ends it
            await self.clock.sleep_until(self.clock.now() + config.slow_s)
        if state.roll(config.drop_rate):
            state.stats.dropped += 1
            return _close_connection(request)
        if state.roll(config.error_500_rate):
            return self._error(500, "internal server error")
        if state.roll(config.error_503_rate):
            return self._error(503, "service temporarily unavailable, try again later")
        if state.roll(config.malformed_rate):
            state.stats.malformed += 1
            if kind == "download":
                return web.Response(body=b"<html>upstream error</html>", content_type="text/html")
            return web.Response(body=MALFORMED_BODY, content_type="application/json")
        return None

    async def _api(self, request: web.Request, kind: str, inner: Inner) -> web.StreamResponse:
        async def pipeline(request: web.Request, now: float) -> web.StreamResponse:
            config = self.state.config
            auth = request.headers.get("Authorization", "")
            if not auth.startswith(BEARER) or not auth[len(BEARER) :].strip():
                return self._error(401, "missing API key: send 'Authorization: Bearer <key>'")
            if auth[len(BEARER) :].strip() != config.api_key:
                return self._error(401, "invalid API key")
            wait_s = self.state.admit(now)
            if wait_s > 0:
                self.state.stats.rate_limited += 1
                return self._error(429, "rate limit exceeded, slow down", {"Retry-After": self._retry_after(wait_s)})
            faulted = await self._faults(request, kind)
            if faulted is not None:
                return faulted
            return await inner(request, now)

        return await self._counted(request, kind, pipeline)

    def _retry_after(self, wait_s: float) -> str:
        seconds = retry_after_seconds(wait_s)
        if self.state.config.retry_after_format == "seconds":
            return str(seconds)
        # Round up: HTTP dates have whole seconds, and a client must never be told to come back early.
        return formatdate(int(time.time()) + 1 + seconds, usegmt=True)

    # -- the API -----------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self._api(request, "create", self._create)

    async def _create(self, request: web.Request, now: float) -> web.StreamResponse:
        state = self.state
        config = state.config
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(400, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(400, "the request body is not valid JSON")
        try:
            spec = parse_create(body, config.images_field, config.max_image_bytes)
        except InvalidRequest as exc:
            return self._error(400, str(exc))
        task = state.create_task(spec, self.clock.now())
        if state.roll(config.lost_create_rate):
            state.stats.lost_creates += 1
            return _close_connection(request)
        if state.roll(config.accepted_error_rate):
            state.stats.accepted_errors += 1
            status = 502 if state.rng.random() < 0.5 else 504
            return web.Response(status=status, text=GATEWAY_PAGE.format(status=status), content_type="text/html")
        field_variant = config.variant == "field"
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "status": "Pending" if field_variant else "Processing",
            "order_id": task.order_id,
        }
        price = config.price_for(spec.model)
        if price is not None:
            data["price"] = price
        return self._ok(data)

    async def query(self, request: web.Request) -> web.StreamResponse:
        return await self._api(request, "query", self._query)

    async def _query(self, request: web.Request, now: float) -> web.StreamResponse:
        state = self.state
        task_id = request.query.get("task_id", "")
        if not task_id:
            return self._error(400, "task_id is required")
        task = state.book.get(task_id)
        now = self.clock.now()
        if task is not None and task.forgotten(now, state.config.task_ttl_s):
            state.stats.forgot(task.request.prompt)
            task = None
        if task is None:
            return self._error(404, f"unknown task_id {task_id!r}")
        state.book.settle(now, state.stats)
        field_variant = state.config.variant == "field"
        status = task.status(now, field_variant)
        state.stats.polls += 1
        data: dict[str, Any] = {"task_id": task.task_id, "status": status}
        msg = ""
        if status == "Success":
            task.reported = True
            url = self._file_url(request, task, now)
            if field_variant:
                data["output_images"] = [url]
            else:
                data["file_url"] = url
        elif status in ("Failed", "Cancelled"):
            data["msg"] = task.reason
            # The guide's own client prints the envelope's msg when a generation fails.
            msg = task.reason
        return self._ok(data, msg)

    def _file_url(self, request: web.Request, task: Task, now: float) -> str:
        origin = self.origin or f"{request.scheme}://{request.host}"
        token = self.state.file_token(task, now)
        if task.hostile == "scheme":
            # alternate by task so both a local file and another protocol are tried
            template = HOSTILE_SCHEME_URLS[int(task.task_id[-6:]) % len(HOSTILE_SCHEME_URLS)]
            return template.format(host=request.host, task_id=task.task_id)
        if task.hostile == "traversal":
            return f"{origin}{FILES_PREFIX}/{task.task_id}/{token}/{quote(HOSTILE_NAME, safe='')}"
        return f"{origin}{FILES_PREFIX}/{task.task_id}/{token}.png"

    # -- file hosting ------------------------------------------------------------------------------------

    async def download(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, "download", self._download)

    async def _download(self, request: web.Request, now: float) -> web.StreamResponse:
        state = self.state
        faulted = await self._faults(request, "download")
        if faulted is not None:
            return faulted
        task = state.book.get(request.match_info["task_id"])
        expiry = None if task is None else task.url_expiry.get(request.match_info["token"])
        now = self.clock.now()
        if task is not None and expiry is not None and task.forgotten(now, state.config.task_ttl_s):
            state.stats.forgot(task.request.prompt)
            expiry = None
        if task is None or expiry is None:
            return web.Response(status=404, text="no such file")
        if now >= expiry:
            state.stats.expired_downloads += 1
            return web.Response(status=410, text="this file URL has expired; query the task for a fresh one")
        spec = task.request
        if task.hostile is not None:
            state.stats.hostile_downloads += 1
            if task.hostile == "not-image":
                # labelled a PNG, so only a client that looks at the bytes notices
                return web.Response(body=HOSTILE_NOT_IMAGE, content_type="image/png")
            if task.hostile == "huge":
                return await self._huge(request, state.images.png(spec.prompt, spec.width, spec.height))
        png = state.images.png(spec.prompt, spec.width, spec.height)
        if task.hostile == "traversal":  # the real file, under a name no client may use as a path
            state.stats.downloads += 1
            name = HOSTILE_NAME.rsplit("/", 1)[-1]
            headers = {"Content-Disposition": f"attachment; filename=\"{HOSTILE_NAME}\"; filename*=UTF-8''{name}"}
            return web.Response(body=png, content_type="image/png", headers=headers)
        if state.roll(state.config.not_image_rate):
            state.stats.not_image_files += 1
            return web.Response(body=HOSTILE_NOT_IMAGE, content_type="image/png")
        if state.roll(state.config.truncate_rate):
            state.stats.truncated_downloads += 1
            return await self._truncated(request, png)
        state.stats.downloads += 1
        return web.Response(body=png, content_type="image/png")

    async def _huge(self, request: web.Request, png: bytes) -> web.StreamResponse:
        """A real PNG's first bytes (so its head passes a sniff), then zeros, chunked with no length, until
        hostile_huge_bytes are out or the client hangs up; one chunk is reused, so nothing big is allocated."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        left = self.state.config.hostile_huge_bytes
        try:
            head = png[: min(len(png), left)]
            await response.write(head)
            left -= len(head)
            while left > 0:
                chunk = HUGE_CHUNK if left >= len(HUGE_CHUNK) else HUGE_CHUNK[:left]
                await response.write(chunk)
                left -= len(chunk)
            await response.write_eof()
        except ConnectionError:  # the client hung up, as it should
            _close_connection(request)
        return response

    async def _truncated(self, request: web.Request, png: bytes) -> web.StreamResponse:
        """Promise the whole file in Content-Length, send half of it, then close the connection."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(png)
        await response.prepare(request)
        await response.write(png[: len(png) // 2])
        _close_connection(request, flush=True)
        return response

    # -- administration (no auth, not counted) -----------------------------------------------------------

    async def get_stats(self, request: web.Request) -> web.Response:
        include_events = request.query.get("events", "1").lower() not in ("0", "false", "no")
        stats = self.state.settled_stats(self.clock.now())
        return json_response(stats.as_dict(include_events))
