"""A large manifest's tasks expanded in a process of its own, while this one writes them to the store.

Expanding a row (CSV parsing, templates, checks, the key's hash) and inserting it cost about the same, and both
are Python holding the GIL, so threads cannot overlap them; two processes can. The child streams import rows in
batches through a bounded queue (it is never more than a few batches ahead), and reports the manifest's problems
at the end exactly as `Manifest.specs()` raises them. Small manifests are not worth a process's start-up.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Iterator
from typing import Any

from batcher.errors import BatcherError, ManifestError
from batcher.manifest.loader import Manifest, load_manifest
from batcher.models import ImportRow, import_batches

OFFLOAD_FROM_BYTES = 8 << 20  # manifests (with their CSV files) at least this large are expanded in a child
AHEAD = 4  # batches the child may be ahead
POLL_S = 1.0  # how often a parent waiting for a batch checks that the child is alive, seconds


def import_rows(manifest: Manifest) -> Iterator[list[ImportRow]]:
    """The manifest's tasks as batches of import rows, in order; raises ManifestError at the end as `specs()`
    does."""
    if manifest.source_bytes() < OFFLOAD_FROM_BYTES:
        return import_batches(manifest.specs())
    return _from_child(str(manifest.path))


def _from_child(path: str) -> Iterator[list[ImportRow]]:
    ctx = multiprocessing.get_context("spawn")  # not fork: this process has threads (the store's driver)
    batches: Any = ctx.Queue(maxsize=AHEAD)
    child = ctx.Process(target=_expand, args=(path, batches), name="batcher-manifest", daemon=True)
    child.start()
    try:
        while True:
            kind, payload = _next(batches, child)
            if kind == "rows":
                yield payload
            elif kind == "problems":
                raise ManifestError(payload)
            elif kind == "error":
                raise payload
            else:
                return
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        batches.close()


def _next(batches: Any, child: Any) -> tuple[str, Any]:
    while True:
        try:
            item: tuple[str, Any] = batches.get(timeout=POLL_S)
            return item
        except queue.Empty:
            if not child.is_alive():
                raise BatcherError(
                    f"reading the manifest failed: its reader stopped (exit code {child.exitcode})"
                ) from None


def _expand(path: str, batches: Any) -> None:
    """In the child: every task of the manifest, in batches, then how it ended."""
    try:
        for batch in import_batches(load_manifest(path).specs()):
            batches.put(("rows", batch))
        batches.put(("done", None))
    except ManifestError as e:
        batches.put(("problems", e.problems))
    except BatcherError as e:
        batches.put(("error", BatcherError(e.message)))
    batches.close()
    batches.join_thread()
