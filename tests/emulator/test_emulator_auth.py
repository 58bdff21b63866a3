"""Bearer authentication: a missing or wrong key is a 401 envelope; the key can change mid-run."""

from __future__ import annotations

import pytest

from .emu_helpers import MakeApi


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "emulator-key"},
        {"Authorization": "Basic ZW11bGF0b3Ita2V5"},
    ],
    ids=["no-header", "empty-bearer", "no-scheme", "basic"],
)
async def test_missing_key_is_401_on_create_and_query(make_api: MakeApi, headers: dict[str, str]) -> None:
    api = await make_api()
    for reply in (await api.create(headers=headers), await api.query("x", headers=headers)):
        assert reply.status == 401
        assert reply.body["code"] == 401 and reply.body["data"] is None
        assert "missing" in reply.body["msg"]
    assert api.emu.stats.creates_accepted == 0


async def test_wrong_key_is_401(make_api: MakeApi) -> None:
    api = await make_api()
    reply = await api.create(headers={"Authorization": "Bearer not-the-key"})
    assert reply.status == 401 and reply.body["code"] == 401
    assert "invalid" in reply.body["msg"]
    assert api.emu.stats.count("create", 401) == 1


async def test_custom_key(make_api: MakeApi) -> None:
    api = await make_api(api_key="s3cret")
    assert api.emu.api_key == "s3cret"
    assert (await api.create()).status == 200
    assert (await api.create(headers={"Authorization": "Bearer emulator-key"})).status == 401


async def test_key_switched_mid_run_through_the_config_endpoint(make_api: MakeApi) -> None:
    api = await make_api()
    task_id = (await api.create()).data["task_id"]
    async with api.session.post(api.emu.origin + "/_emulator/config", json={"api_key": "rotated"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["api_key"] == "rotated"
    assert (await api.query(task_id)).status == 401
    assert (await api.query(task_id, headers={"Authorization": "Bearer rotated"})).status == 200


async def test_downloads_need_no_key(make_api: MakeApi) -> None:
    api = await make_api()
    url = (await api.generate())["file_url"]
    async with api.session.get(url) as resp:  # no Authorization header: file hosting is keyed by URL
        assert resp.status == 200
