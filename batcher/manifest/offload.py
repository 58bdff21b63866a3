"""A large manifest's tasks expanded in a process of its own, while this one writes them to the store.

Expanding a row (CSV parsing, templates, checks, the key's hash) and inserting it cost about the same, and both
are Python holding the GIL, so threads cannot overlap them; two processes can. The child is a plain
`python -m batcher.manifest.offload MANIFEST`: it imports only the manifest code (multiprocessing's spawn would
import the whole CLI again, and start a resource tracker: 55 MB more during the import). It writes pickled
batches of import rows to its stdout; the pipe's small buffer keeps it from getting more than a batch ahead. It
reports the manifest's problems at the end exactly as `Manifest.specs()` raises them. Small manifests are not
worth a process's start-up.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import IO, Any

from batcher.config import API_KEY_ENV
from batcher.errors import BatcherError, ExitCode, ManifestError
from batcher.manifest.loader import Manifest, load_manifest
from batcher.models import ImportRow, import_batches

OFFLOAD_FROM_BYTES = 8 << 20  # manifests (with their CSV files) at least this large are expanded in a child


def import_rows(manifest: Manifest) -> Iterator[list[ImportRow]]:
    """The manifest's tasks as batches of import rows, in order; raises ManifestError at the end as `specs()`
    does."""
    if manifest.source_bytes() < OFFLOAD_FROM_BYTES:
        return import_batches(manifest.specs())
    return _from_child(str(manifest.path))


def _from_child(path: str) -> Iterator[list[ImportRow]]:
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}  # the child never needs the key
    child = subprocess.Popen(
        [sys.executable, "-m", __name__, path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    try:
        while True:
            kind, payload = _next(child.stdout, child)
            if kind == "rows":
                yield payload
            elif kind == "problems":
                raise ManifestError(payload)
            elif kind == "error":
                raise BatcherError(payload)
            else:
                return
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.wait()


def _next(pipe: IO[bytes], child: subprocess.Popen[bytes]) -> tuple[str, Any]:
    try:
        item: tuple[str, Any] = pickle.load(pipe)
        return item
    except (EOFError, pickle.UnpicklingError):
        raise BatcherError(f"reading the manifest failed: its reader stopped (exit code {child.wait()})") from None


def _expand(path: str, out: IO[bytes]) -> None:
    """In the child: every task of the manifest, in batches, then how it ended."""

    def send(kind: str, payload: Any) -> None:
        pickle.dump((kind, payload), out, protocol=pickle.HIGHEST_PROTOCOL)

    try:
        for batch in import_batches(load_manifest(path).specs()):
            send("rows", batch)
        send("done", None)
    except ManifestError as e:
        send("problems", e.problems)
    except BatcherError as e:
        send("error", e.message)
    out.flush()


if __name__ == "__main__":
    pipe, sys.stdout = sys.stdout.buffer, sys.stderr  # the pipe carries batches only
    try:
        _expand(sys.argv[1], pipe)
    except BrokenPipeError:  # the parent stopped reading (it failed, or was interrupted): nothing to say
        sys.exit(ExitCode.FAILED)
    except KeyboardInterrupt:  # a Ctrl-C reaches the whole process group; the parent reports it
        sys.exit(ExitCode.INTERRUPTED)
