"""Chaos: the real CLI killed with SIGKILL at random moments against an emulator with small fault rates, until
the job is done; then each guarantee of docs/guarantees.md is checked and the figures printed.

`--route online` (the default): `batcher run` on the LinkModel emulator, restarted after each interruption
(the checks and the driver live in tests/acceptance/chaos_kit.py; CI size: tests/acceptance/test_chaos.py).
`--route batch`: two or three `batcher work` processes on one store (SQLite, or PostgreSQL with --pg), killed with
SIGKILL and crossed by `batcher cancel` at random moments, against the Gemini emulator playing what Google's
Batch Mode does (tests/acceptance/batch_chaos_kit.py; CI size: tests/acceptance/test_batch_chaos.py). Money is
checked against the emulator's own billing, per key, per batch and in total.

The emulator runs as a process of its own, so it outlives every kill and its counters are the independent
account. Exits non-zero if any check fails.

    .venv/bin/python bench/chaos.py                        # 500 tasks, 20 kills, latency 0.3-2 s
    .venv/bin/python bench/chaos.py --tasks 60 --kills 6 --signal INT --signal TERM
    .venv/bin/python bench/chaos.py --route batch          # 300 tasks, 3 workers, 8 kills, 3 cancels, SQLite
    .venv/bin/python bench/chaos.py --route batch --pg postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.acceptance.batch_chaos_kit import DEFAULT_BATCH_FAULTS, BatchPlan, FreshDatabase, run_batch_chaos  # noqa: E402
from tests.acceptance.chaos_kit import DEFAULT_FAULTS, Plan, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", choices=("online", "batch"), default="online")
    parser.add_argument("--tasks", type=int, default=None, help="default: 500 online, 300 batch")
    parser.add_argument("--kills", type=int, default=None, help="interruptions (default: 20 online, 8 batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the store, files and logs here")
    online = parser.add_argument_group("online route")
    online.add_argument("--latency", nargs=2, type=float, default=(0.3, 2.0), metavar=("LO", "HI"),
                        help="uniform generation time, seconds")  # fmt: skip
    online.add_argument("--signal", dest="signals", action="append", choices=("KILL", "INT", "TERM"),
                        help="signal(s) to interrupt with, one picked at random each time (default KILL)")  # fmt: skip
    online.add_argument("--max-in-flight", type=int, default=None)
    for knob, rate in DEFAULT_FAULTS.items():
        online.add_argument("--" + knob.replace("_", "-"), type=float, default=rate, metavar="P")
    batch = parser.add_argument_group("batch route (Gemini emulator knobs are passed as they are)")
    batch.add_argument("--workers", type=int, default=3, help="`batcher work` processes on the one store")
    batch.add_argument("--cancels", type=int, default=3, help="`batcher cancel` runs at random moments")
    batch.add_argument("--shard", type=int, default=10, help="requests per batch")
    batch.add_argument("--batch-latency", nargs=2, type=float, default=(2.0, 10.0), metavar=("LO", "HI"),
                       help="uniform time from a batch's create to its end, seconds")  # fmt: skip
    batch.add_argument("--file-ttl-s", type=float, default=120.0, help="files are deleted this long after made")
    batch.add_argument("--create-grace-s", type=float, default=15.0, help="the manifest's batch.create_grace_s")
    batch.add_argument("--horizon-s", type=float, default=60.0, help="kills and cancels land within this")
    batch.add_argument("--timeout-s", type=float, default=600.0, help="the workers are stopped after this")
    batch.add_argument("--pg", metavar="URL", default=None,
                       help="a PostgreSQL server: the store is a fresh database on it, dropped after")  # fmt: skip
    for knob, value in DEFAULT_BATCH_FAULTS.items():
        batch.add_argument("--" + knob.replace("_", "-"), default=value, metavar="V")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"batcher-chaos-{args.route}-"))
    if args.route == "batch":
        return batch_route(args, workdir)
    plan = Plan(
        tasks=args.tasks or 500,
        kills=20 if args.kills is None else args.kills,
        seed=args.seed,
        latency=(args.latency[0], args.latency[1]),
        faults={knob: getattr(args, knob) for knob in DEFAULT_FAULTS},
        signals=tuple(signal.Signals["SIG" + s] for s in (args.signals or ["KILL"])),
        max_in_flight=args.max_in_flight,
    )
    figures = run_chaos(plan, workdir, log=print)
    faults = ", ".join(f"{k} {v:g}" for k, v in plan.faults.items())
    print(f"chaos: {plan.tasks} tasks, latency uniform {plan.latency[0]:g}-{plan.latency[1]:g} s, faults: {faults}")
    print(figures.table())
    print(f"store, files and logs: {workdir}")
    return 1 if figures.problems else 0


def batch_route(args: argparse.Namespace, workdir: Path) -> int:
    plan = BatchPlan(
        tasks=args.tasks or 300,
        workers=args.workers,
        kills=8 if args.kills is None else args.kills,
        cancels=args.cancels,
        seed=args.seed,
        shard=args.shard,
        batch_latency=(args.batch_latency[0], args.batch_latency[1]),
        file_ttl_s=args.file_ttl_s,
        create_grace_s=args.create_grace_s,
        faults={knob: str(getattr(args, knob)) for knob in DEFAULT_BATCH_FAULTS},
        horizon_s=args.horizon_s,
        run_timeout_s=args.timeout_s,
    )
    if args.pg:
        with FreshDatabase(args.pg) as database:
            plan = dataclasses.replace(plan, pg_url=database.url)
            figures = run_batch_chaos(plan, workdir, log=print)
    else:
        figures = run_batch_chaos(plan, workdir, log=print)
    faults = ", ".join(f"{k} {v}" for k, v in plan.faults.items())
    lo, hi = plan.batch_latency
    print(f"batch chaos: {plan.tasks} tasks in shards of {plan.shard}, {plan.workers} workers, batch latency uniform "
          f"{lo:g}-{hi:g} s, file ttl {plan.file_ttl_s:g} s, faults: {faults}")  # fmt: skip
    print(figures.table())
    print(f"store, files and logs: {workdir}")
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
