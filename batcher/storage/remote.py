"""S3 and Cloud Storage behind the storage verbs, through fsspec's s3fs and gcsfs (async, on this event loop).

Settings are read the way the clouds' own tools read them. S3 (botocore reads these itself): AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION / AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL
(or AWS_ENDPOINT_URL_S3) for an S3-compatible server, addressed path-style. Cloud Storage: Application Default
Credentials, and STORAGE_EMULATOR_HOST (`http://HOST:PORT`) for an emulator, which gcsfs honours itself and which
is spoken to anonymously, as Google's own client does; a backend made for an explicit endpoint (an emulator's Cloud
Storage that a provider's client names) is spoken to the same way."""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from batcher.errors import DestinationError
from batcher.storage.base import STREAM_CHUNK_BYTES, Listed, ObjectExists, Storage, split

log = logging.getLogger("batcher")

UPLOAD_TRIES = 4  # a failed write is tried this many times in all, with backoff, before the task is left unsaved
UPLOAD_BACKOFF_S = 0.25  # first wait; doubled each time
FILE_CHUNK_BYTES = 8 << 20  # a file's upload is sent in parts this big (Cloud Storage wants multiples of 256 KiB)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


EMULATOR_ENV = "STORAGE_EMULATOR_HOST"  # Google's own libraries' name for a Cloud Storage emulator's URL


def emulator_host() -> str | None:
    return os.environ.get(EMULATOR_ENV) or None


class FsspecStorage(Storage):
    """One object store (`s3` or `gs`) through its fsspec filesystem, made on first use on the running loop."""

    def __init__(self, scheme: str, endpoint: str | None = None) -> None:
        self.scheme = scheme
        self.endpoint = endpoint  # the server's URL over the environment's (an emulator's), or None
        self._fs: Any = None
        self._unsigned_said = False

    async def _filesystem(self) -> Any:
        if self._fs is None:
            self._fs = await (_s3(self.endpoint) if self.scheme == "s3" else _gcs(self.endpoint))
        return self._fs

    @staticmethod
    def _path(location: str) -> str:
        _, bucket, key = split(location)
        return f"{bucket}/{key}"

    async def put_new(self, location: str, data: bytes) -> None:
        fs = await self._filesystem()
        wait = UPLOAD_BACKOFF_S
        for attempt in range(1, UPLOAD_TRIES + 1):
            try:  # one PUT (an image is far below the multipart threshold): whole or nothing
                await fs._pipe_file(self._path(location), data, mode="create")
                return
            except FileExistsError:
                raise ObjectExists(location) from None
            except (FileNotFoundError, PermissionError):
                raise  # no bucket, or no right to write: trying again cannot help
            except OSError:
                if attempt == UPLOAD_TRIES:
                    raise
            await asyncio.sleep(wait)
            wait *= 2

    async def put_file(self, location: str, path: Path) -> int:
        fs = await self._filesystem()
        size = os.path.getsize(path)
        # gcsfs sends a file past 5 MB as a resumable upload in `chunksize` parts; s3fs as a multipart upload
        kwargs: dict[str, Any] = {"chunksize": FILE_CHUNK_BYTES} if self.scheme == "gs" else {}
        await fs._put_file(str(path), self._path(location), **kwargs)
        return size

    async def read(self, location: str) -> bytes:
        fs = await self._filesystem()
        data: bytes = await fs._cat_file(self._path(location))
        return data

    async def stream(self, location: str, size: int, chunk_bytes: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        """Ranged reads of `chunk_bytes`: the one streaming read both filesystems serve alike (gcsfs has no
        async file object), each retried by the filesystem itself."""
        fs = await self._filesystem()
        path, offset = self._path(location), 0
        if size == 0 and not await fs._exists(path):
            raise FileNotFoundError(location)
        while offset < size:
            try:
                chunk: bytes = await fs._cat_file(path, start=offset, end=min(size, offset + chunk_bytes))
            except OSError:
                raise
            except Exception as e:  # the filesystem's own HTTP errors: a read broken off, as the verb says
                raise OSError(f"{type(e).__name__}: {e}") from e
            if not chunk:
                raise OSError(f"{location} ended at byte {offset} of {size}")
            offset += len(chunk)
            yield chunk

    async def size(self, location: str) -> int | None:
        fs = await self._filesystem()
        try:
            info = await fs._info(self._path(location))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    async def copy(self, source: str, target: str) -> None:
        fs = await self._filesystem()
        await fs._cp_file(self._path(source), self._path(target))

    async def list(self, folder: str, prefix: str = "") -> list[Listed]:
        fs = await self._filesystem()
        found = await fs._find(self._path(folder), detail=True, prefix=prefix)
        return [Listed(f"{self.scheme}://{path}", int(info["size"])) for path, info in sorted(found.items())]

    async def delete(self, location: str) -> None:
        fs = await self._filesystem()
        try:
            await fs._rm_file(self._path(location))
        except FileNotFoundError:
            pass

    async def browser_url(self, location: str, expires_s: int) -> str:
        fs = await self._filesystem()
        _, bucket, key = split(location)
        quoted = urllib.parse.quote(key, safe="")
        if self.scheme == "gs" and (self.endpoint or emulator_host()):  # an emulator takes no signature
            return f"{self.endpoint or emulator_host()}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media"
        try:
            if self.scheme == "s3":
                signed: str = await fs._url(self._path(location), expires=expires_s)
                return signed
            # signed locally with the service account's key (no request)
            return str(await asyncio.to_thread(fs.sign, self._path(location), expiration=expires_s))
        except Exception as e:  # credentials that cannot sign (gcloud's user login): a link for a signed-in browser
            if not self._unsigned_said:
                self._unsigned_said = True
                log.warning("cannot sign links to %s://%s objects (%s): the report links them unsigned, for a "
                            "browser signed in with access", self.scheme, bucket, type(e).__name__)  # fmt: skip
            path = urllib.parse.quote(key)
            if self.scheme == "s3":
                return (
                    f"{s3_endpoint()}/{bucket}/{path}" if s3_endpoint() else f"https://{bucket}.s3.amazonaws.com/{path}"
                )
            return f"https://storage.cloud.google.com/{bucket}/{path}"

    async def close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is None:
            return
        if self.scheme == "s3":
            client = getattr(fs, "_s3", None)
            if client is not None:
                await client.close()
        else:
            session = getattr(fs, "_session", None)
            if session is not None:
                await session.close()


def _missing(scheme: str, extra: str) -> DestinationError:
    return DestinationError(f"{scheme}:// outputs need the {extra} extra: pip install 'batcher-images[{extra}]'")


async def _s3(endpoint: str | None) -> Any:
    try:
        import s3fs
    except ImportError:
        raise _missing("s3", "s3") from None

    endpoint = endpoint or s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # botocore's own retries kept short: `put_new` backs off and tries again itself, then gives the task up
    config: dict[str, Any] = {"signature_version": "s3v4", "retries": {"max_attempts": 2, "mode": "standard"}}
    if endpoint:  # MinIO, R2, a test server: no bucket-named host names there
        config["s3"] = {"addressing_style": "path"}
    fs = s3fs.S3FileSystem(
        asynchronous=True,
        skip_instance_cache=True,
        endpoint_url=endpoint,
        client_kwargs={"region_name": region} if region else {},
        config_kwargs=config,
    )
    await fs.set_session()
    return fs


async def _gcs(endpoint: str | None) -> Any:
    # the plain filesystem: gcsfs's default one first asks a gRPC service what kind of bucket it is
    try:
        from gcsfs.core import GCSFileSystem
    except ImportError:
        raise _missing("gs", "gcs") from None

    token = "anon" if endpoint or emulator_host() else "google_default"
    fs = GCSFileSystem(asynchronous=True, skip_instance_cache=True, token=token, endpoint_url=endpoint)
    await fs._set_session()
    return fs
