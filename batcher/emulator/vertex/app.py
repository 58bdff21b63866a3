"""The Vertex emulator's aiohttp application: the token endpoint, online generation (under a project with a
bearer token, or in express mode with an API key), batch prediction jobs, Cloud Storage and administration.

API routes exist under ``/v1`` and ``/v1beta1`` (google-genai calls v1beta1 for Vertex). Project routes check,
in Google's order: the bearer token (401 UNAUTHENTICATED), the project (403 PERMISSION_DENIED), the location
and the model (404 NOT_FOUND). A project is named by its id or its number.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import json_response
from batcher.emulator.gemini.facts import MODELS
from batcher.emulator.gemini.wire import NoReply
from batcher.emulator.serving import AdminRoutes
from batcher.emulator.vertex import jobs_api, lifecycle
from batcher.emulator.vertex.errors import (
    invalid_key,
    location_not_found,
    model_not_found,
    permission_denied,
    unauthenticated,
    vertex_error,
)
from batcher.emulator.vertex.online import generate_content
from batcher.emulator.vertex.state import VertexState
from batcher.emulator.vertex.stats import NO_REPLY
from batcher.emulator.vertex.storage_api import StorageApi
from batcher.emulator.vertex.tokens import TokenRefused

VERSION = "{version:v1|v1beta1}"
PROJECT = f"/{VERSION}/projects/{{project}}/locations/{{location}}"
TOKEN_PATH = "/token"
KEY_HEADER = "x-goog-api-key"
MAX_BODY_BYTES = 2 * 2**30  # uploads to Cloud Storage may be large; API bodies are capped per request
PREDICT_PERMISSION = "aiplatform.endpoints.predict"
JOBS_PERMISSION = "aiplatform.batchPredictionJobs.create"

Inner = Callable[[web.Request], Awaitable[web.StreamResponse]]


class VertexApp(AdminRoutes[VertexState]):
    """Handlers over one VertexState and its clock."""

    def __init__(self, state: VertexState, clock: EmulatorClock) -> None:
        self.state = state
        self.clock = clock
        self.storage = StorageApi(state.store, state.stats, lambda: state.wall(clock.now()))

    def build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._settled])
        app.router.add_post(TOKEN_PATH, self.token)
        app.router.add_post(f"{PROJECT}/publishers/google/models/{{call}}", self.project_model_call)
        app.router.add_post(f"/{VERSION}/publishers/google/models/{{call}}", self.express_model_call)
        app.router.add_get(f"{PROJECT}/batchPredictionJobs", self.jobs)
        app.router.add_post(f"{PROJECT}/batchPredictionJobs", self.jobs)
        app.router.add_route("*", f"{PROJECT}/batchPredictionJobs/{{call}}", self.job_call)
        self.storage.add_routes(app)
        self.add_admin_routes(app)
        return app

    @web.middleware
    async def _settled(self, request: web.Request, handler: Inner) -> web.StreamResponse:
        """Bring every job up to the clock before any request reads jobs or the objects they write."""
        lifecycle.settle(self.state, self.clock.now())
        if request.path.startswith(("/storage/", "/upload/", "/download/", "/batch/")):
            return await self._counted(request, "storage", handler)
        return await handler(request)

    async def _counted(self, request: web.Request, kind: str, inner: Inner) -> web.StreamResponse:
        """Run a handler while counting concurrency; record the status it answered."""
        state = self.state
        state.in_flight += 1
        state.stats.peak_concurrent_requests = max(state.stats.peak_concurrent_requests, state.in_flight)
        status = 500  # what aiohttp sends if the handler raises
        try:
            response = await inner(request)
            status = NO_REPLY if isinstance(response, NoReply) else response.status
            return response
        finally:
            state.in_flight -= 1
            state.stats.record(kind, status)

    # -- credentials ---------------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, "token", self._token)

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        try:
            token, _ = self.state.tokens.grant(form, self.clock.now(), self.state.config.token_lifetime_s)
        except TokenRefused as exc:
            self.state.stats.tokens_refused += 1
            return json_response({"error": exc.error, "error_description": str(exc)}, 400)
        self.state.stats.tokens_issued += 1
        lifetime = int(self.state.config.token_lifetime_s)
        return json_response({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})

    def _project(self, request: web.Request, permission: str, resource: str) -> str | web.Response:
        """The project number a request may use, or the reply refusing it (401, 403, 404)."""
        stats = self.state.stats
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            stats.unauthenticated += 1
            return unauthenticated("CREDENTIALS_MISSING")
        why = self.state.tokens.check(token.strip(), self.clock.now())
        if why is not None:
            stats.unauthenticated += 1
            stats.expired_tokens += why == "expired"
            return unauthenticated("ACCESS_TOKEN_EXPIRED" if why == "expired" else "ACCESS_TOKEN_TYPE_UNSUPPORTED")
        config = self.state.config
        number = config.project_number(request.match_info["project"])
        if number is None:
            stats.permission_denied += 1
            return permission_denied(permission, resource)
        location = request.match_info["location"]
        if location not in config.locations:
            return location_not_found(location)
        return number

    # -- online --------------------------------------------------------------------------------------------

    async def project_model_call(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, "generate", self._project_model_call)

    async def _project_model_call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        project, location = request.match_info["project"], request.match_info["location"]
        resource = f"projects/{project}/locations/{location}/publishers/google/models/{model}"
        number = self._project(request, PREDICT_PERMISSION, resource)
        if isinstance(number, web.Response):
            return number
        if model not in MODELS:
            return model_not_found(f"projects/{number}/locations/{location}/publishers/google/models/{model}")
        if method != "generateContent":
            return vertex_error(404, f"Method {method!r} is not served by this emulator.")
        return await generate_content(self.state, self.clock, request, model, number)

    async def express_model_call(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, "generate", self._express_model_call)

    async def _express_model_call(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get(KEY_HEADER) or request.query.get("key")
        if not key:
            self.state.stats.unauthenticated += 1
            return unauthenticated("CREDENTIALS_MISSING")
        if key != self.state.config.api_key:
            return invalid_key()
        model, _, method = request.match_info["call"].partition(":")
        if model not in MODELS:
            return model_not_found(f"publishers/google/models/{model}")
        if method != "generateContent":
            return vertex_error(404, f"Method {method!r} is not served by this emulator.")
        self.state.stats.express_requests += 1
        return await generate_content(self.state, self.clock, request, model, "express")

    # -- batch prediction ----------------------------------------------------------------------------------

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, "job", self._jobs)

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        project, location = request.match_info["project"], request.match_info["location"]
        number = self._project(request, JOBS_PERMISSION, f"projects/{project}/locations/{location}")
        if isinstance(number, web.Response):
            return number
        if request.method == "POST":
            return await jobs_api.create(self.state, self.clock, request, number, location)
        return await jobs_api.list_jobs(self.state, self.clock, request, number, location)

    async def job_call(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, "job", self._job_call)

    async def _job_call(self, request: web.Request) -> web.StreamResponse:
        """``batchPredictionJobs/{id}`` (GET, DELETE) and ``batchPredictionJobs/{id}:cancel`` (POST)."""
        project, location = request.match_info["project"], request.match_info["location"]
        job_id, _, method = request.match_info["call"].partition(":")
        resource = f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
        number = self._project(request, JOBS_PERMISSION.replace("create", "get"), resource)
        if isinstance(number, web.Response):
            return number
        state, clock = self.state, self.clock
        if request.method == "POST" and method == "cancel":
            return await jobs_api.cancel(state, clock, number, location, job_id)
        if request.method == "DELETE" and not method:
            return await jobs_api.delete(state, clock, number, location, job_id)
        if request.method == "GET" and not method:
            return await jobs_api.get(state, clock, number, location, job_id)
        return vertex_error(404, f"Method {request.method} {method!r} is not served by this emulator.")

    # -- administration (no auth, not counted) -------------------------------------------------------------

    async def get_stats(self, request: web.Request) -> web.Response:
        stats = lifecycle.settle(self.state, self.clock.now())
        return json_response(stats.as_dict(self.state.config.prices))
