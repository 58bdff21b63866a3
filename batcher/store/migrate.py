"""Schema migrations: Alembic, configured in code, with its scripts shipped inside the package.

Alembic loads only when the schema has to change: opening an up-to-date store compares the stored revision with
the newest script's file name (`NNNN_*.py`, a convention tests/migration holds the scripts to).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config whose scripts are `batcher.migrations` (the repo's top-level migrations/)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("batcher.migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest revision, as Alembic reads the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def newest_script() -> str:
    """The newest revision by file name, without loading Alembic."""
    versions = resources.files("batcher.migrations") / "versions"
    return max(p.name.split("_", 1)[0] for p in versions.iterdir() if p.name[:4].isdigit())


def _current(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


async def upgrade(conn: AsyncConnection) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already)."""
    if await conn.run_sync(_current) == newest_script():
        return
    from alembic import command

    await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
