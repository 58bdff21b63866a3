"""Bytes of a manifest file → checked text: UTF-8 (a BOM is allowed), no NUL bytes, bounded lines.

Both manifest readers start here, so a bad file gets the same clear message whether it is YAML or CSV,
and a hostile one (a 10 MB line, a binary file, UTF-16) is refused before any parser sees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from batcher.errors import Problem

MAX_LINE_BYTES = 1 << 20  # 1 MiB: no hand-made manifest line comes near; stops a runaway read early
MAX_YAML_BYTES = 8 << 20  # 8 MiB ≈ 80,000 tasks; larger jobs belong in a CSV file (`rows:`), read streaming
UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class SourceFault(Exception):
    """A fault that stops reading a file; carries the problem to report."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _column(raw_line: bytes, byte_offset: int) -> int:
    """1-based character column of a byte offset within one physical line."""
    return len(raw_line[:byte_offset].decode("utf-8", "replace")) + 1


def _not_utf8(file: str, line: int, raw_line: bytes, byte_offset: int) -> Problem:
    bad = raw_line[byte_offset]
    hint = "save it as UTF-8 (in Excel: 'CSV UTF-8')"
    try:
        raw_line.decode("cp1252")
        hint = "it looks like Windows-1252/Latin-1; " + hint
    except UnicodeDecodeError:
        pass
    return Problem(
        file, line, _column(raw_line, byte_offset), f"the file is not valid UTF-8 (byte 0x{bad:02X}): {hint}"
    )


def _nul(file: str, line: int, raw_line: bytes, byte_offset: int) -> Problem:
    return Problem(
        file,
        line,
        _column(raw_line, byte_offset),
        "the file contains a NUL byte: it is binary or UTF-16, not a UTF-8 text file",
    )


def _too_long(file: str, line: int) -> Problem:
    return Problem(file, line, None, f"line is longer than {MAX_LINE_BYTES // (1 << 20)} MiB; is this the right file?")


def _utf16(file: str) -> Problem:
    return Problem(file, 1, 1, "the file is UTF-16 encoded: save it as UTF-8 (in Excel: 'CSV UTF-8')")


def read_text(path: Path, file: str, limit_bytes: int = MAX_YAML_BYTES) -> str:
    """The whole file as text, BOM removed; raises SourceFault for any of the faults above."""
    try:
        with path.open("rb") as f:
            data = f.read(limit_bytes + 1)
    except FileNotFoundError:
        raise SourceFault(Problem(file, None, None, "file not found")) from None
    except OSError as e:
        raise SourceFault(Problem(file, None, None, f"cannot read the file: {e.strerror or e}")) from None
    if data.startswith(_UTF16_BOMS):
        raise SourceFault(_utf16(file))
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    lines = data.split(b"\n")
    # Checked in file order (NUL, then length) so the first fault named is the first one in the file.
    for number, raw in enumerate(lines, start=1):
        nul = raw.find(b"\x00")
        if nul >= 0:
            raise SourceFault(_nul(file, number, raw, nul))
        if len(raw) > MAX_LINE_BYTES:
            raise SourceFault(_too_long(file, number))
    if len(data) > limit_bytes:
        limit_mib = limit_bytes // (1 << 20)
        raise SourceFault(
            Problem(
                file,
                None,
                None,
                f"the file is larger than {limit_mib} MiB; put large task lists in a CSV file and point `rows:` at it",
            )
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        raise SourceFault(_not_utf8(file, line, lines[line - 1], e.start - start)) from None


def iter_lines(stream: BinaryIO, file: str) -> Iterator[str]:
    """Decoded physical lines (line ends kept, as the csv module wants), checked one by one.

    Reads at most MAX_LINE_BYTES + 1 bytes per line, so a file without line breaks cannot exhaust memory.
    """
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if number == 1:
            if raw.startswith(_UTF16_BOMS):
                raise SourceFault(_utf16(file))
            if raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
        if len(raw) > MAX_LINE_BYTES:
            raise SourceFault(_too_long(file, number))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceFault(_not_utf8(file, number, raw, e.start)) from None
        if "\x00" in text:
            raise SourceFault(_nul(file, number, raw, raw.index(b"\x00")))
        yield text
