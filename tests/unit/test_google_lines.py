"""The shared Google wire path's fast readings: a reply or a results line with its image lifted out of the JSON,
and a JSONL body split into lines whatever pieces the connection delivers it in."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from batcher.providers.google_wire import (
    KEY_SNIFF_BYTES,
    LIFT_MIN_BYTES,
    ImageReply,
    Overlong,
    parse_json,
    parse_line,
    parse_reply,
    read_lines,
    read_response,
)

IMAGE = bytes(range(256)) * 400  # over the lift threshold once in base64
DATA = base64.b64encode(IMAGE).decode()


def reply(data: str = DATA) -> dict[str, Any]:
    parts = [{"text": 'a "data": "x" in a text'}, {"inlineData": {"mimeType": "image/png", "data": data}}]
    return {"candidates": [{"content": {"parts": parts}}], "responseId": "r1"}


def image_of(doc: dict[str, Any]) -> Any:
    return doc["candidates"][0]["content"]["parts"][1]["inlineData"]["data"]


def test_a_reply_s_image_is_lifted_not_parsed() -> None:
    doc = parse_reply(json.dumps(reply()).encode())
    assert doc is not None and isinstance(image_of(doc), memoryview)
    judged = read_response(doc)
    assert isinstance(judged, ImageReply) and judged.image.data == IMAGE


ECHOED = {"contents": [{"parts": [{"inlineData": {"data": DATA[::-1]}}]}]}  # a request's input image


@pytest.mark.parametrize(
    "line",
    [
        {"key": "k1", "response": reply()},  # Gemini Batch Mode
        {"request": ECHOED, "response": reply(), "status": ""},  # Vertex AI echoes the request first
    ],
)
def test_a_results_line_s_image_is_lifted_and_the_rest_reads_as_parsed(line: dict[str, Any]) -> None:
    raw = json.dumps(line).encode()
    lifted, parsed = parse_line(raw), parse_json(raw)
    assert lifted is not None and parsed is not None
    assert isinstance(image_of(lifted["response"]), memoryview)
    image_of(lifted["response"]).release()
    lifted["response"]["candidates"][0]["content"]["parts"][1]["inlineData"]["data"] = DATA
    assert lifted == parsed  # the echoed request's image is text again, as parsed


def test_what_cannot_be_lifted_is_parsed_whole() -> None:
    escaped = json.dumps(reply()).replace("/", "\\/").encode()  # an escape in the span: the parser reads it
    short = json.dumps(reply(DATA[: LIFT_MIN_BYTES // 2])).encode()
    elsewhere = json.dumps({"key": "k", "response": {"promptFeedback": {}}, "data": DATA}).encode()
    for raw in (escaped, short):
        doc = parse_reply(raw)
        assert doc is not None and isinstance(image_of(doc), str) and doc == parse_json(raw)
    assert parse_line(elsewhere) == parse_json(elsewhere)  # a "data" outside any image part
    assert parse_line(json.dumps(reply()).encode()[:-1]) is None  # cut short: not JSON, lifted or not


class Pieces:
    """A body delivered in the given pieces, as aiohttp's StreamReader.iter_any() delivers what arrived."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def cut(body: bytes, rng: random.Random) -> list[bytes]:
    marks = sorted(rng.sample(range(1, len(body)), k=min(len(body) - 1, rng.randint(0, 40))))
    return [body[a:b] for a, b in zip([0, *marks], [*marks, len(body)], strict=True)]


async def lines_of(pieces: list[bytes], cap: int) -> list[bytes | Overlong]:
    return [line async for line in read_lines(Pieces(pieces).iter_any(), cap)]


@pytest.mark.parametrize("seed", range(30))
async def test_lines_are_the_same_however_the_body_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    lines = [b'{"key": "%d", "v": "%s"}' % (i, b"x" * rng.choice([0, 5, 300, 5000])) for i in range(12)]
    body = b"\n".join(lines[:6]) + b"\n\n  \n" + b"\r\n".join(lines[6:]) + rng.choice([b"", b"\n"])
    want = [line for line in body.split(b"\n") if line.strip()]
    assert await lines_of(cut(body, rng), cap=10_000) == want


async def test_a_line_past_the_cap_is_skipped_and_its_head_kept() -> None:
    long = b'{"key": "big", "response": "' + b"y" * 5000 + b'"}'
    body = b'{"key": "a"}\n' + long + b'\n{"key": "b"}'
    for pieces in ([body], cut(body, random.Random(1)), [bytes([c]) for c in body]):
        got = await lines_of(pieces, cap=1000)
        assert got == [b'{"key": "a"}', Overlong(long[:KEY_SNIFF_BYTES]), b'{"key": "b"}']
