"""The cache and chains against the emulator: pay only for what changed; edits run in dependency order."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from sqlalchemy import update

from batcher import job_review, session
from batcher.emulator import Latency
from batcher.manifest import load_manifest
from batcher.models import TaskSpec, from_ref
from batcher.runner import Runner, StopReason
from batcher.store import Store
from batcher.store.tables import tasks
from tests.conftest import OpenStore, StartEmulator
from tests.integration.runner_kit import MODEL, PRICE, drive, fast_config, load, specs

FAST = Latency("uniform", 0.05, 0.15)


async def rows_of(store: Store, job: str) -> dict[str, dict[str, object]]:
    """The job's tasks by prompt."""
    return {str(r["prompt"]): dict(r) async for r in store.task_rows(await store.job(job))}


def sha(path: object) -> str:
    return hashlib.sha256(Path(str(path)).read_bytes()).hexdigest()


# --- the cache -------------------------------------------------------------------------------------------


async def test_a_finished_output_satisfies_the_same_spec_in_another_job(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST)
    await load(store, specs(6), tmp_path / "a", name="a")
    assert (await drive(store, emu, name="a")).reason == StopReason.DONE
    await load(store, specs(6) + specs(2, prefix="new"), tmp_path / "b", name="b")
    assert (await drive(store, emu, name="b")).reason == StopReason.DONE
    assert emu.stats.creates_accepted == 8  # the six shared specs were not created again
    first, second = await rows_of(store, "a"), await rows_of(store, "b")
    for prompt, row in second.items():
        assert row["status"] == "succeeded" and sha(row["output_path"]) == row["sha256"]
        if prompt.startswith("prompt"):
            origin = first[prompt]
            assert row["cached_from"] == origin["id"] and row["cost_micros"] == 0 and row["attempts"] == 0
            assert row["sha256"] == origin["sha256"] and row["output_path"] != origin["output_path"]
            assert str(row["output_path"]).startswith(str(tmp_path / "b"))
        else:
            assert row["cached_from"] is None and row["cost_micros"] == PRICE
    job = await store.job("b")
    head = await session.job_summary(store, job)
    assert (head["succeeded"], head["cached"], head["billed_calls"], head["cost_usd"]) == (8, 6, 2, "0.134")
    assert not list((tmp_path / "b").glob(".*.part"))


async def test_a_corrupted_or_missing_output_is_not_reused_and_no_cache_reuses_nothing(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST)
    await load(store, specs(5), tmp_path / "a", name="a")
    await drive(store, emu, name="a")
    first = await rows_of(store, "a")
    Path(str(first["prompt 0"]["output_path"])).write_bytes(b"\x89PNG\r\n\x1a\n" + b"flipped bits" * 10)
    Path(str(first["prompt 1"]["output_path"])).unlink()
    await load(store, specs(5), tmp_path / "b", name="b")
    await drive(store, emu, name="b")
    assert emu.stats.creates_accepted == 5 + 2
    assert emu.stats.accepted_by_prompt["prompt 0"] == emu.stats.accepted_by_prompt["prompt 1"] == 2
    second = await rows_of(store, "b")
    assert [second[f"prompt {i}"]["cached_from"] is None for i in range(5)] == [True, True, False, False, False]
    assert all(sha(r["output_path"]) == r["sha256"] for r in second.values())
    # --no-cache: every task of a third job is created, though all five are on disk by now
    await load(store, specs(5), tmp_path / "c", name="c")
    await drive(store, emu, fast_config(use_cache=False), name="c")
    assert emu.stats.creates_accepted == 7 + 5
    assert all(r["cached_from"] is None for r in (await rows_of(store, "c")).values())


def write_catalog(folder: Path, n: int, edited: range = range(0)) -> Path:
    lines = ["sku,color"] + [f"SKU-{i:05d},{'teal' if i in edited else 'red'}" for i in range(n)]
    (folder / "products.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = folder / "catalog.yaml"
    manifest.write_text(
        f"job: catalog\noutput: {{dir: {folder / 'out'}, filename: '{{sku}}.png'}}\n"
        "rows: {file: products.csv, prompt: 'Studio photo of product {sku} in {color}'}\n",
        encoding="utf-8",
    )
    return manifest


async def test_a_second_run_of_an_edited_catalog_creates_only_the_changed_rows(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST)
    path = write_catalog(tmp_path, 40)
    await session.import_manifest(store, load_manifest(path), None)
    await drive(store, emu, name="catalog")
    assert emu.stats.creates_accepted == 40
    write_catalog(tmp_path, 40, edited=range(10, 15))
    est = await session.dry_run(str(path), str(tmp_path / "batcher.db"), None)
    assert (est.done, est.cached, est.to_run) == (35, 0, 5)
    imported = await session.import_manifest(store, load_manifest(path), None)
    assert (imported.added, imported.rows) == (5, 40)
    assert (await drive(store, emu, name="catalog")).reason == StopReason.DONE
    accepted = emu.stats.accepted_by_prompt
    assert emu.stats.creates_accepted == 45 and all(n == 1 for n in accepted.values())
    assert {p for p in accepted if "teal" in p} == {
        f"Studio photo of product SKU-{i:05d} in teal" for i in range(10, 15)
    }


async def test_ten_thousand_rows_edited_in_fifty_estimate_and_pay_for_fifty(
    open_store: OpenStore, tmp_path: Path
) -> None:
    store = await open_store()
    path = write_catalog(tmp_path, 10_000)
    await session.import_manifest(store, load_manifest(path), None)
    # the first run's outputs, as a finished run leaves them (one real file stands for all of them)
    image = tmp_path / "one.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    done = dict(status="succeeded", output_path=str(image), sha256=sha(image), bytes=108, cost_micros=50_000)
    async with store.engine.begin() as conn:
        await conn.execute(update(tasks).values(**done))
    edited = range(5_000, 5_050)
    write_catalog(tmp_path, 10_000, edited)
    db = str(tmp_path / "batcher.db")
    est = await session.dry_run(str(path), db, None)
    assert (est.tasks, est.done, est.cached, est.to_run, est.cost_usd) == (10_000, 9_950, 0, 50, Decimal("3.35"))
    change = await job_review.compare(None, str(path), db, None, against="catalog")
    assert (change.counts["changed"], change.counts["unchanged"], change.to_pay) == (50, 9_950, 50)
    # the same catalog under another job name: the finished outputs are reused, only the 50 are new
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace("job: catalog", "job: catalog-2"), encoding="utf-8")
    est = await session.dry_run(str(other), db, None)
    assert (est.done, est.cached, est.to_run) == (0, 9_950, 50)
    assert (await session.dry_run(str(other), db, None, use_cache=False)).to_run == 10_000


# --- chains ----------------------------------------------------------------------------------------------


def chain_specs() -> dict[str, TaskSpec]:
    """base → blue → sticker, and base fanned out into three poses."""

    def task(name: str, prompt: str, parent: TaskSpec | None = None, size: str = "1x1") -> TaskSpec:
        images = (from_ref(parent.key),) if parent is not None else ()
        return TaskSpec(MODEL, prompt, "1K", size, f"{name}.png", images=images, name=name, source=f"t:{name}")

    base = task("base", "a white mug")
    blue = task("blue", "make it blue", base)
    out = {"base": base, "blue": blue, "sticker": task("sticker", "add a sticker", blue)}
    for pose in ("sit", "stand", "jump"):
        out[pose] = task(pose, f"the mug, {pose}", base, size="3x4")
    return out


PARENT = {"blue": "base", "sticker": "blue", "sit": "base", "stand": "base", "jump": "base"}


async def test_a_chain_and_a_fan_out_run_in_dependency_order_with_the_parent_image(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST)
    chain = chain_specs()
    # listed children first: the order of creates comes from the chain, not from the manifest
    await load(store, [chain[n] for n in ("sticker", "jump", "blue", "sit", "base", "stand")], tmp_path / "out")
    assert (await drive(store, emu)).reason == StopReason.DONE
    rows = {str(r["name"]): r for r in (await rows_of(store, "job")).values()}
    assert all(r["status"] == "succeeded" for r in rows.values())
    assert emu.stats.creates_accepted == 6
    for child, parent in PARENT.items():
        assert float(str(rows[child]["submitted_at"])) >= float(str(rows[parent]["finished_at"]))
        request = emu.state.book.tasks[str(rows[child]["remote_task_id"])].request
        (sent,) = request.images
        assert sent.startswith("data:image/png;base64,")
        assert base64.b64decode(sent.partition(",")[2]) == Path(str(rows[parent]["output_path"])).read_bytes()
    assert emu.state.book.tasks[str(rows["base"]["remote_task_id"])].request.images == ()


async def test_a_failed_step_stops_only_its_descendants(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST)
    chain = chain_specs()
    bad = replace(chain["blue"], size="7x7")  # the API refuses it (HTTP 400): it fails for good
    sticker = replace(chain["sticker"], images=(from_ref(bad.key),))
    last = TaskSpec(MODEL, "and a bow", "1K", "1x1", "bow.png", images=(from_ref(sticker.key),), name="bow")
    await load(store, [chain["base"], bad, sticker, last, chain["sit"], chain["stand"]], tmp_path / "out")
    assert (await drive(store, emu)).reason == StopReason.DONE
    rows = {str(r["name"]): r for r in (await rows_of(store, "job")).values()}
    status = {n: r["status"] for n, r in rows.items()}
    assert status == {"base": "succeeded", "blue": "failed", "sticker": "failed", "bow": "failed",
                      "sit": "succeeded", "stand": "succeeded"}  # fmt: skip
    assert "7x7" in str(rows["blue"]["last_error"])
    assert str(rows["sticker"]["last_error"]).startswith("input task 'blue' failed")
    assert str(rows["bow"]["last_error"]).startswith("input task 'sticker' failed")
    assert rows["sticker"]["attempts"] == rows["bow"]["attempts"] == 0
    assert emu.stats.creates_accepted == 3  # base and the two poses: nothing downstream of the failure


async def test_a_stopped_chain_resumes_where_it_stopped(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=Latency("uniform", 0.2, 0.4))
    await load(store, list(chain_specs().values()), tmp_path / "out")
    runners: list[Runner] = []
    run = asyncio.create_task(drive(store, emu, runner_out=runners))

    async def stop_after_base() -> None:
        while (await rows_of(store, "job"))["a white mug"]["status"] != "succeeded":
            await asyncio.sleep(0.05)
        runners[0].request_stop()

    await asyncio.wait_for(stop_after_base(), 30)
    assert (await run).reason == StopReason.INTERRUPTED
    middle = {r["name"]: r["status"] for r in (await rows_of(store, "job")).values()}
    assert middle["base"] == "succeeded" and middle["sticker"] == "pending"
    assert (await drive(store, emu)).reason == StopReason.DONE
    assert all(r["status"] == "succeeded" for r in (await rows_of(store, "job")).values())
    assert emu.stats.creates_accepted == 6 and all(n == 1 for n in emu.stats.accepted_by_prompt.values())


async def test_a_task_whose_input_task_is_missing_fails_and_the_run_ends(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    emu = await start_emu(latency=FAST)
    orphan = TaskSpec(MODEL, "make it blue", "1K", "1x1", "o.png", images=(from_ref("0" * 32),), name="orphan")
    await load(store, [orphan, *specs(1)], tmp_path / "out")
    assert (await drive(store, emu)).reason == StopReason.DONE
    rows = await rows_of(store, "job")
    assert rows["make it blue"]["status"] == "failed" and rows["prompt 0"]["status"] == "succeeded"
    assert rows["make it blue"]["last_error"] == "its input task is not in the job"
    assert emu.stats.creates_accepted == 1
