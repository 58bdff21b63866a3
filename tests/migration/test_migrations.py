"""The Alembic migrations produce exactly the schema declared in batcher/tables.py, and go down and up again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from batcher.store.database import create_engine, database_url
from batcher.store.migrate import alembic_config, head_revision, newest_script, upgrade
from batcher.store.tables import metadata, task_counts


def _diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(ctx, metadata))


async def test_upgrade_produces_the_declared_schema(tmp_path: Path) -> None:
    engine = create_engine(database_url(str(tmp_path / "m.db")))
    try:
        async with engine.begin() as conn:
            await upgrade(conn)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"jobs", "tasks", "api_calls", "workers", "alembic_version"} <= tables
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_up_again(tmp_path: Path) -> None:
    engine = create_engine(database_url(str(tmp_path / "m.db")))
    try:
        async with engine.begin() as conn:
            await upgrade(conn)
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
            assert await conn.run_sync(lambda c: inspect(c).get_table_names()) == ["alembic_version"]
            await upgrade(conn)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        assert current == head_revision()
    finally:
        await engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    # `batcher db upgrade` after a plain pip install needs the scripts importable from the package
    import batcher.migrations

    scripts = Path(batcher.migrations.__file__).parent
    assert (scripts / "env.py").is_file()
    assert any(p.name.startswith("0001") for p in (scripts / "versions").iterdir())


def test_the_newest_script_by_name_is_alembics_head() -> None:
    # opening a store compares revisions without loading Alembic: the file names must follow the revisions
    assert newest_script() == head_revision()


async def test_upgrading_a_populated_store_counts_what_it_holds(tmp_path: Path) -> None:
    engine = create_engine(database_url(str(tmp_path / "m.db")))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0003"))
            await conn.exec_driver_sql(
                "INSERT INTO jobs (id, name, manifest, output_dir, settings, import_gen, created_at, updated_at) "
                "VALUES (1, 'j', 'm', 'out', '{}', 2, 0, 0)"
            )
            for i, (status, gen) in enumerate([("pending", 2), ("pending", 1), ("pending", 1), ("succeeded", 1)]):
                await conn.exec_driver_sql(
                    "INSERT INTO tasks (job_id, key, seq, import_gen, source, model, prompt, quality, size, filename, "
                    f"status, updated_at) VALUES (1, 'k{i}', {i}, {gen}, 's', 'm', 'p', '1K', '1x1', 'f', "
                    f"'{status}', 0)"
                )
            await upgrade(conn)
            counts = await _counts(conn)
            retired = (await conn.exec_driver_sql("SELECT retired FROM jobs")).scalar_one()
            # and from now on the trigger keeps the counts in step
            await conn.exec_driver_sql("UPDATE tasks SET status = 'submitting' WHERE key = 'k0'")
            after = await _counts(conn)
        assert counts == {"pending": 3, "succeeded": 1} and retired == 2
        assert after == {"pending": 2, "submitting": 1, "succeeded": 1}
    finally:
        await engine.dispose()


async def _counts(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(select(task_counts.c.status, task_counts.c.n).where(task_counts.c.n > 0))
    return {status: n for status, n in rows}


async def test_tasks_sent_before_providers_were_recorded_belong_to_linkmodel(tmp_path: Path) -> None:
    engine = create_engine(database_url(str(tmp_path / "m.db")))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0005"))
            await conn.exec_driver_sql(
                "INSERT INTO jobs (id, name, manifest, output_dir, settings, import_gen, created_at, updated_at) "
                "VALUES (1, 'j', 'm', 'out', '{}', 1, 0, 0)"
            )
            for i, (status, remote) in enumerate([("pending", "NULL"), ("submitted", "'r1'"), ("unknown", "NULL"),
                                                  ("pending", "'r2'")]):  # fmt: skip
                await conn.exec_driver_sql(
                    "INSERT INTO tasks (job_id, key, seq, import_gen, source, model, prompt, quality, size, filename, "
                    f"status, remote_task_id, updated_at) VALUES (1, 'k{i}', {i}, 1, 's', 'm', 'p', '1K', '1x1', 'f', "
                    f"'{status}', {remote}, 0)"
                )
            await upgrade(conn)
            got = (await conn.exec_driver_sql("SELECT key, provider FROM tasks ORDER BY seq")).all()
        assert [tuple(r) for r in got] == [("k0", None), ("k1", "linkmodel"), ("k2", "linkmodel"), ("k3", "linkmodel")]
    finally:
        await engine.dispose()
