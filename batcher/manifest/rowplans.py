"""A CSV file's header → which column is which task field and which are template variables.

Shared by CSV manifests and `rows:` in YAML ones. Reads only the header (and whether a data row follows).
"""

from __future__ import annotations

from pathlib import Path

from batcher.manifest.csvsource import iter_records
from batcher.manifest.sourcetext import SourceFault
from batcher.manifest.taskfields import Problems

CSV_FIELDS = ("prompt", "model", "quality", "size", "filename", "seed", "variant", "images", "from")


def read_header(
    path: Path, csv_file: str, delimiter: str | None, problems: Problems
) -> tuple[int, list[str], bool] | None:
    """(header line, header cells, whether a data row follows), or None after recording why not."""
    records = iter_records(path, csv_file, delimiter)
    try:
        header = next(records, None)
        if header is None:
            problems.add(csv_file, None, None, "the CSV file is empty: it needs a header row (prompt,...)")
            return None
        return header[0], header[1], next(records, None) is not None
    except SourceFault as fault:
        problems.add_problem(fault.problem)
        return None
    finally:
        records.close()


def csv_columns(
    cells: list[str], csv_file: str, line: int, problems: Problems
) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Header cells → (field → column index, [(variable, column index)]). Names are trimmed; fields are
    matched ignoring case ("Prompt"); `variant` is another name for `seed`; empty trailing names ignored."""
    names = [c.strip() for c in cells]
    while names and not names[-1]:
        names.pop()
    columns: dict[str, int] = {}
    variables: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            problems.add(csv_file, line, None, f"column {i + 1} of the header has no name")
            continue
        field = name.lower() if name.lower() in CSV_FIELDS else None
        field = "seed" if field == "variant" else field
        ident = field or name
        if ident in seen:
            problems.add(
                csv_file,
                line,
                None,
                f"column '{name}' appears twice in the header (columns {seen[ident] + 1} and {i + 1})",
            )
            continue
        seen[ident] = i
        if field:
            columns[field] = i
        else:
            variables.append((name, i))
    return columns, variables
