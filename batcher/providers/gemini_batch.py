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
|   download, cancel,      | 404 (and 403 without ErrorInfo on a file: Google's | Gone                         |
|   delete                 |   answer for a file that is not there)             |                              |
|                          | 408, 5xx, a timeout, a reset                       | Transient (repeat it freely) |
|                          | any other 4xx but 429                              | Refused                      |

A create that is unknown may have made a batch that runs and bills: the caller reconciles by listing
(`find_by_display_name`, which only answers Absent on a complete listing) and never simply creates again.
Google's 500/503/504 on create carry its own error body just like the online API's, but a create is cheap to
reconcile and expensive to double, so here any 5xx counts as unknown.

Big bodies never sit whole in memory: an upload streams from its file on disk, and the results download is
read line by line (one base64 image a line), each line capped at `max_reply_bytes`. The API key goes only in
the ``x-goog-api-key`` header to the API's own origin (not to the upload URL, its own credential), and never
into an outcome, a record or a message.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from batcher.models import CallRecord
from batcher.providers.base import (
    Absent,
    AuthRejected,
    BatchInfo,
    BatchLimits,
    BatchState,
    BatchStats,
    Created,
    CreateOutcome,
    CreateUnknown,
    DoneOutcome,
    FailureKind,
    FindOutcome,
    Found,
    GetOutcome,
    Gone,
    Got,
    LineKind,
    ListingIncomplete,
    NotCreated,
    Ok,
    Outcome,
    Problem,
    RateLimited,
    Refused,
    Request,
    ResultLine,
    ResultsCut,
    ResultStream,
    ShardWritten,
    Transient,
    Uploaded,
    UploadOutcome,
)
from batcher.providers.download import describe, origin
from batcher.providers.gemini import request_body
from batcher.providers.gemini_settings import KEY_ENVS, GeminiSettings
from batcher.providers.gemini_wire import (
    DETAIL_CHARS,
    KEY_HEADER,
    ImageReply,
    NoImage,
    api_error,
    parse_json,
    read_capped,
    read_response,
    reasons,
    retry_delay,
)
from batcher.providers.http import SessionOwner
from batcher.ratelimit import RateGate
from batcher.retry import parse_retry_after

JSONL_MIME = "application/jsonl"
ERROR_BODY_BYTES = 1 << 20  # an error reply or a batch resource is small; far past it is not the API's
CHUNK_BYTES = 256 * 1024
PAGE_SIZE = 100
MAX_PAGES = 10_000  # a listing that never ends is a broken one, not a complete one
KEY_SNIFF_BYTES = 512  # of an over-long line, read to name its key
GRPC_INVALID_ARGUMENT = 3  # a line's error is a google.rpc.Status: gRPC codes, not HTTP statuses
_KEY_PREFIX = re.compile(rb'^\s*\{\s*"key"\s*:\s*"((?:[^"\\]|\\.)*)"')
_STATE_PREFIXES = ("BATCH_STATE_", "JOB_STATE_")


@dataclass(frozen=True)
class Page(Outcome):
    batches: tuple[BatchInfo, ...]
    next_token: str | None


PageOutcome = Page | Problem


# --- the client -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    doc: dict[str, Any] | None
    retry_after: float | None
    headers: dict[str, str]


@dataclass(frozen=True)
class _NoAnswer:
    message: str
    connected: bool  # False: the connection was refused, nothing was sent


class GeminiBatchClient(SessionOwner[GeminiSettings]):
    """One aiohttp session to the Gemini API's Batch Mode; every request first passes the shared rate gate.

    Polls, listings and downloads pass the gate with priority (they make nothing); uploads and creates do not.
    """

    name = "gemini"
    key_env = " or ".join(KEY_ENVS)
    limits = BatchLimits(max_requests=100_000, max_bytes=2_000_000_000)  # an input file is up to 2 GB

    def __init__(
        self, settings: GeminiSettings, api_key: str, gate: RateGate, *, now: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.gate = gate
        self._now = now
        self._key = api_key
        self._auth = {KEY_HEADER: api_key}
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
            **self._auth,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": JSONL_MIME,
            "Content-Type": "application/json",
        }
        start = json.dumps({"file": {"displayName": display_name}}).encode()
        await self.gate.acquire(priority=False)
        got = await self._send("POST", f"{self._root}/upload/{self.settings.api_version}/files", start, headers)
        if not isinstance(got, _Answer) or got.status != 200:
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
            got = await self._send("POST", url, body, chunk_headers, timeout=self._stream_timeout, gated=False)
        if not isinstance(got, _Answer) or got.status != 200:
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
        payload = json.dumps(body, separators=(",", ":")).encode()
        url = f"{self._base}/models/{quote(model, safe='')}:batchGenerateContent"
        record = self._recorder("batch_create")
        headers = {**self._auth, "Content-Type": "application/json"}
        await self.gate.acquire(priority=False)
        await before_send()
        got = await self._send("POST", url, payload, headers)
        if isinstance(got, _NoAnswer):
            if not got.connected:
                return NotCreated(record("not_created", got.message), got.message, retryable=True)
            msg = f"{got.message}; a batch may have been created: list to find out"
            return CreateUnknown(record("ambiguous", msg), msg)
        status = got.status
        if status == 200:
            info = batch_info(got.doc)
            if info is not None:
                return Created(record("ok", info.state, info.name, status=status), info)
            msg = "HTTP 200 that names no batch; a batch may have been created: list to find out"
            return CreateUnknown(record("ambiguous", msg, status=status), msg)
        if status == 429:
            return self._rate_limited(got, record)
        error = api_error(got.doc)
        what = self._what(status, error)
        if _is_auth(status, error):
            msg = what  # AuthError.rejected says what to check, once
            return AuthRejected(record("auth", msg, status=status), msg)
        if 400 <= status < 500:  # 408: the request did not arrive whole, so it may go again
            # files live 48 hours: a refusal naming the input file says it is gone, not that the request is bad
            missing = status in (400, 404) and file_name in what
            return NotCreated(record("not_created", what, status=status), what, retryable=status == 408,
                              input_missing=missing)  # fmt: skip
        msg = f"{what}; a batch may have been created: list to find out"
        return CreateUnknown(record("ambiguous", msg, status=status), msg)

    # --- get, list, find ----------------------------------------------------------------------------

    async def get(self, name: str) -> GetOutcome:
        """batches.get. A 503 (a big batch just done may answer so for minutes) is Transient: poll again,
        never create again."""
        record = self._recorder("batch_get")
        got = await self._gated("GET", f"{self._base}/{_path(name)}")
        if not isinstance(got, _Answer) or got.status != 200:
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
        if not isinstance(got, _Answer) or got.status != 200:
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
                    self.session.get(url, params={"alt": "media"}, headers=self._auth, timeout=self._stream_timeout)
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
                answer = _Answer(resp.status, parse_json(raw) if raw else None, None, {})
                yield self._problem(answer, record, remote=file_name, file_route=True)
                return
            yield GeminiResults(resp, self.settings.max_reply_bytes, record, file_name)

    # --- cancel, delete -----------------------------------------------------------------------------

    async def cancel(self, name: str) -> DoneOutcome:
        """batches.cancel: lines not yet run are not billed. One already done is Refused (FAILED_PRECONDITION)."""
        return await self._plain("POST", f"{self._base}/{_path(name)}:cancel", "batch_cancel", name)

    async def delete_batch(self, name: str) -> DoneOutcome:
        """Forget the batch (it still runs and bills if not done: cancel first)."""
        return await self._plain("DELETE", f"{self._base}/{_path(name)}", "batch_delete", name)

    async def delete_file(self, name: str) -> DoneOutcome:
        """Delete an uploaded input or a results file (the API deletes both after 48 hours anyway)."""
        return await self._plain("DELETE", f"{self._base}/{_path(name)}", "file_delete", name, file_route=True)

    async def _plain(self, method: str, url: str, kind: str, name: str, *, file_route: bool = False) -> DoneOutcome:
        record = self._recorder(kind)
        got = await self._gated(method, url, payload=b"" if method == "POST" else None)
        if not isinstance(got, _Answer) or got.status != 200:
            return self._problem(got, record, remote=name, file_route=file_route)
        return Ok(record("ok", "", name, status=got.status))

    # --- the wire -----------------------------------------------------------------------------------

    def _recorder(self, kind: str) -> Callable[..., CallRecord]:
        """A CallRecord maker timed from now: `record(outcome, detail, remote_id, status=...)`."""
        start, at = time.monotonic(), self._now()

        def record(
            outcome: str, detail: str = "", remote_id: str | None = None, *, status: int | None = None
        ) -> CallRecord:
            latency = (time.monotonic() - start) * 1000
            return CallRecord(kind, outcome, status, latency, at, remote_id, detail=detail[:DETAIL_CHARS] or None)

        return record

    async def _gated(
        self, method: str, url: str, *, params: dict[str, str] | None = None, payload: bytes | None = None
    ) -> _Answer | _NoAnswer:
        await self.gate.acquire(priority=True)
        return await self._send(method, url, payload, self._auth, params=params)

    async def _send(
        self,
        method: str,
        url: str,
        data: Any,
        headers: dict[str, str],
        *,
        params: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        gated: bool = True,
    ) -> _Answer | _NoAnswer:
        """One request, its small body read whole. The gate hears of every reply but a 429 (told apart by the
        caller) and a refused connection; `gated` False for the second request of an upload."""
        try:
            kwargs: dict[str, Any] = {"data": data, "headers": headers, "params": params}
            if timeout is not None:
                kwargs["timeout"] = timeout
            async with self.session.request(method, url, **kwargs) as resp:
                raw = await read_capped(resp, ERROR_BODY_BYTES)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._now())
                answer = _Answer(resp.status, parse_json(raw) if raw else None, retry_after, dict(resp.headers))
        except aiohttp.ClientConnectorError as e:
            return _NoAnswer(f"cannot connect to the Gemini API: {self._scrub(describe(e))}", connected=False)
        except aiohttp.ConnectionTimeoutError as e:  # no connection within the connect timeout (pool wait
            # included): the request never left
            return _NoAnswer(f"no connection to the Gemini API in time: {self._scrub(describe(e))}", connected=False)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            if gated:
                self.gate.answered()
            return _NoAnswer(f"no reply from the Gemini API: {self._scrub(describe(e))}", connected=True)
        if answer.status != 429 and gated:
            self.gate.answered()
        return answer

    def _problem(
        self,
        got: _Answer | _NoAnswer,
        record: Callable[..., CallRecord],
        *,
        remote: str | None = None,
        file_route: bool = False,
    ) -> Problem:
        """A failed call that makes nothing: it is safe to repeat unless the API said no for good."""
        if isinstance(got, _NoAnswer):
            return Transient(record("transient", got.message, remote), got.message)
        status = got.status
        if status == 429:
            return self._rate_limited(got, record, remote)
        error = api_error(got.doc)
        what = self._what(status, error)
        if status == 404 or (file_route and status == 403 and not reasons(error)):
            return Gone(record("gone", what, remote, status=status), what)
        if _is_auth(status, error):
            msg = what  # AuthError.rejected says what to check, once
            return AuthRejected(record("auth", msg, remote, status=status), msg)
        if status == 408 or status >= 500 or status < 400:
            return Transient(record("transient", what, remote, status=status), what)
        return Refused(record("refused", what, remote, status=status), what)

    def _rate_limited(self, got: _Answer, record: Callable[..., CallRecord], remote: str | None = None) -> RateLimited:
        error = api_error(got.doc)
        wait = retry_delay(error)
        wait = wait if wait is not None else got.retry_after
        self.gate.rate_limited(wait)
        msg = f"rate limited: {self._what(429, error)}"
        return RateLimited(record("rate_limited", msg, remote, status=429), msg, wait_s=wait)

    def _what(self, status: int, error: dict[str, Any] | None) -> str:
        api_status = str(error.get("status") or "") if error else ""
        message = self._scrub(str(error.get("message") or "")) if error else ""
        first = message.splitlines()[0] if message else ""
        return f"HTTP {status}" + (f" {api_status}" if api_status else "") + (f": {first}" if first else "")

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[key]") if self._key else text


class GeminiResults(ResultStream):
    """One results file being read. Its one call is the download's record, final once the iteration ended (its
    latency then covers the whole stream)."""

    def __init__(
        self, resp: aiohttp.ClientResponse, cap: int, record: Callable[..., CallRecord], file_name: str
    ) -> None:
        self._resp = resp
        self._cap = cap
        self._record = record
        self._file = file_name
        self.lines_read = 0
        self.call = record("open", "", file_name, status=resp.status)

    @property
    def calls(self) -> tuple[CallRecord, ...]:
        return (self.call,)

    async def lines(self) -> AsyncIterator[ResultLine]:
        """Each line parsed, in the file's order. Raises ResultsCut when the stream breaks off."""
        try:
            async for raw in _split_lines(self._resp, self._cap):
                self.lines_read += 1
                yield raw if isinstance(raw, ResultLine) else parse_result_line(raw)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            msg = f"the results download broke off after {self.lines_read} lines: {describe(e)}"
            self.call = self._record("transient", msg, self._file, status=self._resp.status)
            raise ResultsCut(msg) from e
        self.call = self._record("ok", f"{self.lines_read} lines", self._file, status=self._resp.status)


async def _split_lines(resp: aiohttp.ClientResponse, cap: int) -> AsyncIterator[bytes | ResultLine]:
    """The body's lines (without b"\\n"), one in memory at a time; a line past `cap` is skipped to its end and
    yielded as a MALFORMED ResultLine. aiohttp's own readline refuses lines past 128 KB, hence this."""
    buf = bytearray()
    over: bytes | None = None  # the head of a line past the cap, kept to name its key
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            stop = len(chunk) if end < 0 else end
            if over is None:
                if len(buf) + stop - start > cap:
                    over = bytes(buf[:KEY_SNIFF_BYTES]) + chunk[start : start + KEY_SNIFF_BYTES]
                    buf.clear()
                else:
                    buf += chunk[start:stop]
            if end < 0:
                break
            start = end + 1
            if over is not None:
                yield _oversize(over, cap)
                over = None
            elif buf.strip():
                yield bytes(buf)
                buf.clear()
    if over is not None:
        yield _oversize(over, cap)
    elif buf.strip():
        yield bytes(buf)


def _oversize(head: bytes, cap: int) -> ResultLine:
    m = _KEY_PREFIX.match(head)
    key: str | None = None
    if m is not None:
        try:
            key = json.loads(b'"' + m[1] + b'"')
        except ValueError:
            key = None
    return ResultLine(key, LineKind.MALFORMED, reason=f"a results line longer than {cap} bytes, skipped")


def parse_result_line(raw: bytes) -> ResultLine:
    """One ``{"key", "response"}`` or ``{"key", "error"}`` line, judged as the online reply would be."""
    doc = parse_json(raw)
    if doc is None:
        return ResultLine(None, LineKind.MALFORMED, reason="a results line that is not a JSON object")
    key = doc.get("key")
    key = key if isinstance(key, str) else None
    error = doc.get("error")
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), int) else None
        message = str(error.get("message") or "no message")[:DETAIL_CHARS]
        kind = FailureKind.INVALID if code == GRPC_INVALID_ARGUMENT else FailureKind.GENERATION
        reason = f"the line failed: {message}" + (f" (code {code})" if code is not None else "")
        return ResultLine(key, LineKind.FAILED, reason=reason, failure=kind, error_code=code)
    response = doc.get("response")
    if not isinstance(response, dict):
        return ResultLine(key, LineKind.MALFORMED, reason="a results line with neither response nor error")
    judged = read_response(response)
    if isinstance(judged, ImageReply):
        return ResultLine(key, LineKind.IMAGE, judged.image, judged.usage, judged.response_id)
    if isinstance(judged, NoImage):
        line_kind = LineKind.REFUSED if judged.kind is FailureKind.BLOCKED else LineKind.FAILED
        return ResultLine(key, line_kind, response_id=judged.response_id, reason=judged.reason, failure=judged.kind)
    return ResultLine(key, LineKind.MALFORMED, response_id=judged.response_id, reason=judged.message)


# --- the input file ---------------------------------------------------------------------------------


def write_shard(path: Path, items: Iterable[tuple[str, Request]]) -> ShardWritten:
    """Write a batch's JSONL input, one ``{"key", "request"}`` line per item, one line in memory at a time.
    A request that cannot go on the wire (a URL input image, a size with no aspect ratio) is left out and
    named in `invalid`; a key seen twice raises ValueError (results are matched by key)."""
    seen: set[str] = set()
    invalid: list[tuple[str, str]] = []
    written = lines = 0
    with open(path, "wb") as out:
        for key, request in items:
            if key in seen:
                raise ValueError(f"the key {key!r} appears twice in one batch")
            seen.add(key)
            try:
                body = request_body(request)
            except ValueError as e:
                invalid.append((key, str(e)))
                continue
            line = json.dumps({"key": key, "request": body}, separators=(",", ":")).encode() + b"\n"
            out.write(line)
            written += len(line)
            lines += 1
    return ShardWritten(written, lines, tuple(invalid))


# --- reading a batch --------------------------------------------------------------------------------


def _path(name: str) -> str:
    """A resource name as a URL path: its segments quoted, the slash kept."""
    return "/".join(quote(part, safe="") for part in name.split("/"))


def _is_auth(status: int, error: dict[str, Any] | None) -> bool:
    return status in (401, 403) or (status == 400 and "API_KEY_INVALID" in reasons(error))


def _count(stats: dict[str, Any], name: str) -> int:
    value = stats.get(name)
    try:
        return int(value) if isinstance(value, int | str) else 0  # int64 comes as a string
    except ValueError:
        return 0


def _state(raw: object, doc: dict[str, Any]) -> BatchState:
    text = raw if isinstance(raw, str) else ""
    for prefix in _STATE_PREFIXES:
        text = text.removeprefix(prefix)
    try:
        return BatchState(text)
    except ValueError:
        pass
    if doc.get("done") is True:  # no state we know, but the Operation says it is over
        return BatchState.FAILED if isinstance(doc.get("error"), dict) else BatchState.SUCCEEDED
    return BatchState.UNSPECIFIED


def batch_info(doc: object) -> BatchInfo | None:
    """A batch from its Operation ({name, metadata, done, response | error}), or from the bare batch."""
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"].startswith("batches/"):
        return None
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else doc
    raw_stats = meta.get("batchStats")
    raw_stats = raw_stats if isinstance(raw_stats, dict) else {}
    stats = BatchStats(
        _count(raw_stats, "requestCount"),
        _count(raw_stats, "successfulRequestCount"),
        _count(raw_stats, "failedRequestCount"),
        _count(raw_stats, "pendingRequestCount"),
    )
    responses: object = None
    for holder in (doc.get("response"), meta.get("output"), doc.get("output")):
        if isinstance(holder, dict) and isinstance(holder.get("responsesFile"), str):
            responses = holder["responsesFile"]
            break
    error = doc.get("error")
    message = None
    if isinstance(error, dict):
        message = str(error.get("message") or "the batch failed")[:DETAIL_CHARS]
        if isinstance(error.get("code"), int):
            message += f" (code {error['code']})"
    display = meta.get("displayName")
    return BatchInfo(
        name=doc["name"],
        display_name=display if isinstance(display, str) else "",
        state=_state(meta.get("state"), doc),
        stats=stats,
        responses_file=responses if isinstance(responses, str) else None,
        error=message,
    )
