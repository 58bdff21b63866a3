"""Attacks on the bucket paths: a writer racing the cache's copy, Batch Mode's lines when the bucket refuses them,
a stray duplicate reply stored in a bucket. Each drives the real servers (moto's S3, fake-gcs-server) and the
API emulators; money is read from the emulators' own billing."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from batcher import storage
from batcher.cache import copy_object
from batcher.storage.remote import FsspecStorage
from tests.bucket_kit import GcsServer, S3Server, sha


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(params=["s3", "gs"])
async def server(
    request: pytest.FixtureRequest, s3: S3Server, gcs: GcsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Any]]:
    found: Any = s3 if request.param == "s3" else gcs
    for k, v in found.env().items():
        monkeypatch.setenv(k, v)
    yield request.param, found
    await storage.close_all()


async def test_a_writer_racing_the_caches_copy_is_never_overwritten(
    server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    scheme, srv = server
    bucket = srv.bucket()
    ours, foreign = png((10, 20, 30)), png((200, 0, 0))
    srv.put(bucket, "job1/cat.png", ours)
    target = f"{scheme}://{bucket}/job2/cat.png"

    # another writer lands its object at the target just before this process writes there, whatever the check
    # made before: the window between "absent" and the write
    def racing(name: str) -> Any:
        original = getattr(FsspecStorage, name)

        async def wrapped(self: FsspecStorage, *args: Any) -> Any:
            if target in args and target not in raced:
                raced.append(target)
                srv.put(bucket, "job2/cat.png", foreign)
            return await original(self, *args)

        return wrapped

    raced: list[str] = []
    monkeypatch.setattr(FsspecStorage, "copy", racing("copy"))
    monkeypatch.setattr(FsspecStorage, "put_new", racing("put_new"))
    copied = await copy_object(f"{scheme}://{bucket}/job1/cat.png", sha(ours), f"{scheme}://{bucket}/job2", "cat")
    assert raced, "the racing writer never ran"
    assert srv.get(bucket, "job2/cat.png") == foreign  # the other writer's object, unchanged
    assert copied is not None and copied.path != target
    kept = copied.path.split(f"{scheme}://{bucket}/", 1)[1]
    assert kept.startswith("job2/cat.dup-") and srv.get(bucket, kept) == ours
