"""Schema migrations: Alembic, configured in code, with its scripts shipped inside the package."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config whose scripts are `batcher.migrations` (the repo's top-level migrations/)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("batcher.migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(conn: AsyncConnection) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already)."""
    if await conn.run_sync(_current) == head_revision():
        return
    await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
