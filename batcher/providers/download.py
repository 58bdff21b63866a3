"""Streaming a finished image from a URL into a sink: shared by every provider whose replies name files.

The bytes go to the sink chunk by chunk, so a large image never sits whole in memory, and a body larger than
an image can be is cut off. The caller decides which headers go along (the key only to the API's own origin).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from batcher.models import CallRecord

DETAIL_CHARS = 300  # of an error message kept in the ledger
CHUNK_BYTES = 256 * 1024


class DownloadOutcome(enum.StrEnum):
    OK = "ok"
    TRANSIENT = "transient"  # try again (an expired URL: ask the API for a fresh one first)
    PERMANENT = "permanent"  # the file is not an image, or the URL cannot be fetched at all


@dataclass(frozen=True)
class Downloaded:
    outcome: DownloadOutcome
    call: CallRecord
    message: str = ""
    expired: bool = False  # the host answered 403/404/410: the URL itself is no longer good


class Sink(Protocol):
    def write(self, chunk: bytes) -> None: ...


async def download(
    session: aiohttp.ClientSession, url: str, sink: Sink, *, max_bytes: int, headers: dict[str, str]
) -> Downloaded:
    """Stream `url` into `sink`, refusing non-HTTP schemes and anything larger than `max_bytes`."""
    start, at = time.monotonic(), time.time()

    def done(outcome: DownloadOutcome, status: int | None, message: str = "", expired: bool = False) -> Downloaded:
        call = CallRecord(
            "download", outcome, status, (time.monotonic() - start) * 1000, at, detail=message[:DETAIL_CHARS] or None
        )
        return Downloaded(outcome, call, message, expired)

    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return done(DownloadOutcome.PERMANENT, None, f"refused a file URL with scheme {scheme or '(none)'!r}")
    try:
        async with session.get(url, headers=headers, allow_redirects=True) as resp:
            if resp.status in (403, 404, 410):
                # a file URL lives a short while: a failed download makes the worker ask for a fresh one
                return done(
                    DownloadOutcome.TRANSIENT, resp.status, f"file URL expired (HTTP {resp.status})", expired=True
                )
            if resp.status == 429 or resp.status >= 500:
                return done(DownloadOutcome.TRANSIENT, resp.status, f"file host answered HTTP {resp.status}")
            if resp.status != 200:
                return done(DownloadOutcome.PERMANENT, resp.status, f"file host answered HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                return done(
                    DownloadOutcome.PERMANENT,
                    resp.status,
                    f"file is {resp.content_length} bytes, more than an image can be ({max_bytes})",
                )
            got = 0
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                got += len(chunk)
                if got > max_bytes:
                    return done(DownloadOutcome.PERMANENT, resp.status, f"file exceeds {max_bytes} bytes: not an image")
                sink.write(chunk)
            if resp.content_length is not None and got != resp.content_length:
                return done(DownloadOutcome.TRANSIENT, resp.status, f"download cut short at {got} bytes")
            return done(DownloadOutcome.OK, resp.status)
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        return done(DownloadOutcome.TRANSIENT, None, f"download failed: {describe(e)}")


def origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of a URL, lowercased: whether a URL is the API's own decides if the key goes along."""
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def describe(e: BaseException) -> str:
    """An exception as one short line for a message or the ledger (never a request's headers)."""
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:DETAIL_CHARS] if text != type(e).__name__ else text
