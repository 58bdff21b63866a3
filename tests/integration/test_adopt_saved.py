"""What a resume finds under a submitted task's name, left by a run killed between the rename and its commit: the
task's own image is adopted; anything else is not, and is cleared before the task is fetched again unless another
task records it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from batcher import cache
from batcher.emulator.images import encode_png
from batcher.models import CallRecord, TaskStatus
from batcher.store import Store, Task
from tests.conftest import OpenStore
from tests.integration.runner_kit import PRICE, load, specs

HOUR_S = 3600.0


async def submitted(store: Store, out: Path, n: int = 1) -> list[Task]:
    await load(store, specs(n), out)
    job = await store.job("job")
    now = time.time()
    claimed = await store.claim(job, "w", n, now, now + 30)
    for t in claimed:
        await store.begin_create(t, now)
        await store.created(t, f"r{t.id}", None, CallRecord("create", "ok", 200, 1.0, now), now)
    return claimed


async def test_the_task_s_own_image_is_adopted(open_store: OpenStore, tmp_path: Path) -> None:
    store = await open_store()
    (t,) = await submitted(store, tmp_path / "out")
    image = encode_png("prompt 0", 8, 8)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "prompt-0.png").write_bytes(image)
    assert t.submitted_at is not None
    assert await cache.adopt_saved(store, t, tmp_path / "out", PRICE, time.time(), not_before=t.submitted_at)
    ledger = await store.ledger(await store.job("job"))
    assert ledger.counts == {TaskStatus.SUCCEEDED: 1} and ledger.cost_micros == PRICE
    assert (tmp_path / "out" / "prompt-0.png").read_bytes() == image
    assert await store.output_taken(str(tmp_path / "out" / "prompt-0.png"), -1)  # recorded as the task's output


async def test_an_image_older_than_the_submission_or_not_an_image_is_cleared_not_adopted(
    open_store: OpenStore, tmp_path: Path
) -> None:
    store = await open_store()
    older, not_image = await submitted(store, tmp_path / "out", 2)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "prompt-0.png"
    stale.write_bytes(encode_png("an earlier job's image", 8, 8))
    assert older.submitted_at is not None
    then = older.submitted_at - HOUR_S
    os.utime(stale, (then, then))
    page = out / "prompt-1.png"
    page.write_bytes(b"<html>not an image</html>")
    for t in (older, not_image):
        assert t.submitted_at is not None
        assert not await cache.adopt_saved(store, t, out, PRICE, time.time(), not_before=t.submitted_at)
    assert list(out.iterdir()) == []
    ledger = await store.ledger(await store.job("job"))
    assert ledger.counts == {TaskStatus.SUBMITTED: 2} and ledger.cost_micros == 0


async def test_another_task_s_output_is_neither_adopted_nor_removed(open_store: OpenStore, tmp_path: Path) -> None:
    store = await open_store()
    first, second = await submitted(store, tmp_path / "out", 2)
    out = tmp_path / "out"
    out.mkdir()
    image = encode_png("prompt 0", 8, 8)
    (out / "prompt-0.png").write_bytes(image)
    await store.succeeded(first, output_path=str(out / "prompt-0.png"), sha256=hashlib.sha256(image).hexdigest(),
                          size=len(image), width=8, height=8, fmt="png", cost_micros=PRICE, call=None,
                          now=time.time())  # fmt: skip
    second.filename = "prompt-0.png"  # a hand-edited store: two tasks under one name
    assert second.submitted_at is not None
    assert not await cache.adopt_saved(store, second, out, PRICE, time.time(), not_before=second.submitted_at)
    assert (out / "prompt-0.png").read_bytes() == image
