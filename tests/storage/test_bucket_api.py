"""The Python API writing to a bucket: `batcher.arun(..., out="s3://...")` stores each image under its key and
gives its URI, sha256 and byte count; the bucket clients are closed when the run ends (the caller's loop goes
on)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import batcher
from batcher import storage
from tests.bucket_kit import S3Server, sha


async def test_arun_writes_to_a_bucket_and_names_each_object(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    bucket = s3.bucket()
    tasks = [{"prompt": f"Studio shot of a {c} mug", "name": f"mug-{c}", "filename": f"mug-{c}.png"}
             for c in ("red", "blue")]  # fmt: skip
    result = await batcher.arun(tasks, job="mugs", db=str(tmp_path / "b.db"), out=f"s3://{bucket}/mugs",
                                emulate=True)  # fmt: skip
    assert result.succeeded == 2
    for task in result.tasks:
        assert task.file == f"s3://{bucket}/mugs/{task.name}.png"
        data = s3.get(bucket, f"mugs/{task.name}.png")
        assert (sha(data), len(data)) == (task.sha256, task.bytes)
    assert not [k for k in storage._OPEN if k[0] == id(asyncio.get_running_loop())]  # no client left open
