"""The images the emulator serves: small real PNGs whose look is a pure function of the prompt.

A prompt's SHA-256 picks a 4-colour palette and the cell size of a stepped diagonal pattern. Pixel index
``((x // cell_w) + (y // cell_h)) % 4``, stored as 2-bit palette pixels, means an image has only four
distinct rows: even a 4K frame is a few megabytes of raw rows that deflate at level 1 in milliseconds.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections import OrderedDict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BIT_DEPTH = 2  # bits per pixel
COLOUR_TYPE_PALETTE = 3
PIXELS_PER_BYTE = 8 // BIT_DEPTH
PALETTE_SIZE = 4
ZLIB_LEVEL = 1  # the rows repeat, so a fast level compresses them about as well as a slow one

BLOB_PX = 16  # photo_png's coarse detail, px
CACHE_ENTRIES = 256
CACHE_BYTES = 64 * 2**20  # bytes of encoded PNGs kept


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(prompt: str, width: int, height: int) -> bytes:
    """A valid PNG of `width` x `height` pixels whose palette and pattern come from the prompt."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    palette = digest[: 3 * PALETTE_SIZE]
    cell_bytes = 4 + digest[12] % 60  # cell width in whole bytes, so a cell is one repeated byte value
    cell_h = 8 + digest[13] % 120  # rows

    # One period of a row holds the four palette indices; byte 0x55 * i is index i in all four pixels.
    period = b"".join(bytes([0x55 * i]) * cell_bytes for i in range(PALETTE_SIZE))
    row_bytes = -(-width // PIXELS_PER_BYTE)
    repeats = row_bytes // len(period) + 2
    rows = []
    for phase in range(PALETTE_SIZE):
        shift = phase * cell_bytes
        rotated = period[shift:] + period[:shift]
        rows.append(b"\x00" + (rotated * repeats)[:row_bytes])  # filter type 0: None

    compressor = zlib.compressobj(ZLIB_LEVEL)
    parts = []
    for band_top in range(0, height, cell_h):
        band_rows = min(cell_h, height - band_top)
        parts.append(compressor.compress(rows[(band_top // cell_h) % PALETTE_SIZE] * band_rows))
    parts.append(compressor.flush())

    header = struct.pack(">IIBBBBB", width, height, BIT_DEPTH, COLOUR_TYPE_PALETTE, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"PLTE", palette),
            _chunk(b"IDAT", b"".join(parts)),
            _chunk(b"IEND", b""),
        )
    )


class ImageCache:
    """An LRU of encoded PNGs keyed by (prompt digest, width, height), bounded in entries and bytes."""

    __slots__ = ("_bytes", "_entries", "max_bytes", "max_entries")

    def __init__(self, max_entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[bytes, int, int], bytes] = OrderedDict()
        self._bytes = 0

    def png(self, prompt: str, width: int, height: int) -> bytes:
        """The PNG for a prompt and size, encoded at most once while it stays cached."""
        key = (hashlib.sha256(prompt.encode("utf-8")).digest(), width, height)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        data = encode_png(prompt, width, height)
        self._entries[key] = data
        self._bytes += len(data)
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
        return data

    def __len__(self) -> int:
        return len(self._entries)


def photo_png(seed: int, width: int, height: int) -> bytes:
    """A PNG as heavy as the real API's (about 1.8 MB at 1024x1024, in 0.1 s), for the gallery's test and
    benchmark: the emulator's own images deflate to kilobytes, smaller than a thumbnail of them.

    Per channel: a gradient, blobs (noise 16 times coarser, smoothly scaled up: detail that a thumbnail keeps, so
    it is as large as a photo's, about 20 KB) and 3 bits of grain, which PNG's filters cannot predict away."""
    import random

    from PIL import Image, ImageChops  # only the gallery's test and benchmark come here

    rng = random.Random(seed)
    grad = Image.linear_gradient("L").resize((width, height))
    small = (max(1, width // BLOB_PX), max(1, height // BLOB_PX))
    bands = []
    for i in range(3):
        blobs = Image.frombytes("L", small, rng.randbytes(small[0] * small[1]))
        grain = Image.frombytes("L", (width, height), rng.randbytes(width * height)).point(lambda v: v >> 5)
        scaled = blobs.resize((width, height), Image.Resampling.BICUBIC)
        bands.append(ImageChops.add(Image.blend(grad.rotate(90 * i), scaled, 0.4), grain))
    out = io.BytesIO()
    Image.merge("RGB", bands).save(out, "PNG", compress_level=1)
    return out.getvalue()
