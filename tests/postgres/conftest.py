"""A fresh PostgreSQL database per test on the server named by BATCHER_TEST_PG_URL.

Outside CI the tests skip with one line when no server is configured; under CI=true they fail instead, so a
missing server can never pass for a green run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.postgres


def admin_url() -> str:
    url = os.environ.get("BATCHER_TEST_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("BATCHER_TEST_PG_URL is not set: .ci/run must start PostgreSQL and export it")
        pytest.skip(
            "no PostgreSQL server configured (set BATCHER_TEST_PG_URL, e.g. postgresql://postgres@127.0.0.1/test)"
        )
    return url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    admin = admin_url()
    name = f"batcher_t_{uuid.uuid4().hex[:12]}"
    plain = admin.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = make_url(plain).set(database=name).render_as_string(hide_password=False)
    yield url
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
