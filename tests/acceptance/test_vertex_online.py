"""The real CLI through Vertex AI online (`--provider vertex`), against the Vertex emulator over loopback HTTP with
google-auth's real service-account flow (a key file whose token_uri is the emulator). Money is checked against
what the emulator billed, never the ledger alone."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from batcher.emulator import Latency
from batcher.emulator.vertex.server import DEFAULT_ACCOUNT, VertexEmulator
from batcher.emulator.vertex.tokens import new_key_file
from tests.acceptance.cli_kit import batcher, cli_env, finish, manifest, start
from tests.acceptance.test_money_truth import until
from tests.conftest import StartVertex

FAST = Latency("uniform", 0.05, 0.15)
PRICE = 0.067
GOOGLE_VARS = ("GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_VERTEX_BASE_URL",
               "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_API_KEY", "GEMINI_API_KEY")  # fmt: skip


def vertex_env(emu: VertexEmulator, tmp: Path, *, key_file: Path | None = None, **extra: str) -> dict[str, str]:
    """The CLI's environment: the emulator's host, its project and a key file it issued (unless `extra` says
    otherwise). NO_GCE_CHECK and the closed metadata port come from the suite's environment."""
    env = {k: v for k, v in cli_env(None).items() if k not in GOOGLE_VARS}
    env["GOOGLE_VERTEX_BASE_URL"] = emu.origin
    env["GOOGLE_CLOUD_PROJECT"] = emu.project
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file or emu.write_key_file(tmp / "service-account.json"))
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}  # "": leave the variable out


async def run(m: Path, db: Path, env: dict[str, str], cwd: Path, *more: str) -> Any:
    return await batcher("run", str(m), "--db", str(db), "--provider", "vertex", "-q", "--json", *more, env=env,
                         cwd=cwd)  # fmt: skip


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM tasks ORDER BY seq")]


def cost(n: int) -> str:
    return str(round(n * PRICE, 6)).rstrip("0").rstrip(".")


def nothing_sent(emu: VertexEmulator) -> None:
    stats = emu.stats
    assert stats.images_billed == 0 and stats.count("generate") == 0, stats


async def test_a_catalog_with_a_chain_and_a_refusal_while_tokens_expire(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(latency=Latency("fixed", 0.15), token_lifetime_s=600)
    refused = "a poster the model refuses"
    assert emu.state.refusal(refused, 1.0, 0.0) is not None  # this prompt stays refused, as the service does
    doc: dict[str, Any] = {
        "job": "catalog",
        "output": {"dir": str(tmp_path / "out"), "filename": "{slug}.png"},
        "tasks": [
            {"name": "base", "prompt": "a white mug", "slug": "base"},
            {"name": "blue", "from": "base", "prompt": "make it blue", "slug": "blue"},
            {"name": "sticker", "from": "blue", "prompt": "add a sticker", "slug": "sticker"},
            {"prompt": refused, "slug": "refused"},
            *({"prompt": f"Catalog photo number {i}", "slug": f"photo-{i}"} for i in range(8)),
        ],
    }
    m = tmp_path / "catalog.yaml"
    m.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    env = vertex_env(emu, tmp_path)
    proc = await start("run", str(m), "--db", str(tmp_path / "b.db"), "--provider", "vertex", "-q", "--json",
                       "--max-in-flight", "2", env=env, cwd=tmp_path)  # fmt: skip
    await until(lambda: emu.stats.images_billed >= 3 or proc.returncode is not None, "three images billed")
    emu.advance(601)  # every token issued so far expires mid-run, as by the service's own clock
    done = await finish(proc)
    assert done.code == 1, done.err  # one task refused: failed, the rest done
    head = json.loads(done.out)
    stats = emu.stats
    assert stats.expired_tokens >= 1 and stats.tokens_issued >= 2, stats  # a 401, then a fresh token ...
    assert stats.unauthenticated == stats.expired_tokens  # ... and only expired tokens were ever refused
    assert head["succeeded"] == 11 and head["failed"] == head["blocked"] == stats.refusals == 1, head
    assert head["billed_calls"] == stats.images_billed == 11 and head["unknown_submissions"] == 0
    assert head["cost_usd"] == cost(11) and head["api_calls"] == {"create": 12}, head  # a 401 resend is one call
    assert stats.billed_by_project == {emu.project_number: 11}
    by_slug = {Path(r["output_path"]).stem: r for r in rows(tmp_path / "b.db") if r["output_path"]}
    assert {"base", "blue", "sticker"} <= set(by_slug) and all(r["provider"] == "vertex" for r in by_slug.values())
    assert stats.billed_by_prompt == {p: 1 for p in stats.billed_by_prompt} and refused not in stats.billed_by_prompt


async def test_dynamic_shared_quota_429s_with_no_rate_configured_are_waited_out(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(latency=FAST, dsq_429_rate=0.25, seed=7)
    m = manifest(tmp_path / "dsq.yaml", 16)
    done = await run(m, tmp_path / "b.db", vertex_env(emu, tmp_path), tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    stats = emu.stats
    assert stats.dsq_429s > 0 and head["rate_limited_429"] == stats.dsq_429s, (head, stats)
    assert head["succeeded"] == 16 and head["billed_calls"] == stats.images_billed == 16
    assert head["cost_usd"] == cost(16) and all(r["attempts"] == 1 for r in rows(tmp_path / "b.db"))  # refunded
    assert "quota" not in done.err.lower()  # no per-day quota to wait for: the run went on


async def test_express_mode_sends_the_api_key_with_no_project(start_vertex: StartVertex, tmp_path: Path) -> None:
    emu = await start_vertex(latency=FAST)
    m = manifest(tmp_path / "express.yaml", 4)
    env = vertex_env(emu, tmp_path, GOOGLE_CLOUD_PROJECT="", GOOGLE_APPLICATION_CREDENTIALS="",
                     GOOGLE_API_KEY=emu.api_key)  # fmt: skip
    done = await run(m, tmp_path / "b.db", env, tmp_path)
    assert done.code == 0, done.err
    head = json.loads(done.out)
    stats = emu.stats
    assert head["billed_calls"] == stats.images_billed == stats.express_requests == 4
    assert stats.billed_by_project == {"express": 4} and stats.tokens_issued == 0
    # a wrong key: exit 2 naming the key's variable, nothing billed, the key nowhere
    env["GOOGLE_API_KEY"] = "AIza-wrong-express-key"
    bad = await run(manifest(tmp_path / "bad.yaml", 2), tmp_path / "c.db", env, tmp_path)
    assert bad.code == 2 and "GOOGLE_API_KEY" in bad.err and "AIza-wrong" not in bad.err + bad.out, bad.err
    assert emu.stats.images_billed == 4


@pytest.mark.parametrize("fault", ["missing", "not json", "refused"])
async def test_credentials_that_cannot_work_exit_2_before_anything_is_billed(
    start_vertex: StartVertex, tmp_path: Path, fault: str
) -> None:
    emu = await start_vertex(latency=FAST)
    key = tmp_path / "key.json"
    if fault == "not json":
        key.write_text("this is not a key file\n")
    elif fault == "refused":  # a well-formed key the token endpoint does not know
        info, _ = new_key_file("stranger@elsewhere.iam.gserviceaccount.com", emu.token_uri, emu.project)
        key.write_text(json.dumps(info))
    done = await run(manifest(tmp_path / "creds.yaml", 3), tmp_path / "b.db", vertex_env(emu, tmp_path, key_file=key),
                     tmp_path)  # fmt: skip
    assert done.code == 2, (done.out, done.err)
    line = done.err.strip()
    assert len(line.splitlines()) == 1 and "GOOGLE_APPLICATION_CREDENTIALS" in line, line
    assert "Traceback" not in line and "PRIVATE KEY" not in line
    nothing_sent(emu)
    assert emu.stats.tokens_refused == (1 if fault == "refused" else 0)


async def test_a_project_refused_with_403_stops_the_run_with_one_line(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(latency=FAST)
    env = vertex_env(emu, tmp_path, GOOGLE_CLOUD_PROJECT="someone-elses-project")
    done = await run(manifest(tmp_path / "denied.yaml", 5), tmp_path / "b.db", env, tmp_path)
    assert done.code == 2, (done.out, done.err)
    line = done.err.strip()
    assert len(line.splitlines()) == 1 and "PERMISSION_DENIED" in line, line
    assert "someone-elses-project" in line and DEFAULT_ACCOUNT in line and "GOOGLE_APPLICATION_CREDENTIALS" in line
    assert "ya29." not in line  # the token never shows
    stats = emu.stats
    assert stats.permission_denied >= 1 and stats.images_billed == 0
    assert all(r["status"] == "pending" and r["cost_micros"] == 0 for r in rows(tmp_path / "b.db"))


async def test_emulate_runs_the_whole_google_auth_flow_in_process(tmp_path: Path) -> None:
    m = manifest(tmp_path / "rehearsal.yaml", 3)
    env = {k: v for k, v in cli_env(None).items() if k not in GOOGLE_VARS}
    done = await run(m, tmp_path / "b.db", env, tmp_path, "--emulate")
    assert done.code == 0, done.err
    head = json.loads(done.out)
    assert head["succeeded"] == head["billed_calls"] == 3 and head["cost_usd"] == cost(3)
    assert await asyncio.to_thread(lambda: all(Path(r["output_path"]).is_file() for r in rows(tmp_path / "b.db")))
