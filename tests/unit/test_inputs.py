"""Input images: which entries are local files, and references → what the create sends (checked, inlined)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from batcher.emulator.images import encode_png
from batcher.emulator.validate import parse_create
from batcher.manifest.inputs import InputProblem, ParentOutput, is_local, resolve
from batcher.models import from_ref, local_ref


@pytest.mark.parametrize(
    ("image", "local"),
    [
        ("sticker.png", True),
        ("assets/a b.png", True),
        ("/abs/x.jpg", True),
        ("C:\\\\x.png", True),  # a drive letter is not a URL scheme followed by //
        ("https://e.com/a.png", False),
        ("ftp://e.com/a.png", False),
        ("data:image/png;base64,iVBORw0KGgo=", False),
    ],
)
def test_which_entries_name_local_files(image: str, local: bool) -> None:
    assert is_local(image) is local


def test_references_become_data_uris_the_api_accepts(tmp_path: Path) -> None:
    sticker, parent = tmp_path / "s.png", tmp_path / "p.png"
    sticker.write_bytes(encode_png("sticker", 32, 32))
    parent.write_bytes(encode_png("parent", 64, 64))
    refs = (
        from_ref("k" * 32),
        local_ref(hashlib.sha256(sticker.read_bytes()).hexdigest(), str(sticker)),
        "https://e.com/a.png",
    )
    sent = resolve(refs, ParentOutput("'base'", str(parent), hashlib.sha256(parent.read_bytes()).hexdigest()))
    assert sent[2] == "https://e.com/a.png"
    assert base64.b64decode(sent[0].partition(",")[2]) == parent.read_bytes()
    assert base64.b64decode(sent[1].partition(",")[2]) == sticker.read_bytes()
    body = {"model": "gemini-3.1-flash-lite-image", "prompt": "edit", "images": list(sent)}
    assert parse_create(body, "images", 10 * 2**20).images == sent  # the emulator's own validation


def test_a_changed_or_missing_input_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "s.png"
    f.write_bytes(encode_png("a", 8, 8))
    ref = local_ref(hashlib.sha256(b"other bytes").hexdigest(), str(f))
    with pytest.raises(InputProblem, match="changed since it was recorded"):
        resolve((ref,), None)
    with pytest.raises(InputProblem, match="is missing"):
        resolve((from_ref("k" * 32),), ParentOutput("'base'", str(tmp_path / "gone.png"), None))
