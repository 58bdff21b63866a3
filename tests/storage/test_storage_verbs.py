"""The storage verbs, the same on a local folder, S3 (moto) and Cloud Storage (fake-gcs-server): write only where
nothing is, read back, size, server-side copy, list a prefix, delete, a link a browser can open; and the write
that never replaces another's object."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from batcher import storage
from batcher.errors import DestinationError
from batcher.storage import ObjectExists, backend
from batcher.storage.objects import derived, probe, write_once
from tests.bucket_kit import GcsServer, S3Server


@pytest.fixture(params=["local", "s3", "gs"])
async def root(
    request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server, gcs: GcsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    kind = request.param
    if kind == "local":
        yield str(tmp_path / "out")
        return
    server = s3 if kind == "s3" else gcs
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    yield f"{kind}://{server.bucket()}/pre"
    await storage.close_all()


async def test_the_verbs_behave_alike_everywhere(root: str) -> None:
    store = backend(root)
    a, b = storage.join(root, "a/1.png"), storage.join(root, "b/2.png")
    await store.put_new(a, b"first")
    with pytest.raises(ObjectExists):
        await store.put_new(a, b"second")
    assert await store.read(a) == b"first"
    assert await store.size(a) == 5 and await store.size(b) is None
    await store.copy(a, b)
    assert await store.read(b) == b"first"
    listed = {x.location: x.size for x in await store.list(root)}
    assert listed == {a: 5, b: 5}
    await store.delete(b)
    await store.delete(b)  # nothing there: no error
    assert [x.location for x in await store.list(root)] == [a]
    with pytest.raises(FileNotFoundError):
        await store.read(b)
    url = await store.browser_url(a, 3600)
    if storage.is_remote(root):  # the link opens the object, over HTTP
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            assert r.status == 200 and await r.read() == b"first"


async def test_write_once_keeps_a_foreign_object_and_takes_its_own_bytes_back(root: str) -> None:
    at = storage.join(root, "x.png")
    await backend(at).put_new(at, b"foreign")
    data = b"the paid image"
    first = await write_once(at, data)
    assert first.location == derived(at, hashlib.sha256(data).hexdigest()) and first.note
    assert await backend(at).read(at) == b"foreign"
    again = await write_once(at, data)  # the same bytes after a crash: taken as its own, nothing new written
    assert again.location == first.location
    own = storage.join(root, "y.png")
    await write_once(own, data)
    assert (await write_once(own, data)).location == own and len(await backend(root).list(root)) == 3


async def test_the_probe_leaves_nothing_and_names_a_missing_bucket(root: str) -> None:
    if storage.is_remote(root):  # a local folder has no probe (the runner's first file finds a fault at once)
        left = storage.join(root, ".batcher-probe-left-by-a-killed-run")  # a probe cut between write and delete
        await backend(root).put_new(left, b"probe")
    kept = storage.join(root, "0.png")
    await backend(root).put_new(kept, b"an image")
    await probe(root)
    assert [x.location for x in await backend(root).list(root)] == [kept]
    assert [x.location for x in await backend(root).list(root, "0.")] == [kept]
    if storage.is_remote(root):
        scheme = root.split("://")[0]
        with pytest.raises(DestinationError, match=f"{scheme}://no-such-bucket-24: the bucket does not exist"):
            await probe(f"{scheme}://no-such-bucket-24/p")


async def test_credentials_that_cannot_sign_give_an_unsigned_link(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached: signing is local
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    try:
        url = await backend("s3://bkt/p/a b.png").browser_url("s3://bkt/p/a b.png", 60)
    finally:
        await storage.close_all()
    assert url == "http://127.0.0.1:9/bkt/p/a%20b.png"
    assert "cannot sign links to s3://bkt objects" in caplog.text


async def test_a_file_goes_up_streamed_and_comes_back_in_chunks(root: str, tmp_path: Path) -> None:
    """What a batch's staged requests need: a file uploaded from disk (past gcsfs's 5 MB one-shot limit: a
    resumable upload in parts), read back a chunk at a time, never whole."""
    local = tmp_path / "requests.jsonl"
    data = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() + b"\n" for i in range(200_000))  # 13 MB
    local.write_bytes(data)
    at = storage.join(root, "staged/input.jsonl")
    store = backend(root)
    assert await store.put_file(at, local) == len(data)
    (listed,) = await store.list(storage.join(root, "staged"))
    assert (listed.location, listed.size) == (at, len(data))
    chunks = [chunk async for chunk in store.stream(at, listed.size, chunk_bytes=4 << 20)]
    assert b"".join(chunks) == data and max(len(c) for c in chunks) <= 4 << 20 and len(chunks) >= 4
    assert await store.put_file(at, local) == len(data)  # staged again (a second upload) replaces it
    with pytest.raises(FileNotFoundError):
        async for _ in store.stream(storage.join(root, "staged/missing.jsonl"), 10):
            pass


async def test_an_explicit_endpoint_is_spoken_to_over_the_environment(gcs: GcsServer) -> None:
    """A client that names its object store's URL (an emulator's) reaches it with no environment variable set."""
    bucket = gcs.bucket()
    at = f"gs://{bucket}/x/one.txt"
    try:
        store = backend(at, gcs.url)
        assert store is not backend(at) and store is backend(at, gcs.url)  # a client per endpoint
        await store.put_new(at, b"one")
        assert await store.read(at) == b"one"
        await probe(f"gs://{bucket}/x", gcs.url)
    finally:
        await storage.close_all()
