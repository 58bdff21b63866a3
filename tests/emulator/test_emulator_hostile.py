"""Hostile file URLs: a successful generation whose file URL attacks the client instead of serving an image."""

from __future__ import annotations

import time
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner

from batcher.emulator import EmulatorConfig
from batcher.emulator.command import emulator

from .emu_helpers import PNG_SIGNATURE, MakeApi, read_png

MB = 2**20


async def test_scheme_names_a_local_file_or_another_protocol(make_api: MakeApi) -> None:
    api = await make_api(hostile_file_rate=1.0, hostile_file_kind="scheme")
    urls = [(await api.generate(prompt=f"scheme {i}"))["file_url"] for i in range(4)]
    assert {urlsplit(u).scheme for u in urls} == {"file", "ftp"}
    assert "file:///etc/passwd" in urls
    stats = api.emu.stats
    # the generations succeeded, so they are billed like any other
    assert (stats.hostile_files, stats.successes, stats.creates_accepted) == (4, 4, 4)


async def test_huge_streams_past_any_cap_without_a_length(make_api: MakeApi) -> None:
    api = await make_api(hostile_file_rate=1.0, hostile_file_kind="huge", hostile_huge_bytes=3 * MB)
    url = (await api.generate())["file_url"]
    async with api.session.get(url) as resp:
        assert resp.status == 200 and resp.content_length is None
        assert resp.headers["Transfer-Encoding"] == "chunked"
        body = await resp.read()
    assert len(body) == 3 * MB and body.startswith(PNG_SIGNATURE)  # its head passes for an image
    assert api.emu.stats.hostile_downloads == 1


async def test_huge_stops_when_the_client_hangs_up(make_api: MakeApi) -> None:
    # a gibibyte on offer; the client takes two mebibytes and leaves, and the emulator carries on serving
    api = await make_api(hostile_file_rate=1.0, hostile_file_kind="huge")
    assert api.emu.config.hostile_huge_bytes >= 2**30
    url = (await api.generate())["file_url"]
    start = time.monotonic()
    async with api.session.get(url) as resp:
        got = 0
        async for chunk in resp.content.iter_chunked(256 * 1024):
            got += len(chunk)
            if got > 2 * MB:
                break
        resp.close()
    api.emu.configure(hostile_file_rate=0.0)
    data = await api.generate(prompt="after the huge one")
    status, body = await api.download(data["file_url"])
    assert status == 200 and read_png(body).width == 1024
    assert time.monotonic() - start < 10.0


async def test_not_image_is_html_labelled_as_png(make_api: MakeApi) -> None:
    api = await make_api(hostile_file_rate=1.0, hostile_file_kind="not-image")
    url = (await api.generate())["file_url"]
    assert urlsplit(url).scheme == "http"
    async with api.session.get(url) as resp:
        body = await resp.read()
        assert resp.status == 200 and resp.content_type == "image/png"
    assert body.lstrip().lower().startswith(b"<!doctype html") and not body.startswith(PNG_SIGNATURE)


async def test_traversal_serves_the_real_image_under_a_climbing_name(make_api: MakeApi) -> None:
    api = await make_api(hostile_file_rate=1.0, hostile_file_kind="traversal")
    url = (await api.generate(prompt="traversal"))["file_url"]
    last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    assert last.startswith("../../") and last.endswith(".png")
    async with api.session.get(url) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert 'filename="../../' in resp.headers["Content-Disposition"]
    assert read_png(body).width == 1024
    stats = api.emu.stats
    assert (stats.hostile_downloads, stats.downloads) == (1, 1)


async def test_failed_generations_are_never_hostile(make_api: MakeApi) -> None:
    api = await make_api(hostile_file_rate=1.0, fail_rate=1.0)
    data = await api.generate()
    assert data["status"] == "Failed" and api.emu.stats.hostile_files == 0


async def test_a_zero_rate_draws_nothing(make_api: MakeApi) -> None:
    # the same seed gives the same fates with the knob at 0 as without it
    plain = await make_api(seed=5, fail_rate=0.5)
    knob = await make_api(seed=5, fail_rate=0.5, hostile_file_rate=0.0, hostile_file_kind="huge")
    fates = [[(await api.generate(prompt=f"p{i}"))["status"] for i in range(12)] for api in (plain, knob)]
    assert fates[0] == fates[1] and "Failed" in fates[0] and "Success" in fates[0]


async def test_knobs_change_at_run_time(make_api: MakeApi) -> None:
    api = await make_api()
    async with api.session.post(
        f"{api.emu.origin}/_emulator/config", json={"hostile_file_rate": 1, "hostile_file_kind": "not-image"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["hostile_file_kind"] == "not-image"
    url = (await api.generate())["file_url"]
    _, body = await api.download(url)
    assert not body.startswith(PNG_SIGNATURE)


def test_bad_hostile_knobs_are_refused() -> None:
    with pytest.raises(ValueError, match="hostile_file_kind"):
        EmulatorConfig(hostile_file_kind="zip-bomb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hostile_file_rate"):
        EmulatorConfig(hostile_file_rate=2.0)
    with pytest.raises(ValueError, match="hostile_huge_bytes"):
        EmulatorConfig(hostile_huge_bytes=0)


def test_command_line_options() -> None:
    help_text = CliRunner().invoke(emulator, ["--help"]).output
    for option in ("--hostile-file-rate", "--hostile-file-kind", "--hostile-huge-bytes", "traversal"):
        assert option in help_text, option
    assert CliRunner().invoke(emulator, ["--hostile-file-kind", "zip-bomb"]).exit_code == 2
