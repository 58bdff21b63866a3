"""Generation latency: parsing, seeded draws, and the moment a task turns final."""

from __future__ import annotations

import random
import statistics

import pytest

from batcher.emulator import Latency

from .emu_helpers import MakeApi


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fixed:0.2", Latency("fixed", 0.2)),
        ("0.5", Latency("fixed", 0.5)),
        ("uniform:0.5:2", Latency("uniform", 0.5, 2.0)),
        ("lognormal:1.5:0.4", Latency("lognormal", 1.5, 0.4)),
    ],
)
def test_parse(spec: str, expected: Latency) -> None:
    assert Latency.parse(spec) == expected
    assert Latency.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "spec", ["", "gamma:1:2", "fixed", "fixed:1:2", "uniform:1", "uniform:2:1", "fixed:-1", "lognormal:0:1", "fixed:x"]
)
def test_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        Latency.parse(spec)


def test_draws_stay_in_range_and_reproduce() -> None:
    uniform = Latency("uniform", 0.5, 2.0)
    draws = [uniform.sample(random.Random(3)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    rng = random.Random(11)
    many = [uniform.sample(rng) for _ in range(2000)]
    assert min(many) >= 0.5 and max(many) <= 2.0
    lognormal = Latency("lognormal", 1.5, 0.4)
    rng = random.Random(11)
    assert abs(statistics.median(lognormal.sample(rng) for _ in range(4000)) - 1.5) < 0.1
    assert Latency("fixed", 0.7).sample(rng) == 0.7


async def test_task_turns_final_once_its_latency_has_passed(make_api: MakeApi) -> None:
    api = await make_api(latency="uniform:20:30", seed=5)
    task_ids = [(await api.create(prompt=f"p{i}")).data["task_id"] for i in range(5)]
    assert {(await api.query(t)).data["status"] for t in task_ids} == {"Processing"}
    api.emu.advance(31)  # the emulator's clock, moved by the test
    assert {(await api.query(t)).data["status"] for t in task_ids} == {"Success"}


async def test_latency_knob_changes_at_run_time(make_api: MakeApi) -> None:
    api = await make_api()
    api.emu.configure(latency="fixed:30")
    task_id = (await api.create()).data["task_id"]
    assert (await api.query(task_id)).data["status"] == "Processing"
    assert api.emu.stats.successes == 0
