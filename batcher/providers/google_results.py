"""A batch's results as Google writes them, JSONL with one base64 image a line, read a line at a time.

Both batch APIs write one object per line: Gemini's Batch Mode `{"key", "response" | "error"}`, Vertex's batch
prediction the input's fields echoed with `response` and `status`. The bytes come from an HTTP download or a
Cloud Storage object; whichever, they are split here with a cap per line (aiohttp's own readline refuses lines
past 128 KB, and a line far past an image's size is not the API's), and each line is judged by the provider's
own parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from batcher.models import CallRecord
from batcher.providers.base import FailureKind, LineKind, ResultLine, ResultsCut, ResultStream
from batcher.providers.download import describe
from batcher.providers.google_wire import ImageReply, NoImage, Overlong, read_lines, read_response

_KEY_PREFIX = re.compile(rb'^\s*\{\s*"key"\s*:\s*"((?:[^"\\]|\\.)*)"')

Record = Callable[..., CallRecord]


async def split_lines(chunks: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes | ResultLine]:
    """The lines of a stream of chunks (google_wire.read_lines); a line past `cap` comes as a MALFORMED
    ResultLine naming its key where its head does."""
    async for raw in read_lines(chunks, cap):
        yield oversize(raw.head, cap) if isinstance(raw, Overlong) else raw


def oversize(head: bytes, cap: int) -> ResultLine:
    """A line past the cap, skipped: its key where the line begins with it, for the runner to settle it."""
    m = _KEY_PREFIX.match(head)
    key: str | None = None
    if m is not None:
        try:
            key = json.loads(b'"' + m[1] + b'"')
        except ValueError:
            key = None
    return ResultLine(key, LineKind.MALFORMED, reason=f"a results line longer than {cap} bytes, skipped")


def judged_line(key: str | None, response: dict[str, Any]) -> ResultLine:
    """A results line's GenerateContentResponse judged as the online reply would be: an image (billed), a
    refusal, a generation that ended without one, or a garbled reply (which may have been billed)."""
    judged = read_response(response)
    if isinstance(judged, ImageReply):
        return ResultLine(key, LineKind.IMAGE, judged.image, judged.usage, judged.response_id)
    if isinstance(judged, NoImage):
        kind = LineKind.REFUSED if judged.kind is FailureKind.BLOCKED else LineKind.FAILED
        return ResultLine(key, kind, response_id=judged.response_id, reason=judged.reason, failure=judged.kind)
    return ResultLine(key, LineKind.MALFORMED, response_id=judged.response_id, reason=judged.message)


class LineStream(ResultStream):
    """One results file read as a stream of judged lines. Its one call is the read's record, final once the
    iteration ended (its latency then covers the whole stream). `breaks` are the errors that mean the stream
    broke off (a reset, a timeout): they end the iteration as ResultsCut, to read the file again later."""

    def __init__(self, chunks: AsyncIterator[bytes], parse: Callable[[bytes], ResultLine], *, cap: int,
                 record: Record, name: str, status: int | None, breaks: tuple[type[BaseException], ...]) -> None:  # fmt: skip
        self._chunks, self._parse, self._cap = chunks, parse, cap
        self._record, self._name, self._status, self._breaks = record, name, status, breaks
        self.lines_read = 0
        self.call = record("open", "", name, status=status)

    @property
    def calls(self) -> tuple[CallRecord, ...]:
        return (self.call,)

    async def lines(self) -> AsyncIterator[ResultLine]:
        try:
            async for raw in split_lines(self._chunks, self._cap):
                self.lines_read += 1
                yield raw if isinstance(raw, ResultLine) else self._parse(raw)
        except self._breaks as e:
            msg = f"the results download broke off after {self.lines_read} lines: {describe(e)}"
            self.call = self._record("transient", msg, self._name, status=self._status)
            raise ResultsCut(msg) from e
        self.call = self._record("ok", f"{self.lines_read} lines", self._name, status=self._status)
