"""Vertex AI batch prediction as a BatchClient: a shard's JSONL staged in Cloud Storage, a `batchPredictionJobs`
create, polls of the job, and its output folder read line by line.

Each method is one API call, or one Cloud Storage operation through the storage layer (batcher/storage), and
returns one typed outcome carrying its CallRecord for the ledger. Nothing here retries: the caller decides,
because the one call that bills (the create) is not idempotent.

| call                     | reply                                              | outcome                      |
| ------------------------ | -------------------------------------------------- | ---------------------------- |
| create                   | 200 naming a job                                   | Created                      |
|                          | a refused connection, none within the connect      | NotCreated, retryable        |
|                          |   timeout (never left), 408                        |                              |
|                          | 401 (after one renewed token), 403                 | AuthRejected (403 names the  |
|                          |                                                    |   project)                   |
|                          | any other 4xx but 429 (a bad model, a bad body)    | NotCreated                   |
|                          | 429                                                | RateLimited (not created)    |
|                          | 5xx, a timeout, a reset, a 200 that names nothing  | CreateUnknown                |
| get, list, cancel,       | as every call that makes nothing                   | google_calls.py's table      |
|   delete                 |                                                    |                              |
| upload, results,         | the object or bucket not there                     | Gone                         |
|   delete_file (Cloud     | refused (401, 403)                                 | AuthRejected                 |
|   Storage)               | 429                                                | RateLimited                  |
|                          | any other 4xx                                      | Refused                      |
|                          | 5xx, a timeout, a reset (after the storage         | Transient                    |
|                          |   library's own retries)                           |                              |

Files: the shard's input is staged at `{staging}/{display_name}/input.jsonl`; the job writes under
`{staging}/{display_name}/output/prediction-model-<time>/`, as many `*.jsonl` files as it likes. Vertex reads the
input while the job runs, so it stays until the job has ended; the runner deletes both once every line is
settled (`delete_file`). A create whose reply is lost is reconciled by listing jobs by display name, which the
shard's name makes unique.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from batcher.errors import BatcherError, ConfigError, DestinationError
from batcher.models import CallRecord
from batcher.providers.auth import Credential
from batcher.providers.base import (
    Absent,
    AuthRejected,
    BatchInfo,
    BatchLimits,
    CreateOutcome,
    DoneOutcome,
    FindOutcome,
    Found,
    GetOutcome,
    Gone,
    Got,
    ListingIncomplete,
    Ok,
    Problem,
    RateLimited,
    Refused,
    Request,
    ResultLine,
    ResultStream,
    ShardWritten,
    Transient,
    Uploaded,
    UploadOutcome,
)
from batcher.providers.google_calls import Answer, GoogleCalls, Record, url_path
from batcher.providers.google_results import LineStream
from batcher.providers.vertex import VertexSettings
from batcher.providers.vertex_jobs import job_info, parse_line, write_shard
from batcher.ratelimit import RateGate
from batcher.storage import Listed, Storage, backend, join, objects
from batcher.storage.remote import EMULATOR_ENV

STORAGE_EMULATOR_ENV = EMULATOR_ENV
PAGE_SIZE = 100
MAX_PAGES = 10_000  # a listing that never ends is a broken one, not a complete one
INPUT_NAME = "input.jsonl"
OUTPUT_FOLDER = "output"
STREAM_BREAKS = (TimeoutError, aiohttp.ClientError, OSError)  # a results read broken off: read it again
# Vertex takes large jobs (tens of thousands of requests; its Gemini batch docs allow 200,000 and an input
# file of 1 GB): a shard is cut well inside both. Jobs per project at once are few: a handful.
LIMITS = BatchLimits(max_requests=100_000, max_bytes=1_000_000_000, max_concurrent=4)
NEEDS_STAGING = (
    "Vertex AI batch prediction stages its files in Cloud Storage: add `batch: {staging: gs://BUCKET/PREFIX}` "
    "to the manifest, or pass --staging gs://BUCKET/PREFIX"
)
NEEDS_PROJECT = (
    "Vertex AI batch prediction needs a project: set GOOGLE_CLOUD_PROJECT and Application Default Credentials "
    "(express mode's GOOGLE_API_KEY serves online generation only)"
)


@dataclass(frozen=True)
class VertexBatchSettings:
    """Where the jobs are (the project and location of the online settings) and where their files are staged."""

    project: str
    location: str
    host: str  # https://aiplatform.googleapis.com, a regional host, or GOOGLE_VERTEX_BASE_URL
    staging: str  # gs://BUCKET/PREFIX
    storage_endpoint: str | None = None  # STORAGE_EMULATOR_HOST: a Cloud Storage emulator's URL
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    total_timeout_s: float = 180.0
    max_connections: int = 32
    max_reply_bytes: int = 64 << 20  # a results line: the request echoed (its input images) and one image
    max_image_bytes: int = 40 << 20

    @property
    def jobs_url(self) -> str:
        return f"{self.host}/v1/projects/{quote(self.project, safe='')}/locations/{self.location}/batchPredictionJobs"

    def job_url(self, name: str) -> str:
        return f"{self.host}/v1/{url_path(name)}"


def batch_settings(
    online: VertexSettings, credential: Credential, staging: str | None, env: Mapping[str, str]
) -> VertexBatchSettings:
    """The batch settings from the online ones; ConfigError (exit 2) in express mode or with no staging place."""
    if online.project is None:
        raise ConfigError(NEEDS_PROJECT)
    if not staging:
        raise ConfigError(NEEDS_STAGING)
    if not staging.startswith("gs://"):
        raise ConfigError(f"{NEEDS_STAGING}; {staging!r} is not a gs:// folder")
    return VertexBatchSettings(online.project, online.location, online.host, staging.rstrip("/"),
                               env.get(STORAGE_EMULATOR_ENV, "").strip() or None)  # fmt: skip


class VertexBatchClient(GoogleCalls[VertexBatchSettings]):
    """One aiohttp session to Vertex AI's job service, and the storage layer's Cloud Storage client for the
    staged files; every request first passes the shared rate gate (polls, listings and reads with priority)."""

    name = "vertex"
    label = "Vertex AI"
    limits = LIMITS

    def __init__(self, settings: VertexBatchSettings, credential: Credential, gate: RateGate, *,
                 now: Callable[[], float] = time.time) -> None:  # fmt: skip
        super().__init__(settings, credential, gate, now=now)
        self._storage: Storage | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"VertexBatchClient({s.host!r}, project={s.project!r}, staging={s.staging!r})"

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        try:  # before anything is billed: the staging place exists and these credentials may write there
            self._storage = backend(self.settings.staging, self.settings.storage_endpoint)
            await objects.probe(self.settings.staging, self.settings.storage_endpoint)
        except DestinationError as e:
            await self.__aexit__(None, None, None)
            raise DestinationError(f"{e.message} (the batch staging place: `batch: staging` or --staging)") from None
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    @property
    def storage(self) -> Storage:
        assert self._storage is not None, "use `async with VertexBatchClient(...)`"
        return self._storage

    def write_shard(self, path: Path, items: Iterable[tuple[str, Request]]) -> ShardWritten:
        return write_shard(path, items)

    def staged(self, display_name: str) -> str:
        """The folder of one shard's files."""
        return join(self.settings.staging, display_name)

    # --- upload -------------------------------------------------------------------------------------

    async def upload(self, path: Path, display_name: str) -> UploadOutcome:
        """The shard's JSONL to `{staging}/{display_name}/input.jsonl`, streamed from disk. Not billed: a lost
        reply leaves at worst the object, written again by the next upload."""
        location = join(self.staged(display_name), INPUT_NAME)
        record = self._recorder("upload")
        await self.gate.acquire(priority=False)
        try:
            size = await self.storage.put_file(location, path)
        except Exception as e:
            return self._storage_problem(e, record, location)
        self.gate.answered()
        return Uploaded(record("ok", f"{size} bytes", location), file_name=location, size_bytes=size)

    # --- create -------------------------------------------------------------------------------------

    async def create(
        self, model: str, file_name: str, display_name: str, *, before_send: Callable[[], Awaitable[None]]
    ) -> CreateOutcome:
        """One batchPredictionJobs.create. Not idempotent: `before_send` (after the gate, just before the bytes
        leave; it may raise, and then nothing was sent) is where the caller commits its intent."""
        body = {
            "displayName": display_name,
            "model": f"publishers/google/models/{model}",
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [file_name]}},
            "outputConfig": {"predictionsFormat": "jsonl",
                             "gcsDestination": {"outputUriPrefix": join(self.staged(display_name), OUTPUT_FOLDER)}},
        }  # fmt: skip
        return await self._create(self.settings.jobs_url, body, file_name, job_info, before_send=before_send)

    def _refused_credential(self, status: int, what: str) -> str:
        return f"{what} (project {self.settings.project})" if status == 403 else what

    # --- get, find ----------------------------------------------------------------------------------

    async def get(self, name: str) -> GetOutcome:
        record = self._recorder("batch_get")
        got = await self._gated("GET", self.settings.job_url(name))
        if not isinstance(got, Answer) or got.status != 200:
            return self._problem(got, record, remote=name)
        info = job_info(got.doc)
        if info is None:
            msg = "HTTP 200 that is not a batch prediction job"
            return Transient(record("transient", msg, name, status=got.status), msg)
        return Got(record("ok", info.state, name, status=got.status), info)

    async def find_by_display_name(self, display_name: str, page_size: int = PAGE_SIZE) -> FindOutcome:
        """Every job named so (`filter=display_name="X"`), newest first, from every page. Absent only when every
        page came back: a gap is never proof."""
        calls: list[CallRecord] = []
        found: list[tuple[float, BatchInfo]] = []
        token, seen = "", set[str]()
        quoted = display_name.replace("\\", "\\\\").replace('"', '\\"')
        for _ in range(MAX_PAGES):
            record = self._recorder("batch_list")
            params = {"filter": f'display_name="{quoted}"', "pageSize": str(page_size)}
            got = await self._gated(
                "GET", self.settings.jobs_url, params=params | ({"pageToken": token} if token else {})
            )
            if not isinstance(got, Answer) or got.status != 200:
                problem = self._problem(got, record)
                calls.append(problem.call)
                return ListingIncomplete(f"a page of the job list failed: {problem.message}", tuple(calls))
            jobs = got.doc.get("batchPredictionJobs") if got.doc is not None else None
            if got.doc is None or not isinstance(jobs, list | None):  # an empty listing is `{}`
                msg = "HTTP 200 that is not a list of batch prediction jobs"
                calls.append(record("transient", msg, status=got.status))
                return ListingIncomplete(msg, tuple(calls))
            page = [(doc, info) for doc in jobs or [] if (info := job_info(doc)) is not None]
            calls.append(record("ok", f"{len(page)} jobs", status=got.status))
            found += [(_created_at(doc), info) for doc, info in page if info.display_name == display_name]
            next_token = got.doc.get("nextPageToken")
            if not isinstance(next_token, str) or not next_token:
                if not found:
                    return Absent(tuple(calls))
                newest_first = sorted(found, key=lambda f: f[0], reverse=True)
                return Found(tuple(info for _, info in newest_first), tuple(calls))
            if next_token in seen:
                return ListingIncomplete("the job list repeated a page token", tuple(calls))
            seen.add(next_token)
            token = next_token
        return ListingIncomplete(f"the job list did not end within {MAX_PAGES} pages", tuple(calls))

    # --- results ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def results(self, where: str) -> AsyncIterator[ResultStream | Problem]:
        """``async with client.results(info.responses_file) as got``: every ``*.jsonl`` object under the job's
        output folder, read one after the other, line by line; or why not."""
        record = self._recorder("download")
        folder = where.rstrip("/")
        await self.gate.acquire(priority=True)
        try:
            listed = await self.storage.list(folder)
        except Exception as e:
            yield self._storage_problem(e, record, folder)
            return
        self.gate.answered()
        files = [f for f in listed if f.location.endswith(".jsonl")]
        listing = record("ok", f"{len(files)} results files", folder)
        yield VertexResults(self, files, listing)

    def _file_lines(self, file: Listed) -> LineStream:
        return LineStream(self.storage.stream(file.location, file.size), parse_line, cap=self.settings.max_reply_bytes,
                          record=self._recorder("download"), name=file.location, status=None,
                          breaks=STREAM_BREAKS)  # fmt: skip

    # --- cancel, delete -----------------------------------------------------------------------------

    async def cancel(self, name: str) -> DoneOutcome:
        """Rows not yet run are not billed; rows done stay billed, and are exported (CANCELLING, then
        CANCELLED). One already ended is Refused (FAILED_PRECONDITION)."""
        return await self._plain("POST", f"{self.settings.job_url(name)}:cancel", "batch_cancel", name)

    async def delete_batch(self, name: str) -> DoneOutcome:
        """Forget an ended job (its files in Cloud Storage stay: `delete_file` them)."""
        return await self._plain("DELETE", self.settings.job_url(name), "batch_delete", name)

    async def delete_file(self, name: str) -> DoneOutcome:
        """A staged input (`.../input.jsonl`), or every object under a job's output folder."""
        record = self._recorder("file_delete")
        await self.gate.acquire(priority=True)
        try:
            if name.endswith(".jsonl"):
                await self.storage.delete(name)
                done = 1
            else:
                listed = await self.storage.list(name.rstrip("/"))
                for file in listed:
                    await self.storage.delete(file.location)
                done = len(listed)
        except Exception as e:
            return self._storage_problem(e, record, name)
        self.gate.answered()
        return Ok(record("ok", f"{done} objects", name))

    def results_outliving(self, display_name: str) -> str | None:
        """A job is deleted only once it has ended, and its output stays in Cloud Storage: the shard's folder."""
        return join(self.staged(display_name), OUTPUT_FOLDER)

    # --- Cloud Storage's failures -------------------------------------------------------------------

    def _storage_problem(self, e: Exception, record: Record, where: str) -> Problem:
        """A storage operation that failed, as the calls that make nothing are classified."""
        if isinstance(e, BatcherError):  # the storage extra not installed, and the like: the run cannot go on
            raise e
        code = getattr(e, "code", None)
        status = code if isinstance(code, int) and 100 <= code < 600 else None
        text = " ".join(str(e).split())[:200] or type(e).__name__
        what = f"Cloud Storage {where}: " + (f"HTTP {status}: " if status else "") + text
        if isinstance(e, FileNotFoundError) or status == 404:
            return Gone(record("gone", what, where, status=status), what)
        if isinstance(e, PermissionError) or status in (401, 403) or text.startswith("Forbidden"):
            return AuthRejected(record("auth", what, where, status=status), what)
        if status == 429:
            self.gate.rate_limited(None)
            return RateLimited(record("rate_limited", what, where, status=429), what)
        self.gate.answered()
        if (status is not None and 400 <= status < 500 and status != 408) or isinstance(e, ValueError):
            return Refused(record("refused", what, where, status=status), what)
        return Transient(record("transient", what, where, status=status), what)


class VertexResults(ResultStream):
    """A job's output files read one after the other. `calls`: the folder's listing, then one record per file
    read (final once the iteration ended)."""

    def __init__(self, client: VertexBatchClient, files: list[Listed], listing: CallRecord) -> None:
        self._client, self._files, self._listing = client, files, listing
        self._streams: list[LineStream] = []
        self.lines_read = 0

    @property
    def calls(self) -> tuple[CallRecord, ...]:
        return (self._listing, *(s.call for s in self._streams))

    async def lines(self) -> AsyncIterator[ResultLine]:
        for file in self._files:
            await self._client.gate.acquire(priority=True)
            stream = self._client._file_lines(file)
            self._streams.append(stream)
            async for line in stream.lines():
                self.lines_read += 1
                yield line


def _created_at(doc: dict[str, Any]) -> float:
    """A job's createTime (RFC 3339) as epoch seconds; 0 when it has none."""
    text = doc.get("createTime")
    try:
        return dt.datetime.fromisoformat(text).timestamp() if isinstance(text, str) else 0.0
    except ValueError:
        return 0.0
