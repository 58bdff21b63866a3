"""One manifest, two providers: a task's identity is what is asked, not the route. What one API finished is
finished for the other (the cache serves it); switching the provider of an unfinished job moves only the tasks
never sent, and what the first API holds is collected through it, never paid for twice."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from batcher.emulator import Latency
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.acceptance.test_gemini_online import gemini_env, rows
from tests.acceptance.test_money_truth import until
from tests.conftest import StartEmulator, StartGemini

FAST = Latency("uniform", 0.05, 0.2)


async def test_what_linkmodel_made_is_served_from_the_cache_to_a_gemini_run(
    start_emu: StartEmulator, start_gemini: StartGemini, tmp_path: Path
) -> None:
    linkmodel, gemini = await start_emu(latency=FAST), await start_gemini(latency=FAST)
    first = manifest(tmp_path / "first.yaml", 5)
    done = await batcher("run", str(first), "--db", str(tmp_path / "b.db"), "-q", env=cli_env(linkmodel),
                         cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    second = manifest(tmp_path / "second.yaml", 5, size="1:1")  # the same asks, in Gemini's notation
    again = await batcher("run", str(second), "--db", str(tmp_path / "b.db"), "--provider", "gemini", "-q", "--json",
                          env={**cli_env(linkmodel), **gemini_env(gemini)}, cwd=tmp_path)  # fmt: skip
    assert again.code == 0, again.err
    head = json.loads(again.out)
    assert head["succeeded"] == 5 and head["cached"] == 5 and gemini.stats.images_billed == 0, head


async def test_switching_provider_moves_only_tasks_never_sent(
    start_emu: StartEmulator, start_gemini: StartGemini, tmp_path: Path
) -> None:
    linkmodel = await start_emu(latency=Latency("fixed", 600.0))  # LinkModel's generations take a while
    gemini = await start_gemini(latency=FAST)
    m = manifest(tmp_path / "switch.yaml", 6)
    db = tmp_path / "b.db"
    env = {**cli_env(linkmodel), **gemini_env(gemini)}
    proc = await start("run", str(m), "--db", str(db), "-q", "--max-in-flight", "2", "--rate", "1", env=env,
                       cwd=tmp_path)  # fmt: skip
    await until(lambda: linkmodel.stats.creates_accepted == 2, "two creates to be accepted")
    await asyncio.sleep(0.3)  # their replies are committed (a stop would record them anyway)
    proc.send_signal(signal.SIGINT)
    assert (await finish(proc)).code == 130
    held = {r["prompt"] for r in rows(db) if r["status"] == "submitted"}
    assert len(held) == 2 and linkmodel.stats.creates_accepted == 2

    switched = await batcher("run", str(m), "--db", str(db), "--provider", "gemini", "-q", env=env, cwd=tmp_path)
    assert switched.code == 1 and "2 by linkmodel" in switched.err, switched.err
    assert gemini.stats.images_billed == 4 and not held & set(gemini.stats.billed_by_prompt)
    assert {r["prompt"] for r in rows(db) if r["status"] == "submitted"} == held

    linkmodel.advance(600)  # LinkModel's two generations are done
    collected = await batcher("run", str(m), "--db", str(db), "-q", "--json", env=env, cwd=tmp_path)
    assert collected.code == 0, collected.err
    assert json.loads(collected.out)["succeeded"] == 6
    assert linkmodel.stats.creates_accepted == 2 and gemini.stats.images_billed == 4
    assert {r["provider"] for r in rows(db) if r["prompt"] in held} == {"linkmodel"}
