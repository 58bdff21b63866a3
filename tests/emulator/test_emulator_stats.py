"""Accounting: counters, concurrency peaks, timestamps, and the admin endpoints."""

from __future__ import annotations

import asyncio
import time

from .emu_helpers import MakeApi


async def test_counters_over_http_and_in_process(make_api: MakeApi) -> None:
    api = await make_api()
    wall_before = time.time()
    a1 = await api.generate(prompt="a")
    await api.generate(prompt="a")
    await api.generate(prompt="b")
    assert (await api.create(prompt="")).status == 400
    await api.download(a1["file_url"])
    await api.download(a1["file_url"])

    stats = await api.stats()
    assert stats["requests"] == {"create": {"200": 3, "400": 1}, "query": {"200": 3}, "download": {"200": 2}}
    assert stats["creates_accepted"] == 3
    assert stats["accepted_by_prompt"] == {"a": 2, "b": 1}
    assert (stats["successes"], stats["failures"], stats["cancels"]) == (3, 0, 0)
    assert (stats["polls"], stats["downloads"], stats["lost_creates"], stats["rate_limited"]) == (3, 2, 0, 0)
    kinds = [kind for _, _, kind, _ in stats["events"]]
    assert kinds == ["create", "query"] * 3 + ["create", "download", "download"]
    assert all(wall_before <= wall <= time.time() for _, wall, _, _ in stats["events"])
    loop_times = [t for t, _, _, _ in stats["events"]]
    assert loop_times == sorted(loop_times)

    in_process = api.emu.stats
    assert in_process.as_dict(include_events=False) == {k: v for k, v in stats.items() if k != "events"}
    assert in_process.count("create") == 4 and in_process.count("create", 400) == 1


async def test_stats_without_events(make_api: MakeApi) -> None:
    api = await make_api()
    await api.generate()
    async with api.session.get(api.emu.origin + "/_emulator/stats?events=0") as resp:
        body = await resp.json()
    assert "events" not in body and body["creates_accepted"] == 1


async def test_peak_concurrent_requests(make_api: MakeApi) -> None:
    api = await make_api(slow_rate=1.0, slow_s=0.3)
    await asyncio.gather(*(api.query(f"t{i}") for i in range(12)))
    assert api.emu.stats.peak_concurrent_requests == 12


async def test_generations_in_progress_and_reaching_success_without_a_query(make_api: MakeApi) -> None:
    api = await make_api(latency="fixed:30")
    for i in range(5):
        await api.create(prompt=f"p{i}")
    stats = api.emu.stats
    assert stats.peak_concurrent_generations == 5 and stats.successes == 0
    api.emu.advance(31)
    await api.create(prompt="later")
    stats = api.emu.stats
    assert stats.peak_concurrent_generations == 5  # the first five finished before this one began
    assert stats.successes == 5  # counted when reached, whether or not anyone asked


async def test_reset_forgets_tasks_and_counters(make_api: MakeApi) -> None:
    api = await make_api()
    task_id = (await api.generate())["task_id"]
    async with api.session.post(api.emu.origin + "/_emulator/reset") as resp:
        assert resp.status == 200
    stats = await api.stats()
    assert stats["creates_accepted"] == 0 and stats["requests"] == {} and stats["events"] == []
    assert (await api.query(task_id)).status == 404


async def test_config_endpoint_reads_and_changes_knobs(make_api: MakeApi) -> None:
    api = await make_api()
    origin = api.emu.origin
    async with api.session.get(origin + "/_emulator/config") as resp:
        config = await resp.json()
    assert config["api_key"] == "emulator-key" and config["latency"] == "fixed:0"
    async with api.session.post(origin + "/_emulator/config", json={"fail_rate": 1, "latency": "fixed:0"}) as resp:
        assert resp.status == 200 and (await resp.json())["fail_rate"] == 1.0
    assert (await api.generate())["status"] == "Failed"
    for bad in ({"fail_rate": 2}, {"no_such_knob": 1}, {"port": 1}, {"latency": "soon"}, [1, 2]):
        async with api.session.post(origin + "/_emulator/config", json=bad) as resp:
            assert resp.status == 400 and (await resp.json())["error"]
    assert api.emu.config.fail_rate == 1.0  # a rejected change leaves the knobs alone


async def test_events_are_bounded(make_api: MakeApi) -> None:
    api = await make_api(max_events=3)
    for _ in range(5):
        await api.query("x")
    stats = api.emu.stats
    assert len(stats.events) == 3 and stats.events_dropped == 2 and stats.count("query") == 5
