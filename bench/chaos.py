"""Chaos: `batcher run` killed with SIGKILL at random moments against an emulator with small fault rates,
restarted each time until the job is done; then each guarantee of docs/guarantees.md is checked and the figures printed.

The emulator runs as a process of its own (`python -m batcher.emulator --port 0`), so it outlives every kill and
its counters are the independent account. Kills land at moments drawn uniformly over the job's progress. Exits
non-zero if any check fails. The checks and the driver live in tests/acceptance/chaos_kit.py, which the CI test
(tests/acceptance/test_chaos.py) runs at a smaller size.

    .venv/bin/python bench/chaos.py                        # 500 tasks, 20 kills, latency 0.3-2 s
    .venv/bin/python bench/chaos.py --tasks 60 --kills 6 --signal INT --signal TERM
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.acceptance.chaos_kit import DEFAULT_FAULTS, Plan, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--kills", type=int, default=20, help="interruptions of a running CLI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", nargs=2, type=float, default=(0.3, 2.0), metavar=("LO", "HI"),
                        help="uniform generation time, seconds")  # fmt: skip
    parser.add_argument("--signal", dest="signals", action="append", choices=("KILL", "INT", "TERM"),
                        help="signal(s) to interrupt with, one picked at random each time (default KILL)")  # fmt: skip
    parser.add_argument("--max-in-flight", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the store, files and logs here")
    for knob, rate in DEFAULT_FAULTS.items():
        parser.add_argument("--" + knob.replace("_", "-"), type=float, default=rate, metavar="P")
    args = parser.parse_args()
    plan = Plan(
        tasks=args.tasks,
        kills=args.kills,
        seed=args.seed,
        latency=(args.latency[0], args.latency[1]),
        faults={knob: getattr(args, knob) for knob in DEFAULT_FAULTS},
        signals=tuple(signal.Signals["SIG" + s] for s in (args.signals or ["KILL"])),
        max_in_flight=args.max_in_flight,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="batcher-chaos-"))
    figures = run_chaos(plan, workdir, log=print)
    faults = ", ".join(f"{k} {v:g}" for k, v in plan.faults.items())
    print(f"chaos: {plan.tasks} tasks, latency uniform {plan.latency[0]:g}-{plan.latency[1]:g} s, faults: {faults}")
    print(figures.table())
    print(f"store, files and logs: {workdir}")
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
