"""The real CLI writing to buckets on real servers (moto's S3, fake-gcs-server): exact keys, byte-exact objects,
the report's URIs, foreign objects left alone, destinations refused before any paid call."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, manifest
from tests.bucket_kit import GcsServer, S3Server, authenticated_s3, sha
from tests.conftest import StartEmulator

FAST = Latency("uniform", 0.05, 0.2)


async def report(db: Path | str, cwd: Path, env: dict[str, str], job: str | None = None) -> dict[str, Any]:
    done = await batcher("report", *([job] if job else []), "--db", str(db), "--format", "json", env=env, cwd=cwd)
    assert done.code == 0, done.err
    return dict(json.loads(done.out))


def check_objects(rows: list[dict[str, Any]], keys: dict[str, int], get: Any, bucket: str, scheme: str) -> None:
    """Each succeeded row names its object by full URI, with its real sha256 and byte count."""
    for r in rows:
        assert r["status"] == "succeeded", r
        prefix = f"{scheme}://{bucket}/"
        assert r["file"].startswith(prefix), r["file"]
        key = r["file"][len(prefix) :]
        data = get(bucket, key)
        assert (sha(data), len(data), keys[key]) == (r["sha256"], r["bytes"], r["bytes"])


async def test_a_run_to_s3_writes_each_image_once_under_its_own_key(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    m = manifest(tmp_path / "cat.yaml", 6)
    env = cli_env(emu, **s3.env())
    db = tmp_path / "b.db"
    done = await batcher("run", str(m), "--db", str(db), "--out", f"s3://{bucket}/run1", "-q", env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    keys = s3.keys(bucket)
    # exactly the tasks' names under the prefix (the probe object is gone), and nothing on the local disk
    assert sorted(keys) == sorted(f"run1/{i}.png" for i in range(6))
    assert not (tmp_path / "out").exists()
    rows = (await report(db, tmp_path, env))["tasks"]
    check_objects(rows, keys, s3.get, bucket, "s3")
    assert emu.stats.creates_accepted == 6
    # the CSV names the same URIs, with the byte count
    csv = await batcher("report", "--db", str(db), "--format", "csv", env=env, cwd=tmp_path)
    header = csv.out.splitlines()[0].split(",")
    assert "bytes" in header and f"s3://{bucket}/run1/0.png" in csv.out


async def test_a_run_to_cloud_storage_writes_each_image_once(
    tmp_path: Path, start_emu: StartEmulator, gcs: GcsServer
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = gcs.bucket()
    m = manifest(tmp_path / "gcat.yaml", 4)
    env = cli_env(emu, **gcs.env())
    db = tmp_path / "b.db"
    done = await batcher("run", str(m), "--db", str(db), "--out", f"gs://{bucket}/p", "-q", env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    keys = gcs.keys(bucket)
    assert sorted(keys) == sorted(f"p/{i}.png" for i in range(4))
    check_objects((await report(db, tmp_path, env))["tasks"], keys, gcs.get, bucket, "gs")
    assert emu.stats.creates_accepted == 4


@pytest.mark.parametrize("scheme", ["s3", "gs"])
async def test_a_foreign_object_at_a_tasks_key_is_left_unchanged_and_the_image_kept_elsewhere(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server, gcs: GcsServer, scheme: str
) -> None:
    emu = await start_emu(latency=FAST)
    server: S3Server | GcsServer = s3 if scheme == "s3" else gcs
    bucket = server.bucket()
    foreign = b"someone else's file, not an image of this job"
    server.put(bucket, "p/1.png", foreign)
    m = manifest(tmp_path / "f.yaml", 3)
    env = cli_env(emu, **server.env())
    db = tmp_path / "b.db"
    out = f"{scheme}://{bucket}/p"
    done = await batcher("run", str(m), "--db", str(db), "--out", out, "-q", env=env, cwd=tmp_path)
    assert done.code == 0, done.err
    assert server.get(bucket, "p/1.png") == foreign  # never replaced
    rows = {r["task"]: r for r in (await report(db, tmp_path, env))["tasks"]}
    kept = rows["1.png"]
    assert kept["file"].startswith(f"{out}/1.dup-") and kept["file"].endswith(".png")
    assert f"{out}/1.png" in kept["note"] and kept["file"] in kept["note"]
    data = server.get(bucket, kept["file"].split(f"{bucket}/", 1)[1])
    assert sha(data) == kept["sha256"]
    assert sorted(server.keys(bucket)) == sorted(["p/0.png", "p/1.png", "p/2.png", kept["file"].split(f"{bucket}/")[1]])
    assert emu.stats.creates_accepted == 3  # paid once each: the kept image was not made again


async def test_a_missing_bucket_exits_2_before_any_paid_call(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server, gcs: GcsServer
) -> None:
    emu = await start_emu(latency=FAST)
    m = manifest(tmp_path / "nob.yaml", 3)
    for out, env in (("s3://no-such-bucket/x", s3.env()), ("gs://no-such-bucket/x", gcs.env())):
        began = time.monotonic()
        done = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), "--out", out, "-q",
                             env=cli_env(emu, **env), cwd=tmp_path)  # fmt: skip
        assert done.code == 2, done.err
        lines = done.err.strip().splitlines()
        assert len(lines) == 1 and "no-such-bucket" in lines[0] and "does not exist" in lines[0], done.err
        assert "Traceback" not in done.err and time.monotonic() - began < 20
    assert emu.stats.creates_accepted == 0


async def test_rejected_credentials_exit_2_naming_the_bucket_and_bill_nothing(
    tmp_path: Path, start_emu: StartEmulator
) -> None:
    emu = await start_emu(latency=FAST)
    proc, endpoint = authenticated_s3()
    try:
        m = manifest(tmp_path / "creds.yaml", 3)
        env = cli_env(emu, **{**S3Server(endpoint).env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret-x"})
        done = await batcher("run", str(m), "--db", str(tmp_path / "b.db"), "--out", "s3://locked/x", "-q",
                             env=env, cwd=tmp_path)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    assert done.code == 2, done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and "s3://locked" in lines[0] and "credentials" in lines[0], done.err
    assert "wrong-secret-x" not in done.err  # the secret is never printed
    assert emu.stats.creates_accepted == 0


async def test_run_help_says_out_takes_a_bucket_uri(tmp_path: Path) -> None:
    done = await batcher("run", "--help", env=cli_env(None), cwd=tmp_path)
    assert done.code == 0 and "s3://BUCKET/PREFIX" in done.out and "gs://BUCKET/PREFIX" in done.out


async def test_no_bucket_credential_reaches_logs_store_or_report(
    tmp_path: Path, start_emu: StartEmulator, s3: S3Server
) -> None:
    emu = await start_emu(latency=FAST)
    bucket = s3.bucket()
    secret, token = "s3cr3t-KEY-24-zzz", "t0ken-SESSION-24-zzz"
    env = cli_env(emu, **{**s3.env(), "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token})
    db = tmp_path / "b.db"
    m = manifest(tmp_path / "sec.yaml", 2)
    done = await batcher("-vv", "run", str(m), "--db", str(db), "--out", f"s3://{bucket}/s", "-q", env=env,
                         cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    got = await batcher("report", "--db", str(db), "--format", "json", env=env, cwd=tmp_path)
    for text in (done.out, done.err, got.out, db.read_bytes().decode("latin-1")):
        assert secret not in text and token not in text
