"""Image format and size come from the bytes, for PNG, JPEG and WebP."""

from __future__ import annotations

import struct
import zlib

from batcher.imageinfo import sniff


def png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def jpeg(w: int, h: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    app11 = b"\xff\xeb" + struct.pack(">H", 10) + b"JP\x00\x00c2pa"  # a C2PA segment before the frame
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + app11 + sof + b"\xff\xd9"


def webp_vp8x(w: int, h: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def test_png_size_from_ihdr() -> None:
    info = sniff(png(1376, 768))
    assert info is not None and (info.format, info.width, info.height) == ("png", 1376, 768)


def test_jpeg_size_from_its_frame_after_metadata_segments() -> None:
    info = sniff(jpeg(1200, 896))
    assert info is not None and (info.format, info.width, info.height) == ("jpeg", 1200, 896)


def test_webp_extended_header() -> None:
    info = sniff(webp_vp8x(1024, 1024))
    assert info is not None and (info.format, info.width, info.height) == ("webp", 1024, 1024)


def test_anything_else_is_not_an_image() -> None:
    for data in (b"", b"<html>not an image</html>", b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\x00" * 20, png(0, 5)):
        assert sniff(data) is None
