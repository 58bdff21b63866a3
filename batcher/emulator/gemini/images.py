"""The images the Gemini emulator returns: small patterned PNGs, or noisy ones of a realistic byte size.

A real 1K reply is a 1-2 MB PNG. To measure a client's CPU and memory on such replies, `image_bytes` asks for
PNGs of about that size: 8-bit RGB whose first rows are random bytes (which deflate cannot shrink) and whose
other rows are zeros (which deflate to almost nothing). A few variants per size are encoded once and cached,
with their base64 text, so serving one costs no encoding.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib
from collections import OrderedDict

from batcher.emulator.images import PNG_SIGNATURE, ImageCache

COLOUR_TYPE_RGB = 2
RGB_BYTES = 3
VARIANTS = 4  # distinct noisy PNGs per (size, bytes); a prompt picks one
CACHE_ENTRIES = 64
ZLIB_LEVEL = 1  # random rows stay as large at any level, so take the fastest


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def noisy_png(seed: int, width: int, height: int, target_bytes: int) -> bytes:
    """A valid RGB PNG of `width` x `height` of about `target_bytes` (never above the raw pixel size)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    row = width * RGB_BYTES
    noisy_rows = max(1, min(height, target_bytes // (row + 1)))
    rng = random.Random(seed)
    compressor = zlib.compressobj(ZLIB_LEVEL)
    parts = [compressor.compress(b"\x00" + rng.randbytes(row)) for _ in range(noisy_rows)]
    parts.append(compressor.compress(bytes(row + 1) * (height - noisy_rows)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPE_RGB, 0, 0, 0)
    idat = b"".join(parts)
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")))


class GeminiImages:
    """PNG bytes and their base64 for a prompt and pixel size, cached."""

    __slots__ = ("_b64", "_digests", "_noisy", "_small")

    def __init__(self) -> None:
        self._small = ImageCache()
        self._noisy: OrderedDict[tuple[int, int, int, int], tuple[bytes, str]] = OrderedDict()
        self._b64: OrderedDict[bytes, str] = OrderedDict()
        self._digests: dict[int, tuple[bytes, str]] = {}  # id of a cached noisy PNG -> (it, its sha256)

    def sha256(self, prompt: str, width: int, height: int, image_bytes: int | None) -> str:
        """The sha256 hex of the PNG `image` gives; a noisy PNG (one of a few per size) is hashed once."""
        png, _ = self.image(prompt, width, height, image_bytes)
        if image_bytes is None:
            return hashlib.sha256(png).hexdigest()
        found = self._digests.get(id(png))
        if found is None or found[0] is not png:
            found = self._digests[id(png)] = (png, hashlib.sha256(png).hexdigest())
            while len(self._digests) > CACHE_ENTRIES:
                del self._digests[next(iter(self._digests))]
        return found[1]

    def image(self, prompt: str, width: int, height: int, image_bytes: int | None) -> tuple[bytes, str]:
        """(png, base64 of png) for this prompt and size; `image_bytes` None means a small patterned PNG."""
        if image_bytes is None:
            png = self._small.png(prompt, width, height)
            return png, self._encoded(png)
        variant = hashlib.sha256(prompt.encode("utf-8")).digest()[0] % VARIANTS
        key = (width, height, image_bytes, variant)
        found = self._noisy.get(key)
        if found is None:
            png = noisy_png(hash(key) & 0xFFFFFFFF, width, height, image_bytes)
            found = self._noisy[key] = (png, base64.b64encode(png).decode("ascii"))
            while len(self._noisy) > CACHE_ENTRIES:
                self._noisy.popitem(last=False)
        else:
            self._noisy.move_to_end(key)
        return found

    def _encoded(self, png: bytes) -> str:
        key = hashlib.sha256(png).digest()
        found = self._b64.get(key)
        if found is None:
            found = self._b64[key] = base64.b64encode(png).decode("ascii")
            while len(self._b64) > CACHE_ENTRIES:
                self._b64.popitem(last=False)
        return found
