"""The Python API (`batcher.run`, `batcher.arun`, ...) against the LinkModel emulator on loopback: money is
checked against the emulator's own billing, never the ledger's column."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import importlib.util
import os
import signal
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import batcher
from batcher.emulator import BackgroundEmulator, Latency
from batcher.results import Progress
from batcher.store import Store
from tests.conftest import StartEmulator

PRICE = Decimal("0.067")  # the price table's and the emulator's: the API reports what it bills


def tasks(n: int) -> list[dict[str, Any]]:
    return [{"prompt": "a {animal} in the snow, number {i}", "animal": "fox", "i": i, "name": f"fox-{i}"}
            for i in range(n)]  # fmt: skip


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No store or key from the developer's environment; the current folder is the test's own."""
    for var in ("BATCHER_DB", "LINKMODEL_BASE_URL", "LINKMODEL_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def point_at(monkeypatch: pytest.MonkeyPatch, base_url: str, key: str) -> None:
    monkeypatch.setenv("LINKMODEL_BASE_URL", base_url)
    monkeypatch.setenv("LINKMODEL_API_KEY", key)


async def test_a_run_from_a_task_list_is_paid_once_and_the_same_call_again_is_free(
    api_env: Path, start_emu: StartEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = await start_emu()
    point_at(monkeypatch, emu.base_url, emu.api_key)
    seen: list[Progress] = []
    db = str(api_env / "jobs.db")

    result = await batcher.arun(tasks(5), job="foxes", db=db, output="out",
                                on_progress=seen.append)  # fmt: skip

    assert (result.job, result.succeeded, result.failed, result.pending) == ("foxes", 5, 0, 0)
    assert emu.stats.successes == 5 and emu.stats.creates_accepted == 5
    assert result.cost_usd == result.online_cost_usd == emu.stats.successes * PRICE
    assert (result.batch_cost_usd, result.unknown_submissions) == (Decimal(0), 0)
    assert [t.name for t in result.tasks] == [f"fox-{i}" for i in range(5)]
    for t in result.tasks:
        data = Path(str(t.file)).read_bytes()
        assert Path(str(t.file)).parent == api_env / "out"  # the task list's paths are the current folder's
        assert (t.status, t.sha256, t.bytes, t.cost_usd, t.error) == (
            "succeeded", hashlib.sha256(data).hexdigest(), len(data), PRICE, None)  # fmt: skip
    records = result.to_records()
    assert records[0].keys() == {"name", "key", "status", "file", "sha256", "bytes", "cost_usd", "error"}
    assert seen and seen[-1].done == seen[-1].total == 5 and seen[-1].spent_usd == 5 * PRICE

    again = await batcher.arun(tasks(5), job="foxes", db=db, output="out")
    assert emu.stats.creates_accepted == 5 and emu.stats.successes == 5  # nothing sent, nothing billed
    assert again.cost_usd == result.cost_usd and again.succeeded == 5
    assert batcher.report("foxes", db=db).to_records() == records
    assert batcher.status(db=db).jobs == {"foxes": {"succeeded": 5}}


async def test_run_inside_a_running_loop_works_on_its_own_thread_and_to_pandas_says_what_it_needs(
    api_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in Jupyter: a loop runs in this thread; `run` blocks it, so the API must be served from elsewhere."""
    here = asyncio.get_running_loop()
    threads: set[str] = set()
    with BackgroundEmulator() as emu:
        point_at(monkeypatch, emu.base_url, emu.api_key)
        result = batcher.run(tasks(3), job="nb", db=str(api_env / "nb.db"), output="out",
                             on_progress=lambda _p: threads.add(threading.current_thread().name))  # fmt: skip
        billed = emu.stats(include_events=False)["successes"]
    assert asyncio.get_running_loop() is here and not here.is_closed()
    assert result.succeeded == 3 and billed == 3 and result.cost_usd == billed * PRICE
    assert threads == {"batcher-run"}  # the callback ran on the run's own thread
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(ImportError, match="pip install pandas"):
            result.to_pandas()
    else:
        frame = result.to_pandas()
        assert list(frame["name"]) == ["fox-0", "fox-1", "fox-2"]


async def test_cancelling_arun_midway_stops_gracefully_and_the_same_call_resumes_paying_nothing_twice(
    api_env: Path, start_emu: StartEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = await start_emu(latency=Latency("fixed", 0.4))
    point_at(monkeypatch, emu.base_url, emu.api_key)
    db = str(api_env / "c.db")
    call: dict[str, Any] = {"job": "slow", "db": db, "output": "out", "rate_limit": {"requests_per_second": 20}}
    run = asyncio.create_task(batcher.arun(tasks(12), **call))
    for _ in range(2000):  # until some creates are accepted, and not all of the tasks are done
        if emu.stats.creates_accepted >= 3 or run.done():
            break
        await asyncio.sleep(0.005)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    created_before = emu.stats.creates_accepted
    assert 0 < created_before < 12, "the cancel came midway"
    store = await Store.open(db, create=False)
    try:
        counts = (await store.status_counts())["slow"]
    finally:
        await store.close()
    assert "submitting" not in counts  # every create on the wire had its reply recorded
    assert counts.get("succeeded", 0) < 12

    result = await batcher.arun(tasks(12), **call)
    assert result.succeeded == 12 and result.unknown_submissions == 0
    assert emu.stats.creates_accepted == 12  # no task created twice
    assert result.cost_usd == emu.stats.successes * PRICE == 12 * PRICE


def test_a_bad_task_list_raises_one_manifest_error_listing_every_problem_and_writes_nothing(api_env: Path) -> None:
    bad: list[Any] = [
        {"prompt": "a {colour} fox", "name": "first"},  # an undefined variable
        {"prompt": "a fox", "size": "7x7"},  # no such size
        "a fox",  # not a dict
        {"name": "no-prompt"},
    ]
    with pytest.raises(batcher.ManifestError) as caught:
        batcher.run(bad, job="bad", db=str(api_env / "bad.db"), output="out", price_usd="-1")
    shown = [str(p) for p in caught.value.problems]
    assert any(s.startswith("task 0 (first): prompt: ") and "colour" in s for s in shown), shown
    assert any(s.startswith("task 1: size: ") and "7x7" in s for s in shown), shown
    assert "task 2: must be a dict of a manifest row's fields" in shown
    assert any(s.startswith("task 3 (no-prompt): ") and "no prompt" in s for s in shown), shown
    assert any(s.startswith("setting price_usd: ") for s in shown), shown
    assert len(shown) == 5, shown
    assert isinstance(caught.value, batcher.BatcherError) and caught.value.exit_code == 2
    assert sorted(p.name for p in api_env.iterdir()) == []  # no store, no output folder


def test_the_public_names_are_exported_typed_and_documented() -> None:
    assert set(batcher.__all__) >= {"run", "arun", "estimate", "retry", "report", "status", "BatcherError",
                                    "ManifestError", "AuthError", "QuotaError", "BudgetError", "JobResult"}  # fmt: skip
    for name in batcher.__all__:
        value = getattr(batcher, name)
        assert isinstance(value, str) or (value.__doc__ or "").strip(), name
    importlib.import_module("batcher.report")  # the submodule of the same name does not take the function's place

    assert callable(batcher.report) and batcher.report.__module__ == "batcher.api"
    assert (Path(batcher.__file__).parent / "py.typed").exists()


RATE = {"requests_per_second": 20, "max_in_flight": 3}
GENERATION_S = 100 * 3600.0  # the Ctrl-C test's generations: they end when the test advances the clock this far
SCRIPT = f"""
import signal
import sys
import batcher
signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive Python has it (not inherited ignored)
RATE = {RATE!r}
tasks = [{{"prompt": f"a fox in the snow, number {{i}}", "name": f"fox-{{i}}"}} for i in range(12)]
try:
    batcher.run(tasks, job="ctrlc", db=sys.argv[1], output="out", rate_limit=RATE)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


async def test_ctrl_c_in_run_stops_as_the_cli_does_and_the_same_call_resumes(
    api_env: Path, start_emu: StartEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every create is held on the emulator's clock (its intent committed, its reply not yet come) and every
    # generation runs for a long day: three creates fill the three slots, and nothing moves until the test says
    emu = await start_emu(latency=Latency("fixed", GENERATION_S), slow_rate=1.0, slow_s=60.0,
                          fault_kinds=frozenset({"create"}))  # fmt: skip
    point_at(monkeypatch, emu.base_url, emu.api_key)
    env = dict(os.environ)
    db = str(api_env / "i.db")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SCRIPT, db, env=env, cwd=str(api_env),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    for _ in range(6000):  # until three creates are on the wire (bounded: a run that never sends them fails)
        if emu.clock.sleepers >= 3 or proc.returncode is not None:
            break
        await asyncio.sleep(0.005)
    assert emu.clock.sleepers == 3 and emu.stats.creates_accepted == 0
    proc.send_signal(signal.SIGINT)
    for _ in range(600):  # the replies come whenever the stop waits for them: the clock moves until it exits
        # (600 minutes at most: far less than a generation, which must still run when the stop comes)
        emu.advance(60.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.1)
            break
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out.decode().strip()) == (130, "interrupted"), err.decode()
    assert "Traceback" not in err.decode()
    assert emu.stats.creates_accepted == 3  # the generations still run: no slot came free for a fourth
    store = await Store.open(db, create=False)
    try:  # the creates on the wire had their replies recorded
        assert (await store.status_counts())["ctrlc"] == {"pending": 9, "submitted": 3}
    finally:
        await store.close()
    emu.configure(slow_rate=0.0, latency=Latency("fixed", 0.4))
    emu.advance(GENERATION_S)  # the three generations are done
    tasks12 = [{"prompt": f"a fox in the snow, number {i}", "name": f"fox-{i}"} for i in range(12)]
    result = await batcher.arun(tasks12, job="ctrlc", db=db, output="out", rate_limit=RATE)
    assert result.succeeded == 12 and emu.stats.creates_accepted == 12  # nothing created twice
    assert result.cost_usd == emu.stats.successes * PRICE
