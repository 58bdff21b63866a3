"""A run's settings: the command line over the manifest (as its last import stored them) over the defaults."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.config import ApiSettings, RunConfig
from batcher.providers.linkmodel_api import ApiClient
from batcher.ratelimit import RateGate
from batcher.session import RunOptions, run_config
from batcher.store.base import Job


def job(**settings: Any) -> Job:
    return Job(1, "j", "m.yaml", "out", None, None, settings, 1)


@pytest.mark.parametrize(
    ("manifest", "command_line", "expected"),
    [
        ({}, None, ApiSettings.max_connections),
        ({"max_connections": 8}, None, 8),
        ({"max_connections": 8}, 3, 3),
        ({"max_connections": None}, 5, 5),
    ],
)
async def test_the_connection_cap_reaches_the_http_pool(
    manifest: dict[str, Any], command_line: int | None, expected: int
) -> None:
    config = run_config(RunOptions("m.yaml", "b.db", max_connections=command_line), job(**manifest), ApiSettings())
    assert config.api.max_connections == expected
    async with ApiClient(config.api, "key", RateGate(None)) as client:
        assert client.session.connector is not None and client.session.connector.limit == expected


def test_the_other_settings_keep_their_precedence() -> None:
    stored = job(requests_per_second=5.0, max_in_flight=12, max_attempts=4)
    config = run_config(RunOptions("m.yaml", "b.db", rate=2.0), stored, ApiSettings())
    assert (config.requests_per_second, config.max_in_flight, config.retry.max_attempts) == (2.0, 12, 4)
    assert run_config(RunOptions("m.yaml", "b.db"), job(), ApiSettings()).max_in_flight == RunConfig.max_in_flight
