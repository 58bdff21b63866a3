"""The chaos run of bench/chaos.py at CI size: the real CLI interrupted at random moments against an emulator
in a process of its own, restarted until done, then every guarantee checked (see chaos_kit's docstring)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.acceptance.chaos_kit import Plan, run_chaos

pytestmark = pytest.mark.slow

CI_LATENCY = (0.1, 0.6)  # seconds; the full run uses 0.3-2 s


def test_sigkill_at_random_moments_loses_nothing_and_pays_nothing_twice(tmp_path: Path) -> None:
    plan = Plan(tasks=60, kills=6, seed=1, latency=CI_LATENCY)
    figures = run_chaos(plan, tmp_path)
    assert not figures.problems, figures.table()
    assert figures.kills == 6 and figures.signals == {"SIGKILL": 6}, figures.table()
    assert figures.files_verified == figures.succeeded == 60 - figures.unusable, figures.table()


def test_sigint_and_sigterm_at_random_moments_exit_130_then_resume(tmp_path: Path) -> None:
    # fewer tasks in flight, so each run lasts long enough to be interrupted while it works; seed 7 spreads the
    # moments over the job (2.6 to 23.4 files of 40): seed 2 put three of them in its last tenth, where a run
    # on a loaded machine could finish inside the jitter before its signal, leaving fewer than three
    plan = Plan(tasks=40, kills=5, seed=7, latency=CI_LATENCY, signals=(signal.SIGINT, signal.SIGTERM),
                max_in_flight=8, jitter_s=0.3)  # fmt: skip
    figures = run_chaos(plan, tmp_path)
    assert not figures.problems, figures.table()  # includes: every interrupted run exited 130, left no .part
    assert figures.kills >= 3 and set(figures.signals) <= {"SIGINT", "SIGTERM"}, figures.table()
    assert figures.exit_codes.get("130", 0) >= 3, figures.table()
    assert figures.files_verified == figures.succeeded == 40 - figures.unusable, figures.table()
