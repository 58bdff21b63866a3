"""Gemini Batch Mode over REST (aiohttp): upload a shard's JSONL, create a batch, poll it, stream its results.

Each method is one API call (an upload is its two requests: start, then the bytes) and returns one typed
outcome carrying its CallRecord for the ledger. Nothing here retries: the caller decides, because the one call
that bills is not idempotent.

| call                     | reply                                              | outcome                      |
| ------------------------ | -------------------------------------------------- | ---------------------------- |
| create                   | 200 naming a batch                                 | Created                      |
|                          | a refused connection, or none within the connect   | NotCreated, retryable        |
|                          |   timeout (never left), 408                        |                              |
|                          | any other 4xx but 429 (a bad file, a bad model)    | NotCreated                   |
|                          | 401, 403, 400 API_KEY_INVALID                      | AuthRejected                 |
|                          | 429                                                | RateLimited (not created)    |
|                          | 5xx, a timeout, a reset, a 200 that names nothing  | CreateUnknown                |
| upload, get, list,       | 200                                                | Uploaded, Got, Page, Ok, ... |
|   download, cancel,      | anything else: as every call that makes nothing    | google_calls.py's table      |
|   delete                 |                                                    |                              |

A create that is unknown may have made a batch that runs and bills: the caller reconciles by listing
(`find_by_display_name`, which only answers Absent on a complete listing) and never simply creates again.
Google's 500/503/504 on create carry its own error body just like the online API's, but a create is cheap to
reconcile and expensive to double, so here any 5xx counts as unknown.

Big bodies never sit whole in memory: an upload streams from its file on disk, and the results download is
read line by line (google_results.py), each line capped at `max_reply_bytes`. The file formats are
gemini_batch_files.py's. The API key goes only in
the ``x-goog-api-key`` header to the API's own origin (not to the upload URL, its own credential), and never
into an outcome, a record or a message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp

from batcher.models import CallRecord
from batcher.providers.base import (
    Absent,
    BatchInfo,
    BatchLimits,
    CreateOutcome,
    DoneOutcome,
    FindOutcome,
    Found,
    GetOutcome,
    Got,
    ListingIncomplete,
    Outcome,
    Problem,
    Request,
    ResultStream,
    ShardWritten,
    Transient,
    Uploaded,
    UploadOutcome,
)
from batcher.providers.download import describe, origin
from batcher.providers.gemini import gemini_key
from batcher.providers.gemini_batch_files import batch_info, parse_result_line, write_shard
from batcher.providers.gemini_settings import GeminiSettings
from batcher.providers.google_calls import ERROR_BODY_BYTES, Answer, GoogleCalls, url_path
from batcher.providers.google_results import LineStream
from batcher.providers.google_wire import parse_json, read_capped
from batcher.ratelimit import RateGate

JSONL_MIME = "application/jsonl"
PAGE_SIZE = 100
MAX_PAGES = 10_000  # a listing that never ends is a broken one, not a complete one
STREAM_BREAKS = (TimeoutError, aiohttp.ClientError, OSError)  # a results download broken off: read it again


@dataclass(frozen=True)
class Page(Outcome):
    batches: tuple[BatchInfo, ...]
    next_token: str | None


PageOutcome = Page | Problem


class GeminiBatchClient(GoogleCalls[GeminiSettings]):
    """One aiohttp session to the Gemini API's Batch Mode; every request first passes the shared rate gate.

    Polls, listings and downloads pass the gate with priority (they make nothing); uploads and creates do not.
    """

    name = "gemini"
    label = "the Gemini API"
    limits = BatchLimits(max_requests=100_000, max_bytes=2_000_000_000)  # an input file is up to 2 GB

    def __init__(
        self, settings: GeminiSettings, api_key: str, gate: RateGate, *, now: Callable[[], float] = time.time
    ) -> None:
        super().__init__(settings, gemini_key(api_key), gate, now=now)
        self._root = settings.base_url.rstrip("/")
        self._base = f"{self._root}/{settings.api_version}"
        # Uploads and downloads run as long as their bytes take: only the idle read and the connect are timed.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )

    def __repr__(self) -> str:  # never the key
        return f"GeminiBatchClient({self._base!r})"

    def write_shard(self, path: Path, items: Iterable[tuple[str, Request]]) -> ShardWritten:
        return write_shard(path, items)

    # --- upload -------------------------------------------------------------------------------------

    async def upload(self, path: Path, display_name: str) -> UploadOutcome:
        """A resumable upload in one chunk, streamed from `path`. Not billed: a lost reply leaves at worst a
        stray file, deleted by the API after 48 hours, so a lost reply is only Transient."""
        size = os.path.getsize(path)
        record = self._recorder("upload")
        headers = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": JSONL_MIME,
            "Content-Type": "application/json",
        }
        start = json.dumps({"file": {"displayName": display_name}}).encode()
        await self.gate.acquire(priority=False)
        got = await self._send("POST", f"{self._root}/upload/{self.settings.api_version}/files", start, headers)
        if not isinstance(got, Answer) or got.status != 200:
            return self._problem(got, record, file_route=True)
        url = got.headers.get("X-Goog-Upload-URL")
        if not url or origin(url)[0] not in ("http", "https"):
            msg = "the upload start reply named no upload URL"
            return Transient(record("transient", msg, status=got.status), msg)
        chunk_headers = {
            "X-Goog-Upload-Command": "upload, finalize",
            "X-Goog-Upload-Offset": "0",
            "Content-Length": str(size),
            "Content-Type": JSONL_MIME,
        }
        with open(path, "rb") as body:  # aiohttp reads a file object in chunks: never whole
            got = await self._send(
                "POST", url, body, chunk_headers, timeout=self._stream_timeout, gated=False, authorised=False
            )  # the upload URL is its own credential
        if not isinstance(got, Answer) or got.status != 200:
            return self._problem(got, record, file_route=True)
        file = got.doc.get("file") if got.doc is not None else None
        name = file.get("name") if isinstance(file, dict) else None
        if not isinstance(name, str) or not name.startswith("files/"):
            msg = "the upload's final reply named no file; a stray file may have been stored"
            return Transient(record("transient", msg, status=got.status), msg)
        return Uploaded(record("ok", f"{size} bytes", name, status=got.status), file_name=name, size_bytes=size)

    # --- create -------------------------------------------------------------------------------------

    async def create(
        self, model: str, file_name: str, display_name: str, *, before_send: Callable[[], Awaitable[None]]
    ) -> CreateOutcome:
        """One batchGenerateContent. Not idempotent: `before_send` (after the gate, just before the bytes
        leave; it may raise, and then nothing was sent) is where the caller commits its intent."""
        body = {"batch": {"displayName": display_name, "inputConfig": {"fileName": file_name}}}
        url = f"{self._base}/models/{quote(model, safe='')}:batchGenerateContent"
        return await self._create(url, body, file_name, batch_info, before_send=before_send)

    # --- get, list, find ----------------------------------------------------------------------------

    async def get(self, name: str) -> GetOutcome:
        """batches.get. A 503 (a big batch just done may answer so for minutes) is Transient: poll again,
        never create again."""
        record = self._recorder("batch_get")
        got = await self._gated("GET", f"{self._base}/{url_path(name)}")
        if not isinstance(got, Answer) or got.status != 200:
            return self._problem(got, record, remote=name)
        info = batch_info(got.doc)
        if info is None:
            msg = "HTTP 200 that is not a batch"
            return Transient(record("transient", msg, name, status=got.status), msg)
        return Got(record("ok", info.state, name, status=got.status), info)

    async def list_page(self, page_token: str = "", page_size: int = PAGE_SIZE) -> PageOutcome:
        record = self._recorder("batch_list")
        params = {"pageSize": str(page_size)} | ({"pageToken": page_token} if page_token else {})
        got = await self._gated("GET", f"{self._base}/batches", params=params)
        if not isinstance(got, Answer) or got.status != 200:
            return self._problem(got, record)
        operations = got.doc.get("operations") if got.doc is not None else None
        if got.doc is None or not isinstance(operations, list | None):
            msg = "HTTP 200 that is not a list of batches"
            return Transient(record("transient", msg, status=got.status), msg)
        found = tuple(info for op in operations or [] if (info := batch_info(op)) is not None)
        token = got.doc.get("nextPageToken")
        next_token = token if isinstance(token, str) and token else None
        return Page(record("ok", f"{len(found)} batches", status=got.status), found, next_token)

    async def find_by_display_name(self, display_name: str, page_size: int = PAGE_SIZE) -> FindOutcome:
        """Every batch named so, on every page. Absent only when every page came back: a gap is never proof."""
        calls: list[CallRecord] = []
        matches: list[BatchInfo] = []
        token, seen = "", set[str]()
        for _ in range(MAX_PAGES):
            page = await self.list_page(token, page_size)
            calls.append(page.call)
            if not isinstance(page, Page):
                return ListingIncomplete(f"a page of the batch list failed: {page.message}", tuple(calls))
            matches += [b for b in page.batches if b.display_name == display_name]
            if page.next_token is None:
                return Found(tuple(matches), tuple(calls)) if matches else Absent(tuple(calls))
            if page.next_token in seen:
                return ListingIncomplete("the batch list repeated a page token", tuple(calls))
            seen.add(page.next_token)
            token = page.next_token
        return ListingIncomplete(f"the batch list did not end within {MAX_PAGES} pages", tuple(calls))

    # --- results ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def results(self, file_name: str) -> AsyncIterator[ResultStream | Problem]:
        """``async with client.results("files/...") as got``: a ResultStream to iterate, or why not."""
        record = self._recorder("download")
        file_id = file_name.removeprefix("files/")
        url = f"{self._root}/download/{self.settings.api_version}/files/{quote(file_id, safe='')}:download"
        await self.gate.acquire(priority=True)
        async with AsyncExitStack() as stack:
            # The consumer's own errors must pass through untouched: only opening and the error body are guarded.
            try:
                resp = await stack.enter_async_context(
                    self.session.get(
                        url,
                        params={"alt": "media"},
                        headers=await self.credential.headers(),
                        timeout=self._stream_timeout,
                    )
                )
                raw = await read_capped(resp, ERROR_BODY_BYTES) if resp.status != 200 else None
            except aiohttp.ClientConnectorError as e:
                msg = f"cannot connect to the Gemini API: {self._scrub(describe(e))}"
                yield Transient(record("transient", msg, file_name), msg)
                return
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                self.gate.answered()
                msg = f"no reply from the Gemini API: {self._scrub(describe(e))}"
                yield Transient(record("transient", msg, file_name), msg)
                return
            if resp.status != 429:  # a 429 tells the gate itself
                self.gate.answered()
            if resp.status != 200:
                answer = Answer(resp.status, parse_json(raw) if raw else None, None, {})
                yield self._problem(answer, record, remote=file_name, file_route=True)
                return
            yield LineStream(
                resp.content.iter_any(),
                parse_result_line,
                cap=self.settings.max_reply_bytes,
                record=record,
                name=file_name,
                status=resp.status,
                breaks=STREAM_BREAKS,
            )

    # --- cancel, delete -----------------------------------------------------------------------------

    async def cancel(self, name: str) -> DoneOutcome:
        """batches.cancel: lines not yet run are not billed. One already done is Refused (FAILED_PRECONDITION)."""
        return await self._plain("POST", f"{self._base}/{url_path(name)}:cancel", "batch_cancel", name)

    async def delete_batch(self, name: str) -> DoneOutcome:
        """Forget the batch (it still runs and bills if not done: cancel first)."""
        return await self._plain("DELETE", f"{self._base}/{url_path(name)}", "batch_delete", name)

    async def delete_file(self, name: str) -> DoneOutcome:
        """Delete an uploaded input or a results file (the API deletes both after 48 hours anyway)."""
        return await self._plain("DELETE", f"{self._base}/{url_path(name)}", "file_delete", name, file_route=True)

    def results_outliving(self, display_name: str) -> str | None:
        """A deleted batch's results file is not found by its batch's name: none to read."""
        return None
