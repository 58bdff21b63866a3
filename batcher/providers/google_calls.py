"""What every Google client shares on the wire: a session sized by its settings, a credential that is checked
before anything is sent, the ledger's record of each call, secrets scrubbed from every message, and (for the
small calls of the batch APIs: files, batches, jobs, listings) one request with its small body read whole and
every failure classified the same way.

| reply                                                      | outcome of a call that makes nothing         |
| ---------------------------------------------------------- | -------------------------------------------- |
| 404 (and 403 without ErrorInfo on a file: Google's answer  | Gone                                         |
|   for a file that is not there)                            |                                              |
| 401, 403, 400 API_KEY_INVALID; a credential refused        | AuthRejected                                 |
| 429                                                        | RateLimited (RetryInfo or Retry-After told   |
|                                                            |   to the gate)                               |
| 408, 5xx, a timeout, a reset, a refused connection         | Transient (repeat it freely)                 |
| any other 4xx                                              | Refused                                      |

A 401 to a bearer token renews it and sends the request once more (a 401 proves nothing was done); an API key's
401 is final. The call that bills (a batch's create) classifies its own replies, on the same `send`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar
from urllib.parse import quote

import aiohttp

from batcher.errors import AuthError
from batcher.models import CallRecord
from batcher.providers.auth import Credential, CredentialRefused, CredentialUnavailable
from batcher.providers.base import (
    AuthRejected,
    BatchInfo,
    Created,
    CreateOutcome,
    CreateUnknown,
    DoneOutcome,
    Gone,
    NotCreated,
    Ok,
    Problem,
    RateLimited,
    Refused,
    Transient,
)
from batcher.providers.download import describe
from batcher.providers.google_wire import DETAIL_CHARS, api_error, parse_json, read_capped, reasons, retry_delay
from batcher.providers.http import HttpLimits, SessionOwner
from batcher.ratelimit import RateGate
from batcher.retry import parse_retry_after

ERROR_BODY_BYTES = 1 << 20  # an error reply or a resource is small; far past it is not the API's
Record = Callable[..., CallRecord]


class GoogleLimits(HttpLimits, Protocol):
    @property
    def max_reply_bytes(self) -> int: ...
    @property
    def max_image_bytes(self) -> int: ...


S = TypeVar("S", bound=GoogleLimits)


@dataclass(frozen=True)
class Answer:
    status: int
    doc: dict[str, Any] | None
    retry_after: float | None
    headers: dict[str, str]


@dataclass(frozen=True)
class NoAnswer:
    message: str
    connected: bool  # False: nothing was sent (a refused connection, no credential to send it with)
    refused: bool = False  # the credential itself was refused by its token endpoint


class GoogleSession(SessionOwner[S], Generic[S]):
    """One aiohttp session to a Google API and its credential; every request first passes the shared rate
    gate. `now` is the wall clock (epoch seconds): it times the ledger's records."""

    name: str  # the provider, as the registry and the store know it
    label: str  # the API, for messages: "the Gemini API", "Vertex AI"
    key_env: str  # what to check when the API refuses the credential: the credential's own hint

    def __init__(self, settings: S, credential: Credential, gate: RateGate, *,
                 now: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.settings = settings
        self.credential = credential
        self.key_env = credential.hint
        self.gate = gate
        self._now = now

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        try:
            try:  # a credential that cannot work fails here, before anything is sent
                await self.credential.prepare()
            except (CredentialUnavailable, CredentialRefused) as e:
                raise AuthError(f"{e}: check {self.credential.hint}; nothing was sent") from None
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _what(self, status: int | None, error: dict[str, Any] | None) -> str:
        """`HTTP 400 INVALID_ARGUMENT: the message's first line`, scrubbed of the credential."""
        api_status = str(error.get("status") or "") if error else ""
        message = self._scrub(str(error.get("message") or "")) if error else ""
        first = message.splitlines()[0] if message else ""
        return f"HTTP {status or 0}" + (f" {api_status}" if api_status else "") + (f": {first}" if first else "")

    def _scrub(self, text: str) -> str:
        return self.credential.scrub(text)


class GoogleCalls(GoogleSession[S]):
    """The small calls of a batch API, each one request; nothing here retries but a 401 with a renewed token."""

    def _recorder(self, kind: str) -> Record:
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
    ) -> Answer | NoAnswer:
        """A call that makes nothing (a poll, a listing, a cancel): through the gate with priority."""
        await self.gate.acquire(priority=True)
        return await self._send(method, url, payload, {}, params=params)

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
        authorised: bool = True,
    ) -> Answer | NoAnswer:
        """One request, its small body read whole; sent once more after a 401 when the credential renews (only
        a body in memory can go twice). The gate hears of every reply but a 429 (told apart by the caller) and
        a refused connection; `gated` False for a request that did not pass it (an upload's second).
        `authorised` False for a URL that carries its own credential (an upload URL)."""
        kwargs: dict[str, Any] = {"data": data, "params": params}
        if timeout is not None:
            kwargs["timeout"] = timeout
        again = authorised and (data is None or isinstance(data, bytes))
        try:
            for attempt in (1, 2):
                auth = await self.credential.headers() if authorised else {}
                async with self.session.request(method, url, headers={**auth, **headers}, **kwargs) as resp:
                    status = resp.status
                    raw = await read_capped(resp, ERROR_BODY_BYTES)
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._now())
                    answer = Answer(status, parse_json(raw) if raw else None, retry_after, dict(resp.headers))
                if status != 401 or attempt == 2 or not again or not await self.credential.renew(auth):
                    break
        except CredentialUnavailable as e:  # no token to send with: nothing was sent
            return NoAnswer(f"no credential for {self.label} for now: {e}", connected=False)
        except CredentialRefused as e:
            return NoAnswer(f"the credential was refused: {e}", connected=False, refused=True)
        except aiohttp.ClientConnectorError as e:
            return NoAnswer(f"cannot connect to {self.label}: {self._scrub(describe(e))}", connected=False)
        except aiohttp.ConnectionTimeoutError as e:  # no connection within the connect timeout (pool wait
            # included): the request never left
            return NoAnswer(f"no connection to {self.label} in time: {self._scrub(describe(e))}", connected=False)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            if gated:
                self.gate.answered()
            return NoAnswer(f"no reply from {self.label}: {self._scrub(describe(e))}", connected=True)
        if answer.status != 429 and gated:
            self.gate.answered()
        return answer

    def _problem(
        self, got: Answer | NoAnswer, record: Record, *, remote: str | None = None, file_route: bool = False
    ) -> Problem:
        """A failed call that makes nothing: it is safe to repeat unless the API said no for good."""
        if isinstance(got, NoAnswer):
            if got.refused:
                return AuthRejected(record("auth", got.message, remote), got.message)
            return Transient(record("transient", got.message, remote), got.message)
        status = got.status
        if status == 429:
            return self._rate_limited(got, record, remote)
        error = api_error(got.doc)
        what = self._what(status, error)
        if status == 404 or (file_route and status == 403 and not reasons(error)):
            return Gone(record("gone", what, remote, status=status), what)
        if is_auth(status, error):
            msg = what  # AuthError.rejected says what to check, once
            return AuthRejected(record("auth", msg, remote, status=status), msg)
        if status == 408 or status >= 500 or status < 400:
            return Transient(record("transient", what, remote, status=status), what)
        return Refused(record("refused", what, remote, status=status), what)

    def _rate_limited(self, got: Answer, record: Record, remote: str | None = None) -> RateLimited:
        """A 429: the API's own wait (RetryInfo, else Retry-After) told to the gate. Where the API gives none
        (Vertex's Dynamic Shared Quota), the gate backs off and finds the pace itself."""
        error = api_error(got.doc)
        wait = retry_delay(error)
        wait = wait if wait is not None else got.retry_after
        self.gate.rate_limited(wait)
        msg = f"rate limited: {self._what(429, error)}"
        return RateLimited(record("rate_limited", msg, remote, status=429), msg, wait_s=wait)

    async def _create(
        self,
        url: str,
        body: dict[str, Any],
        input_name: str,
        parse: Callable[[object], BatchInfo | None],
        *,
        before_send: Callable[[], Awaitable[None]],
    ) -> CreateOutcome:
        """The one call that bills: a batch's create. Not idempotent: `before_send` (after the gate, just before
        the bytes leave; it may raise, and then nothing was sent) is where the caller commits its intent. Any
        reply that does not prove the batch absent or present is CreateUnknown: reconcile by listing, never
        create blind (a 5xx too: a create is cheap to reconcile and expensive to double)."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        record = self._recorder("batch_create")
        await self.gate.acquire(priority=False)
        await before_send()
        got = await self._send("POST", url, payload, {"Content-Type": "application/json"})
        if isinstance(got, NoAnswer):
            if got.refused:
                return AuthRejected(record("auth", got.message), got.message)
            if not got.connected:
                return NotCreated(record("not_created", got.message), got.message, retryable=True)
            msg = f"{got.message}; a batch may have been created: list to find out"
            return CreateUnknown(record("ambiguous", msg), msg)
        status = got.status
        if status == 200:
            info = parse(got.doc)
            if info is not None:
                return Created(record("ok", info.state, info.name, status=status), info)
            msg = "HTTP 200 that names no batch; a batch may have been created: list to find out"
            return CreateUnknown(record("ambiguous", msg, status=status), msg)
        if status == 429:
            return self._rate_limited(got, record)
        error = api_error(got.doc)
        what = self._what(status, error)
        if is_auth(status, error):
            msg = self._refused_credential(status, what)  # AuthError.rejected says what to check, once
            return AuthRejected(record("auth", msg, status=status), msg)
        if 400 <= status < 500:  # 408: the request did not arrive whole, so it may go again
            # inputs do not live for ever: a refusal naming the input says it is gone, not that the request is bad
            missing = status in (400, 404) and input_name in what
            return NotCreated(record("not_created", what, status=status), what, retryable=status == 408,
                              input_missing=missing)  # fmt: skip
        msg = f"{what}; a batch may have been created: list to find out"
        return CreateUnknown(record("ambiguous", msg, status=status), msg)

    def _refused_credential(self, status: int, what: str) -> str:
        """What a refusal of the credential says (a provider adds what it knows: the project, say)."""
        return what

    async def _plain(self, method: str, url: str, kind: str, name: str, *, file_route: bool = False) -> DoneOutcome:
        """A cancel or a delete: Ok, or why not."""
        record = self._recorder(kind)
        got = await self._gated(method, url, payload=b"" if method == "POST" else None)
        if not isinstance(got, Answer) or got.status != 200:
            return self._problem(got, record, remote=name, file_route=file_route)
        return Ok(record("ok", "", name, status=got.status))


def is_auth(status: int, error: dict[str, Any] | None) -> bool:
    """A reply that refuses the credential: trying again with it cannot help."""
    return status in (401, 403) or (status == 400 and "API_KEY_INVALID" in reasons(error))


def url_path(name: str) -> str:
    """A resource name as a URL path: its segments quoted, the slash kept."""
    return "/".join(quote(part, safe="") for part in name.split("/"))
