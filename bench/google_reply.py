"""CPU of one Google image reply on the client's own path: parse the body, decode the image, hash it, write it.

A Gemini API or Vertex AI online reply holds its image as base64 inside the JSON: a 1.5 MB image is a 2 MB body.
This times, in one process and with no network, what `google_wire` does with such a body (`parse_reply`, then
`read_response`), hashes the image (sha256, as the store records it) and writes it to a file, against the
standard library's path it replaced (`json.loads` of the whole body, `binascii.a2b_base64`). Each step is timed
on its own too, so the figures say where the time goes. Medians of `--repeat` runs.

    .venv/bin/python bench/google_reply.py [--image-bytes 1500000] [--repeat 200]

The whole client (the runner, the store, the HTTP session) is measured by bench/gemini_client.py.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batcher.providers.google_wire import ImageReply, parse_reply, read_response


def body(image_bytes: int) -> tuple[bytes, bytes]:
    """A GenerateContentResponse holding `image_bytes` of incompressible data as its image, and the image."""
    image = os.urandom(image_bytes)
    doc = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}}],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302},
        "modelVersion": "gemini-3.1-flash-lite-image",
        "responseId": "bench",
    }
    return json.dumps(doc).encode(), image


def stdlib_image(raw: bytes) -> bytes:
    """The path before: the whole body through json.loads, the base64 through binascii."""
    doc: dict[str, Any] = json.loads(raw)
    data = doc["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
    return binascii.a2b_base64(data, strict_mode=True)


def wire_image(raw: bytes) -> bytes:
    """The path now: google_wire's parse_reply and read_response."""
    doc = parse_reply(raw)
    assert doc is not None
    judged = read_response(doc)
    assert isinstance(judged, ImageReply) and judged.image.data is not None
    return judged.image.data


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-bytes", type=int, default=1_500_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    raw, image = body(args.image_bytes)
    assert stdlib_image(raw) == image == wire_image(raw)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "image.png"

        def whole(decode: Callable[[bytes], bytes]) -> Callable[[], None]:
            def run() -> None:
                data = decode(raw)
                hashlib.sha256(data).digest()
                with open(target, "wb") as out:
                    out.write(data)

            return run

        def write() -> None:
            with open(target, "wb") as out:
                out.write(image)

        text = base64.b64encode(image).decode()
        steps = {
            "json.loads, the whole body": lambda: json.loads(raw),
            "parse_reply (the image's span cut out)": lambda: parse_reply(raw),
            "binascii.a2b_base64": lambda: binascii.a2b_base64(text, strict_mode=True),
            "sha256 of the image": lambda: hashlib.sha256(image).digest(),
            "write the image to a file": write,
        }
        before = median_ms(whole(stdlib_image), args.repeat)
        now = median_ms(whole(wire_image), args.repeat)
        parts = {name: median_ms(fn, args.repeat) for name, fn in steps.items()}
    mb = len(image) / 2**20
    print(f"one reply of a {mb:.2f} MB image ({len(raw) / 2**20:.2f} MB body), CPU ms, medians of {args.repeat}")
    print(f"  parse + decode + sha256 + write, standard library: {before:.2f} ms")
    print(f"  parse + decode + sha256 + write, google_wire:      {now:.2f} ms  ({before / now:.1f}x)")
    print("  steps:")
    for name, ms in parts.items():
        print(f"    {name:<42} {ms:.2f} ms")
    decode_only = median_ms(lambda: wire_image(raw), args.repeat)
    print(f"    {'parse_reply + read_response (pybase64)':<42} {decode_only:.2f} ms")


if __name__ == "__main__":
    main()
