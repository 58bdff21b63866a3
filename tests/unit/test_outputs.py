"""Writing an image: held whole or streamed in pieces, the same bytes and sha256 end up under the final name,
durably, with no temporary file left behind; the whole pages past the page cache where the filesystem allows."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from batcher.errors import OutputError
from batcher.outputs import DIRECT_ALIGN, AtomicFile, Finisher, write_new

PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (64).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"


def image(size: int) -> bytes:
    return (PNG_HEAD + os.urandom(size))[:size] if size >= len(PNG_HEAD) else PNG_HEAD[:size]


@pytest.mark.parametrize("size", [0, 100, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1, 3 * DIRECT_ALIGN + 17])
def test_write_new_holds_exactly_the_bytes(tmp_path: Path, size: int) -> None:
    data = image(size)
    write_new(tmp_path / "sub" / "a.part", tmp_path / "sub" / "a.png", data)  # its folder made on the way
    assert (tmp_path / "sub" / "a.part").read_bytes() == data
    with pytest.raises(FileExistsError):  # never over a file already there
        write_new(tmp_path / "sub" / "a.part", tmp_path / "sub" / "a.png", data)


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_held_or_streamed_the_file_and_its_sha256_are_the_bytes(tmp_path: Path, pieces: int, whole: bool) -> None:
    data = image(200_000 + 123)
    sink = AtomicFile(tmp_path / "out" / "x.png", whole=whole)
    step = -(-len(data) // pieces)
    for at in range(0, len(data), step):
        sink.write(data[at : at + step])
    info = sink.image()
    assert info is not None and (info.format, info.width, info.height) == ("png", 64, 64)
    sink.finish(tmp_path / "out" / "y.png")
    assert (tmp_path / "out" / "y.png").read_bytes() == data
    assert sink.sha256 == hashlib.sha256(data).hexdigest() and sink.size == len(data)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["y.png"]  # no .part left


@pytest.mark.parametrize("whole", [True, False])
def test_a_discarded_file_leaves_nothing(tmp_path: Path, whole: bool) -> None:
    for pieces in ([image(5000)], [image(5000), b"more"]):
        sink = AtomicFile(tmp_path / "x.png", whole=whole)
        for piece in pieces:
            sink.write(piece)
        sink.discard()
        assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_folder_that_cannot_be_written_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    sink = AtomicFile(tmp_path / "ro" / "x.png", whole=True)  # found when it is written
    sink.write(image(5000))
    with pytest.raises(OutputError, match="permission denied"):
        sink.finish(tmp_path / "ro" / "x.png")


async def test_the_finisher_finishes_many_files_at_once(tmp_path: Path) -> None:
    finisher = Finisher()
    datas = [image(DIRECT_ALIGN * 3 + i) for i in range(20)]
    sinks = []
    for i, data in enumerate(datas):
        sink = AtomicFile(tmp_path / f"{i % 3}" / f"{i}.png", whole=i % 2 == 0)
        sink.write(data)
        sinks.append(sink)
    await asyncio.gather(*(finisher.finish(s, s.final) for s in sinks))
    for i, (sink, data) in enumerate(zip(sinks, datas, strict=True)):
        assert (tmp_path / f"{i % 3}" / f"{i}.png").read_bytes() == data
        assert sink.sha256 == hashlib.sha256(data).hexdigest()
