"""Small thumbnails of a run's images for the HTML gallery, kept in a folder beside the page.

An image from the real API is 1–2 MB: a page whose cards showed the originals would have the browser fetch and
decode gigabytes while someone scrolls a 5,000-image run. The cards show a WebP of at most THUMB_PX pixels instead
and link the original, which the lightbox opens.

The originals are only ever read: their bytes carry the provenance metadata (C2PA manifests, SynthID) that a
re-encode would drop, so a thumbnail is decoded from a copy of the bytes in memory and written elsewhere.
A thumbnail is named by the SHA-256 of its original's bytes (and THUMB_PX), so a re-render reuses it while the
image is unchanged and makes a new one when the file was replaced. An index beside them (the file's size and
modification time, and its SHA-256) spares reading every unchanged original again; a change in either means
reading and hashing it anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from batcher.storage.base import is_remote

THUMB_PX = 400  # longest side: a card is about 240 CSS px wide, so this stays sharp on a 2x screen too
QUALITY = 80  # WebP quality; a thumbnail is 5–30 KB
FOLDER_SUFFIX = "_files"  # report.html -> report_files/thumbs/, as browsers name a saved page's folder
INDEX = "index.json"
THUMB_NAME = re.compile(r"[0-9a-f]{64}-\d+\.webp")  # only files of this form are ours to prune
WORKERS = min(4, os.cpu_count() or 1)  # Pillow and hashlib release the GIL while they decode, scale and hash
# EXIF orientations: the browser shows an original turned as its EXIF says, so the thumbnail must be too
TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip
ORIENTATION = 0x0112  # the EXIF tag


@dataclass(frozen=True)
class Thumb:
    """What a card shows for one image file: its thumbnail, or why there is none."""

    path: Path | None  # the thumbnail; None when none could be made
    width: int = 0
    height: int = 0
    problem: str | None = None  # "image file missing", "unreadable image: …"


@dataclass
class Made:
    """What one pass did, for the command's last line."""

    thumbs: dict[str, Thumb]  # by the original's path, as the rows give it
    made: int = 0
    reused: int = 0
    problems: int = 0


def folder(page: str | os.PathLike[str]) -> Path:
    """The thumbnails' folder for the page at `page`: `report.html` -> `report_files/thumbs`."""
    p = Path(page)
    return p.with_name(p.stem + FOLDER_SUFFIX) / "thumbs"


def make_all(files: Iterable[str], page: str | os.PathLike[str], workers: int = WORKERS,
             fetch: Callable[[str], bytes] | None = None) -> Made:  # fmt: skip
    """A thumbnail for every image in `files` (paths as the report's rows give them), made or reused, in the
    folder beside `page`; thumbnails no image uses any more are removed. `fetch` reads an object in a bucket
    (`s3://`, `gs://`), from these worker threads; its bytes are only read, never written back."""
    out = folder(page)
    out.mkdir(parents=True, exist_ok=True)
    page_dir = Path(page).resolve().parent
    index = _read_index(out)
    paths = list(dict.fromkeys(files))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda f: _one_remote(f, out, fetch) if fetch and is_remote(f) else
                                _one(f, out, page_dir, index), paths))  # fmt: skip
    made = Made({})
    fresh: dict[str, list[object]] = {}
    for path, (thumb, entry, new) in zip(paths, results, strict=True):
        made.thumbs[path] = thumb
        if thumb.path is None:
            made.problems += 1
        elif new:
            made.made += 1
        else:
            made.reused += 1
        if entry is not None:
            fresh[entry[0]] = entry[1]
    _write_index(out, fresh)
    used = {t.path.name for t in made.thumbs.values() if t.path is not None}
    for old in out.iterdir():
        if THUMB_NAME.fullmatch(old.name) and old.name not in used:
            with contextlib.suppress(OSError):
                old.unlink()
    return made


def _one(file: str, out: Path, page_dir: Path, index: Mapping[str, list[object]]) -> tuple[Thumb, tuple[str, list[object]] | None, bool]:  # fmt: skip
    """The thumbnail of one file, its index entry, and whether it was made now."""
    original = Path(file)
    try:
        key = os.path.relpath(original.resolve(), page_dir)  # relative: the index travels with the page
    except ValueError:  # another drive on Windows
        key = str(original.resolve())
    try:
        st = original.stat()
        known = index.get(key)
        if known and known[:2] == [st.st_size, st.st_mtime_ns] and isinstance(known[2], str):
            done = _existing(out / _name(known[2]))
            if done is not None:
                return done, (key, known), False
        data = original.read_bytes()  # read once: hashed, then decoded from memory
    except FileNotFoundError:
        return Thumb(None, problem="image file missing"), None, False
    except OSError as e:
        return Thumb(None, problem=f"unreadable image: {e.strerror or e}"), None, False
    sha = hashlib.sha256(data).hexdigest()
    entry = (key, [st.st_size, st.st_mtime_ns, sha])
    target = out / _name(sha)
    if (done := _existing(target)) is not None:  # the same image under another name, or a lost index
        return done, entry, False
    try:
        thumb = _scaled(data)
    except UnidentifiedImageError:
        return Thumb(None, problem="unreadable image: not an image file"), None, False
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Thumb(None, problem="unreadable image: too many pixels"), None, False
    except (OSError, ValueError, SyntaxError) as e:  # truncated, corrupt chunks, a mode Pillow cannot convert
        return Thumb(None, problem=f"unreadable image: {e}"), None, False
    _write(target, lambda f: thumb.save(f, "WEBP", quality=QUALITY))
    return Thumb(target, thumb.width, thumb.height), entry, True


def _one_remote(uri: str, out: Path, fetch: Callable[[str], bytes]) -> tuple[Thumb, None, bool]:
    """The thumbnail of an object in a bucket: fetched whole (there is no mtime to trust), named by its sha256."""
    try:
        data = fetch(uri)
    except FileNotFoundError:
        return Thumb(None, problem="image file missing"), None, False
    except Exception as e:  # a bucket's failure, whatever the library calls it: shown on the card
        return Thumb(None, problem=f"unreadable image: {type(e).__name__}"), None, False
    target = out / _name(hashlib.sha256(data).hexdigest())
    if (done := _existing(target)) is not None:
        return done, None, False
    try:
        thumb = _scaled(data)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
            ValueError, SyntaxError) as e:  # fmt: skip
        return Thumb(None, problem=f"unreadable image: {type(e).__name__}"), None, False
    _write(target, lambda f: thumb.save(f, "WEBP", quality=QUALITY))
    return Thumb(target, thumb.width, thumb.height), None, True


def _write(target: Path, fill: Callable[[IO[bytes]], object]) -> None:
    """`target` whole or not at all: a crash never leaves half a thumbnail to reuse. A file of our own name,
    not mkstemp's, so it gets the umask's permissions like any file the user makes."""
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex}{target.suffix}")
    try:
        with tmp.open("xb") as f:
            fill(f)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _name(sha: str) -> str:
    return f"{sha}-{THUMB_PX}.webp"


def _existing(path: Path) -> Thumb | None:
    """A thumbnail made before, with its size read from its header (no decode)."""
    try:
        with Image.open(path) as im:
            return Thumb(path, im.width, im.height)
    except (OSError, UnidentifiedImageError):
        return None


def _scaled(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # an image too large to be one of ours
        src = Image.open(io.BytesIO(data))
        turn = TURNS.get(src.getexif().get(ORIENTATION, 1))
        src.draft("RGB", (THUMB_PX, THUMB_PX))  # a JPEG decodes at a fraction of its size; others ignore this
        alpha = src.mode in ("RGBA", "LA", "PA") or "transparency" in src.info
        im = src.convert("RGBA" if alpha else "RGB")  # palette and 16-bit images scale badly as they are
        im.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return im.transpose(turn) if turn is not None else im


def _read_index(out: Path) -> dict[str, list[object]]:
    try:
        files = json.loads((out / INDEX).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no index, or not one we can read: every original is hashed again
    return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 3} if isinstance(files, dict) else {}


def _write_index(out: Path, files: Mapping[str, list[object]]) -> None:
    text = json.dumps({"files": files}, separators=(",", ":")).encode()
    _write(out / INDEX, lambda f: f.write(text))
