"""The Vertex emulator's Cloud Storage JSON API: good enough for gcsfs (pointed at it by STORAGE_EMULATOR_HOST)
to write, list, read and delete, with Google's preconditions and paging."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest
from gcsfs.core import GCSFileSystem

from .vertex_helpers import MakeVertex, StartVertex, VertexApi, rows_jsonl


def _fs() -> GCSFileSystem:
    """gcsfs's JSON-API file system, as a client configures it: no endpoint of its own, STORAGE_EMULATOR_HOST
    from the environment. (`gcsfs.GCSFileSystem` is, by default, an "extended" one that first asks the host for
    the bucket's layout over gRPC: no emulator answers that, and it waits a minute before falling back.)"""
    assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
    return GCSFileSystem(token="anon", skip_instance_cache=True)


def _round_trip(big: bytes) -> dict[str, object]:
    fs = _fs()
    fs.pipe("stage/run/in-1.jsonl", b'{"key": "a"}\n')
    fs.pipe("stage/run/in-2.jsonl", b'{"key": "b"}\n')
    with fs.open("stage/run/big.bin", "wb", block_size=2**18) as out:  # resumable, in 256 KiB chunks
        out.write(big)
    with pytest.raises(FileExistsError):
        fs.pipe("stage/run/in-1.jsonl", b"again", mode="create")  # ifGenerationMatch=0 answers 412
    seen: dict[str, object] = {
        "ls": sorted(fs.ls("stage/run", detail=False)),
        "find": sorted(fs.find("stage")),
        "cat": fs.cat("stage/run/in-1.jsonl"),
        "size": fs.info("stage/run/big.bin")["size"],
        "big": fs.cat("stage/run/big.bin") == big,
        "range": fs.cat_file("stage/run/big.bin", start=10, end=20) == big[10:20],
    }
    fs.rm("stage/run/in-2.jsonl")
    fs.rm("stage/run", recursive=True)
    seen["after"] = fs.find("stage")
    return seen


async def test_gcsfs_writes_lists_reads_and_deletes(start_vertex: StartVertex, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = await start_vertex()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.origin)
    big = os.urandom(700_000)
    seen = await asyncio.to_thread(_round_trip, big)
    names = ["stage/run/big.bin", "stage/run/in-1.jsonl", "stage/run/in-2.jsonl"]
    assert seen["ls"] == names and seen["find"] == names
    assert seen["cat"] == b'{"key": "a"}\n' and seen["size"] == len(big)
    assert seen["big"] and seen["range"]
    assert seen["after"] == []
    assert (emu.stats.objects_written, emu.stats.objects_deleted) == (3, 3)


async def test_uploads_preconditions_paging_and_misses_over_the_json_api(start_vertex: StartVertex) -> None:
    emu = await start_vertex()
    base = f"{emu.origin}/storage/v1/b/bkt/o"
    async with aiohttp.ClientSession() as session:
        api = VertexApi(session, emu, "")
        for n in range(5):
            assert (await api.put_object("bkt", f"p/{n}.jsonl", b"x" * n)).status == 200
        assert (await api.put_object("bkt", "q/other", b"y")).status == 200
        again = await api.call(
            "POST",
            f"{emu.origin}/upload/storage/v1/b/bkt/o",
            auth=False,
            params={"uploadType": "media", "name": "p/0.jsonl", "ifGenerationMatch": "0"},
            data=b"z",
        )
        assert again.status == 412 and again.body["error"]["errors"][0]["reason"] == "conditionNotMet"
        names: list[str] = []
        token = ""
        while True:
            params = {"prefix": "p/", "maxResults": "2", **({"pageToken": token} if token else {})}
            page = await api.call("GET", base, auth=False, params=params)
            names += [item["name"] for item in page.body["items"]]
            token = page.body.get("nextPageToken", "")
            if not token:
                break
        assert names == [f"p/{n}.jsonl" for n in range(5)]
        folders = await api.call("GET", base, auth=False, params={"delimiter": "/"})
        assert folders.body == {"kind": "storage#objects", "prefixes": ["p/", "q/"]}
        meta = await api.call("GET", f"{base}/p%2F3.jsonl", auth=False)
        assert meta.body["size"] == "3" and meta.body["bucket"] == "bkt" and int(meta.body["generation"]) > 0
        missing = await api.call("GET", f"{base}/p%2Fnope", auth=False, params={"alt": "media"})
        assert missing.status == 404 and missing.body["error"]["errors"][0]["reason"] == "notFound"
        assert (await api.call("DELETE", f"{base}/p%2F3.jsonl", auth=False)).status == 204
        assert (await api.call("DELETE", f"{base}/p%2F3.jsonl", auth=False)).status == 404
        empty = await api.call("GET", f"{emu.origin}/storage/v1/b/bkt/o", auth=False, params={"prefix": "zzz"})
        assert empty.body == {"kind": "storage#objects"}
        assert (await api.call("GET", f"{emu.origin}/storage/v1/b/nobucket/o", auth=False)).status == 404


def _outputs_through_gcsfs(prefix: str) -> list[bytes]:
    fs = _fs()
    return [fs.cat(path) for path in fs.find(prefix) if path.endswith(".jsonl")]


async def test_gcsfs_reads_a_jobs_output_files(make_vertex: MakeVertex, monkeypatch: pytest.MonkeyPatch) -> None:
    """Output folders are named by a timestamp (colons and all): gcsfs finds and reads every file in them."""
    vx = await make_vertex(batch_latency="fixed:10", batch_output_files=2)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vx.emu.origin)
    assert (await vx.put_object("bkt", "in.jsonl", rows_jsonl("a", "b", "c"))).status == 200
    job = (await vx.create_job("gs://bkt/in.jsonl", "gs://bkt/out")).body
    vx.emu.advance(20)
    directory = (await vx.job(job["name"])).body["outputInfo"]["gcsOutputDirectory"]
    files = await asyncio.to_thread(_outputs_through_gcsfs, directory.removeprefix("gs://"))
    assert len(files) == 2
    keys = sorted(json.loads(line)["key"] for data in files for line in data.splitlines())
    assert keys == ["a", "b", "c"]
