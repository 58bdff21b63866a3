"""Input images of edit requests: local files → content references at import, references → API values at create.

A manifest may name input images as URLs, data: URIs or local files. A local file is read when the manifest is
read, to check it is an image and to hash it: the reference kept in the store is `file:<sha256>:<path>` (small),
and identity sees only the hash, so an edited file makes a new task. When the create is sent, the file is read
again, checked against that hash and inlined as a data: URI (the API's `images` takes URLs or data: URIs);
a chained task's input, the parent task's output file, is inlined the same way. Blocking file I/O: the worker
runs `resolve` in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from batcher.imageinfo import SNIFF_BYTES, sniff
from batcher.models import FROM_REF, LOCAL_REF, local_ref

MAX_INPUT_IMAGE_BYTES = 10 * 2**20  # per input image; our choice, the same as the emulator's default cap
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class InputProblem(Exception):
    """An input image cannot be used; the message says which and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_local(image: str) -> bool:
    """A manifest's image entry that names a local file (not a URL of any scheme, not a data: URI)."""
    return not image.startswith("data:") and _URL_SCHEME.match(image) is None


def _read_image(path: Path, shown: str) -> bytes:
    """The bytes of a local image file, refusing what the API could not take."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InputProblem(f"input image '{shown}' is not a file ({path})")
        if size > MAX_INPUT_IMAGE_BYTES:
            raise InputProblem(f"input image '{shown}' is larger than {MAX_INPUT_IMAGE_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputProblem(f"input image '{shown}' not found (looked for {path})") from None
    except OSError as e:
        raise InputProblem(f"cannot read input image '{shown}': {e.strerror or e}") from None
    if sniff(data[:SNIFF_BYTES]) is None:
        raise InputProblem(f"input image '{shown}' is not a PNG, JPEG or WebP image")
    return data


@dataclass
class LocalImages:
    """Local input files → references, each file read and hashed once per pass over a manifest."""

    seen: dict[Path, str | InputProblem] = field(default_factory=dict)

    def ref(self, image: str, base_dir: Path) -> str:
        """`image` (relative to `base_dir`, or absolute) as a `file:` reference; raises InputProblem."""
        path = (base_dir / os.path.expanduser(image)).absolute()
        known = self.seen.get(path)
        if known is None:
            try:
                known = local_ref(hashlib.sha256(_read_image(path, image)).hexdigest(), str(path))
            except InputProblem as problem:
                known = problem
            self.seen[path] = known
        if isinstance(known, InputProblem):
            raise InputProblem(known.message)  # named as first written: the same file, the same fault
        return known


def data_uri(data: bytes) -> str:
    """An image's bytes as a data: URI of its real type."""
    info = sniff(data[:SNIFF_BYTES])
    mime = _MIME[info.format] if info is not None else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def read_verified(path: str, sha256: str | None, what: str, data: bytes | None = None) -> bytes:
    """A file's bytes, refused when missing, unreadable or not the content `sha256` says (when given). `data`:
    the bytes already read (an object in a bucket, fetched by the caller), to be checked the same way."""
    try:
        data = Path(path).read_bytes() if data is None else data
    except FileNotFoundError:
        raise InputProblem(f"{what} {path} is missing") from None
    except OSError as e:
        raise InputProblem(f"cannot read {what} {path}: {e.strerror or e}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputProblem(f"{what} {path} changed since it was recorded (sha256 differs)")
    return data


@dataclass(frozen=True)
class ParentOutput:
    """The finished output of a chained task's parent, as the store recorded it."""

    label: str  # the parent's name or key, for messages
    path: str
    sha256: str | None
    data: bytes | None = None  # its bytes, when they were fetched from a bucket


def resolve(images: tuple[str, ...], parent: ParentOutput | None) -> tuple[str, ...]:
    """References → the values the API's `images` field takes (blocking: run in a thread)."""
    out: list[str] = []
    for ref in images:
        if ref.startswith(FROM_REF):
            if parent is None:
                raise InputProblem("the input task's output is not recorded")
            out.append(
                data_uri(read_verified(parent.path, parent.sha256, f"the output of task {parent.label}", parent.data))
            )
        elif ref.startswith(LOCAL_REF):
            sha, _, path = ref[len(LOCAL_REF) :].partition(":")
            out.append(data_uri(read_verified(path, sha, "input image")))
        else:
            out.append(ref)
    return tuple(out)
