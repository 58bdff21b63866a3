"""CSV file → (line, fields) records, streaming, with the physical line each record starts on.

Real-world files work: UTF-8 with or without BOM, CRLF, quoted fields holding commas and line breaks,
blank lines, `;`- or tab-separated exports. Only the current record is held in memory.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Generator
from pathlib import Path

from batcher.errors import Problem
from batcher.manifest.sourcetext import MAX_LINE_BYTES, SourceFault, iter_lines

MAX_FIELD_CHARS = MAX_LINE_BYTES  # a field may span lines, but not grow past this (an unclosed quote)
_DELIMITERS = (",", ";", "\t")


def guess_delimiter(header_line: str) -> str:
    """The most frequent of , ; and tab in the header line; ',' when none or tied."""
    counts = {d: header_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def iter_records(path: Path, file: str, delimiter: str | None = None) -> Generator[tuple[int, list[str]]]:
    """Non-blank records, header first, each with the line it starts on; raises SourceFault on a bad file.

    `delimiter` None means: guess from the header line (`.tsv` files: tab).
    """
    # Process-wide setting of the csv module; every reader in batcher wants the same cap.
    csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise SourceFault(Problem(file, None, None, "file not found")) from None
    except OSError as e:
        raise SourceFault(Problem(file, None, None, f"cannot read the file: {e.strerror or e}")) from None
    with stream:
        lines = iter_lines(stream, file)
        skipped = 0  # blank lines before the header, read here to see the header line
        first = ""
        for first in lines:
            if first.strip():
                break
            skipped += 1
        if not first.strip():
            return
        if delimiter is None:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else guess_delimiter(first)
        reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter, strict=True)
        done = 0  # physical lines the reader has consumed
        while True:
            start = skipped + done + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise SourceFault(_csv_problem(file, start, skipped + reader.line_num, str(e))) from None
            if reader.line_num - done > 1:
                # A quoted field spanned lines: keep its line breaks, but as plain "\n".
                fields = [f.replace("\r\n", "\n") for f in fields]
            done = reader.line_num
            if "".join(fields).strip():
                yield start, fields


def _csv_problem(file: str, start: int, current: int, error: str) -> Problem:
    if "field larger than field limit" in error:
        message = f'a field is longer than {MAX_FIELD_CHARS // (1 << 20)} MiB: is a quote (") left open?'
        return Problem(file, start, None, message)
    if "unexpected end of data" in error:
        return Problem(file, start, None, 'a quoted field starting on this line is never closed (missing ")')
    if "new-line character seen in unquoted field" in error:
        return Problem(
            file,
            current,
            None,
            "lone carriage return (\\r) line ends: save the file with Windows (CRLF) or Unix (LF) line ends",
        )
    return Problem(file, current, None, f'bad CSV quoting: {error} (a quote inside a quoted field is written "")')
