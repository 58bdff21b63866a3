"""The Gemini provider over real HTTP against the Gemini emulator: each reply the contract lists, one outcome."""

from __future__ import annotations

import base64
import datetime as dt
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from batcher.emulator import GeminiEmulator
from batcher.errors import AuthError
from batcher.providers.base import (
    AuthRejected,
    Done,
    Failed,
    FailureKind,
    Gone,
    Image,
    Provider,
    QuotaExhausted,
    RateLimited,
    Request,
    Transient,
    Unknown,
)
from batcher.providers.gemini import GeminiProvider, gemini_key
from batcher.providers.gemini_settings import GeminiSettings
from batcher.ratelimit import RateGate
from tests.conftest import StartGemini
from tests.emulator.emu_helpers import LITE, read_png

# 2026-12-02 12:00 in Los Angeles (PST, UTC-8): the quota day ends at 2026-12-03 00:00 PST, 08:00 UTC.
NOON_PACIFIC = dt.datetime(2026, 12, 2, 20, 0, tzinfo=dt.UTC).timestamp()
NEXT_MIDNIGHT_PACIFIC = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC).timestamp()
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG_1X1).decode()


class RecordingGate(RateGate):
    """A gate that never waits and keeps what the provider told it, in order."""

    def __init__(self) -> None:
        super().__init__(None)
        self.events: list[str] = []
        self.waits: list[float | None] = []

    async def acquire(self, *, priority: bool) -> None:
        self.events.append("poll" if priority else "acquire")

    def rate_limited(self, retry_after_s: float | None) -> None:
        self.events.append("rate_limited")
        self.waits.append(retry_after_s)

    def answered(self) -> None:
        self.events.append("answered")


class Sent:
    """A `before_send` that records its call in the gate's event list, so the order shows."""

    def __init__(self, gate: RecordingGate) -> None:
        self.gate = gate

    async def __call__(self) -> None:
        self.gate.events.append("before_send")


def request(
    prompt: str = "a red mug", *, model: str = LITE, size: str = "16x9", images: tuple[str, ...] = ()
) -> Request:
    return Request(model=model, prompt=prompt, quality="1K", size=size, images=images)


@asynccontextmanager
async def provider(
    emu: GeminiEmulator | None = None,
    *,
    key: str | None = None,
    now: Callable[[], float] = lambda: NOON_PACIFIC,
    **settings: Any,
) -> AsyncIterator[tuple[GeminiProvider, RecordingGate]]:
    gate = RecordingGate()
    if emu is not None:
        settings.setdefault("base_url", emu.origin)
    api_key = key if key is not None else emu.api_key if emu is not None else "k"
    async with GeminiProvider(GeminiSettings(**settings), api_key, gate, now=now) as p:
        yield p, gate


async def submit(emu: GeminiEmulator, req: Request | None = None, **kw: Any) -> tuple[Any, RecordingGate]:
    async with provider(emu, **kw) as (p, gate):
        outcome = await p.submit(req or request(), before_send=Sent(gate))
    return outcome, gate


async def test_it_is_a_provider() -> None:
    typed: Provider = GeminiProvider(GeminiSettings(), "AIza-secret", RecordingGate())  # mypy checks the Protocol
    assert typed.name == "gemini" and "AIza-secret" not in repr(typed)


# --- success ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1beta", "v1"])
async def test_a_clean_generation_is_done_with_the_decoded_png(start_gemini: StartGemini, version: str) -> None:
    emu = await start_gemini()
    outcome, gate = await submit(emu, api_version=version)
    assert isinstance(outcome, Done), outcome
    assert outcome.image.mime_type == "image/png" and outcome.image.data is not None
    png = read_png(outcome.image.data)
    assert (png.width, png.height) == (1376, 768)  # 16x9 went as aspectRatio 16:9
    assert outcome.usage["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": 1290}]
    assert outcome.handle and outcome.call.remote_task_id == outcome.handle
    call = outcome.call
    assert (call.kind, call.outcome, call.http_status, call.at) == ("create", "ok", 200, NOON_PACIFIC)
    assert call.detail == "1290 image tokens"
    assert gate.events == ["acquire", "before_send", "answered"]
    stats = emu.stats
    assert stats.images_billed == 1 and stats.billed_by_prompt == {"a red mug": 1}
    assert stats.requests_by_version == {version: 1}


async def test_a_reply_of_megabytes_is_read_whole(start_gemini: StartGemini) -> None:
    emu = await start_gemini(image_bytes=2_000_000)  # a 2.7 MB JSON body, many socket reads
    outcome, _ = await submit(emu)
    assert isinstance(outcome, Done) and outcome.image.data is not None
    assert len(outcome.image.data) > 1_900_000
    read_png(outcome.image.data)


async def test_a_reply_past_the_cap_is_unknown(start_gemini: StartGemini) -> None:
    emu = await start_gemini(image_bytes=200_000)
    outcome, _ = await submit(emu, max_reply_bytes=100_000)
    assert isinstance(outcome, Unknown) and "larger than 100000 bytes" in outcome.message
    assert emu.stats.images_billed == 1  # why it is unknown, not transient


async def test_input_images_go_inline_after_the_prompt(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    plain, _ = await submit(emu, request("edit this"))
    edited, _ = await submit(emu, request("edit this", images=(DATA_URI, DATA_URI)))
    assert isinstance(plain, Done) and isinstance(edited, Done), edited
    assert emu.stats.input_images == 2
    # the emulator counts 258 prompt tokens per input image it decoded
    assert edited.usage["promptTokenCount"] == plain.usage["promptTokenCount"] + 2 * 258


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("https://cdn.example/in.png", "is a URL"),
        ("data:image/png,rawbytes", "base64 data: URI"),
        ("data:text/plain;base64,aGk=", "base64 data: URI"),
        ("/tmp/in.png", "neither a data: URI nor a URL"),
    ],
)
async def test_an_image_that_cannot_go_inline_is_refused_unsent(
    start_gemini: StartGemini, image: str, words: str
) -> None:
    emu = await start_gemini()
    outcome, gate = await submit(emu, request(images=(image,)))
    assert isinstance(outcome, Failed) and outcome.kind is FailureKind.INVALID and not outcome.billed
    assert words in outcome.reason
    assert outcome.call.kind == "not_sent"  # never counted as a submission
    assert gate.events == [] and emu.stats.requests == {}


async def test_a_size_that_is_no_aspect_ratio_is_refused_unsent(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    outcome, gate = await submit(emu, request(size="1024x1024px"))
    assert isinstance(outcome, Failed) and outcome.kind is FailureKind.INVALID
    assert gate.events == [] and emu.stats.requests == {}


# --- refusals -----------------------------------------------------------------------------------------


async def test_a_refused_candidate_is_blocked_not_billed(start_gemini: StartGemini) -> None:
    emu = await start_gemini(refusal_rate=1.0)
    outcome, gate = await submit(emu)
    assert isinstance(outcome, Failed) and outcome.kind is FailureKind.BLOCKED and not outcome.billed
    assert outcome.reason.startswith("blocked by the model: IMAGE_SAFETY")
    assert outcome.call.outcome == "blocked" and outcome.call.remote_task_id
    assert gate.events == ["acquire", "before_send", "answered"]
    assert emu.stats.images_billed == 0 and emu.stats.refusals == 1


async def test_a_blocked_prompt_is_blocked_not_billed(start_gemini: StartGemini) -> None:
    emu = await start_gemini(block_rate=1.0, block_reason="PROHIBITED_CONTENT")
    outcome, _ = await submit(emu)
    assert isinstance(outcome, Failed) and outcome.kind is FailureKind.BLOCKED and not outcome.billed
    assert "PROHIBITED_CONTENT" in outcome.reason and "blockReason" in outcome.reason
    assert emu.stats.images_billed == 0 and emu.stats.blocked == 1


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("knob", "code"), [("error_500_rate", 500), ("error_503_rate", 503), ("error_504_rate", 504)])
async def test_the_apis_own_5xx_is_transient(start_gemini: StartGemini, knob: str, code: int) -> None:
    emu = await start_gemini(**{knob: 1.0})
    outcome, gate = await submit(emu)
    assert isinstance(outcome, Transient), outcome
    assert outcome.call.http_status == code and outcome.call.outcome == "transient"
    assert gate.events == ["acquire", "before_send", "answered"]
    assert emu.stats.images_billed == 0


async def test_an_html_502_is_unknown(start_gemini: StartGemini) -> None:
    emu = await start_gemini(gateway_502_rate=1.0)
    outcome, gate = await submit(emu)
    assert isinstance(outcome, Unknown) and "not the API's" in outcome.message
    assert outcome.call.http_status == 502 and outcome.call.outcome == "ambiguous"
    assert gate.events[-1] == "answered"
    assert emu.stats.images_billed == 1  # the emulator billed it: only Unknown is honest


@pytest.mark.parametrize(("knob", "billed"), [("drop_rate", 0), ("lost_reply_rate", 1)])
async def test_a_connection_closed_after_sending_is_unknown(start_gemini: StartGemini, knob: str, billed: int) -> None:
    emu = await start_gemini(**{knob: 1.0})
    outcome, _ = await submit(emu)
    assert isinstance(outcome, Unknown) and outcome.message.startswith("no reply")
    assert outcome.call.http_status is None
    assert emu.stats.images_billed == billed  # the client cannot tell these two apart


async def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with provider(base_url=f"http://127.0.0.1:{port}") as (p, gate):
        outcome = await p.submit(request(), before_send=Sent(gate))
    assert isinstance(outcome, Transient) and "cannot connect" in outcome.message
    assert gate.events == ["acquire", "before_send"]  # no reply: the gate hears nothing


async def test_a_per_minute_429_waits_as_retry_info_says(start_gemini: StartGemini) -> None:
    emu = await start_gemini(quota_429_rate=1.0, retry_delay_s=47)
    outcome, gate = await submit(emu)
    assert isinstance(outcome, RateLimited) and outcome.wait_s == 47.0
    assert "GenerateRequestsPerMinutePerProjectPerModel" in outcome.message
    assert gate.events == ["acquire", "before_send", "rate_limited"] and gate.waits == [47.0]
    assert outcome.call.outcome == "rate_limited" and outcome.call.http_status == 429


async def test_the_account_rate_limit_is_rate_limited(start_gemini: StartGemini) -> None:
    emu = await start_gemini(rate_limit=0.5, burst=1)
    async with provider(emu) as (p, gate):
        first = await p.submit(request("one"), before_send=Sent(gate))
        second = await p.submit(request("two"), before_send=Sent(gate))
    assert isinstance(first, Done) and isinstance(second, RateLimited)
    assert gate.waits == [2.0]


async def test_a_per_day_429_stops_until_midnight_pacific(start_gemini: StartGemini) -> None:
    emu = await start_gemini(daily_limit=1)
    async with provider(emu) as (p, gate):
        assert isinstance(await p.submit(request("first"), before_send=Sent(gate)), Done)
        gate.events.clear()
        outcome = await p.submit(request("second"), before_send=Sent(gate))
    assert isinstance(outcome, QuotaExhausted), outcome
    assert outcome.until == NEXT_MIDNIGHT_PACIFIC
    # the quota it names; when it resets is `until`, which QuotaError.spent says (once)
    assert outcome.message == "GenerateRequestsPerDayPerProjectPerModel"
    # neither a pause of the pool nor a cut of the rate: the worker stops creating until `until`
    assert gate.events == ["acquire", "before_send"]
    assert outcome.call.outcome == "quota_exhausted"


@pytest.mark.parametrize(("key", "code"), [("AIza-wrong-key-123456", 400), ("", 403)])
async def test_a_bad_key_is_rejected_without_the_key(start_gemini: StartGemini, key: str, code: int) -> None:
    emu = await start_gemini()
    outcome, _ = await submit(emu, key=key)
    assert isinstance(outcome, AuthRejected), outcome
    assert outcome.message.startswith(f"HTTP {code}"), outcome.message  # the reply; the error adds what to check
    said = AuthError.rejected(outcome.message, gemini_key(key).hint).message
    assert said.count("GEMINI_API_KEY") == said.count("GOOGLE_API_KEY") == 1, said
    assert outcome.call.http_status == code and outcome.call.outcome == "auth"
    if key:
        assert key not in outcome.message and key not in (outcome.call.detail or "")


async def test_an_unknown_model_is_invalid(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    outcome, _ = await submit(emu, request(model="gemini-9-imaginary"))
    assert isinstance(outcome, Failed) and outcome.kind is FailureKind.INVALID and not outcome.billed
    assert outcome.call.http_status == 404 and "NOT_FOUND" in outcome.reason


async def test_a_ratio_the_model_lacks_is_invalid(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    outcome, _ = await submit(emu, request(model="gemini-2.5-flash-image", size="8x1"))
    assert isinstance(outcome, Failed) and outcome.kind is FailureKind.INVALID
    assert outcome.call.http_status == 400 and "INVALID_ARGUMENT" in outcome.reason


async def test_before_send_raising_sends_nothing(start_gemini: StartGemini) -> None:
    emu = await start_gemini()

    async def refuse() -> None:
        raise RuntimeError("the store is gone")

    async with provider(emu) as (p, gate):
        with pytest.raises(RuntimeError, match="the store is gone"):
            await p.submit(request(), before_send=refuse)
    assert gate.events == ["acquire"] and emu.stats.requests == {}


# --- check and fetch ----------------------------------------------------------------------------------


async def test_check_says_an_online_reply_is_gone(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    async with provider(emu) as (p, gate):
        outcome = await p.check("some-response-id")
    assert isinstance(outcome, Gone) and "cannot be fetched again" in outcome.message
    assert gate.events == [] and emu.stats.requests == {}


class Buffer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)


async def test_fetch_writes_the_replys_bytes_exactly(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    async with provider(emu) as (p, gate):
        done = await p.submit(request(), before_send=Sent(gate))
        assert isinstance(done, Done) and done.image.data is not None
        sink = Buffer()
        fetched = await p.fetch(done.image, sink)
    assert fetched.ok and fetched.call is None
    assert b"".join(sink.chunks) == done.image.data


async def test_fetch_streams_a_url_without_the_key_to_a_foreign_host(start_gemini: StartGemini) -> None:
    emu = await start_gemini()
    seen: list[str | None] = []

    async def serve(req: web.Request) -> web.Response:
        seen.append(req.headers.get("x-goog-api-key"))
        if req.path == "/gone.png":
            return web.Response(status=410)
        return web.Response(body=PNG_1X1, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with provider(emu) as (p, _):
            sink = Buffer()
            fetched = await p.fetch(Image(url=f"http://127.0.0.1:{port}/out.png"), sink)
            expired = await p.fetch(Image(url=f"http://127.0.0.1:{port}/gone.png"), Buffer())
    finally:
        await runner.cleanup()
    assert fetched.ok and fetched.call is not None and fetched.call.kind == "download"
    assert b"".join(sink.chunks) == PNG_1X1
    assert not expired.ok and expired.retryable and "410" in expired.message
    assert seen == [None, None]
