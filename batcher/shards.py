"""Gemini Batch Mode shards, planned without I/O: which pending tasks ride in which batch, its display name, and
how often to ask about it.

A shard is one batch (one JSONL file of request lines). The store commits each shard under its display name
before anything is uploaded, so the name must be unique and the same on every read of the record: a restart
finds the batch again by listing the account's batches by that name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_REQUESTS = 100  # request lines per shard: small enough that one failed batch costs little time
MAX_BYTES = 100_000_000  # request bytes per shard: far below the API's file limit, so an upload stays short
NAME_LIMIT = 128  # submissions.display_name is String(128)

FIRST_CHECK_S = 10.0
LAST_CHECK_S = 300.0
CHECK_GROWTH = 1.5


@dataclass(frozen=True, slots=True)
class ShardPlan:
    task_ids: tuple[int, ...]
    bytes: int  # the request lines' total size
    oversize: bool = False  # a single line larger than max_bytes: alone, so it fails (or passes) on its own

    @property
    def requests(self) -> int:
        return len(self.task_ids)


def plan_shards(
    lines: Iterable[tuple[int, int]], *, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES
) -> list[ShardPlan]:
    """Cut (task id, request line size) pairs, in their order, into shards of at most `max_requests` lines and
    `max_bytes` bytes each. Every task lands in exactly one shard, in order; a line over `max_bytes` is a shard
    of its own, flagged `oversize`, so it never drags the lines around it down with it."""
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("a shard needs room for at least one request and one byte")
    plans: list[ShardPlan] = []
    ids: list[int] = []
    size = 0
    for task_id, line_bytes in lines:
        if line_bytes < 0:
            raise ValueError(f"task {task_id}: a request line cannot be {line_bytes} bytes")
        if line_bytes > max_bytes:
            if ids:
                plans.append(ShardPlan(tuple(ids), size))
                ids, size = [], 0
            plans.append(ShardPlan((task_id,), line_bytes, oversize=True))
            continue
        if ids and (len(ids) >= max_requests or size + line_bytes > max_bytes):
            plans.append(ShardPlan(tuple(ids), size))
            ids, size = [], 0
        ids.append(task_id)
        size += line_bytes
    if ids:
        plans.append(ShardPlan(tuple(ids), size))
    return plans


_UNSAFE = re.compile(r"[^a-z0-9]+")


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text.lower()).strip("-")


def display_name(job_name: str, job_id: int, seq: int, nonce: str) -> str:
    """`batcher-<job>-<job id>-s<seq>-<nonce>`: lower-case letters, digits and hyphens only, at most 128 chars.

    Unique by the job's id, the shard's sequence number and the nonce (the job's name is only there for people
    reading the account's batch list, so it is the part cut short); the same arguments give the same name."""
    if job_id < 0 or seq < 0:
        raise ValueError("a job id and a shard sequence number are never negative")
    tail = f"-{job_id}-s{seq}-{_slug(nonce) or 'x'}"
    head = "batcher"
    if len(head) + len(tail) > NAME_LIMIT:
        raise ValueError(f"nonce {nonce!r} leaves no room in a {NAME_LIMIT}-character display name")
    job = _slug(job_name)[: NAME_LIMIT - len(head) - len(tail) - 1].strip("-")
    return f"{head}-{job}{tail}" if job else f"{head}{tail}"


def next_check_in(age_s: float, checks: int) -> float:
    """Seconds until a batch is asked about again: every 10 s at first, 1.5 times longer after each check, up
    to every 5 minutes. Never longer than the batch's age (at least 10 s), so a batch that a restart finds young
    is not left waiting longer than it has existed; never below 10 s, whatever the arguments."""
    grown = FIRST_CHECK_S * CHECK_GROWTH ** min(max(checks, 0), 64)  # the cap keeps the power finite
    return max(FIRST_CHECK_S, min(grown, LAST_CHECK_S, max(age_s, FIRST_CHECK_S)))


def batch_saving_micros(billed_lines: int, online_price_micros: int, batch_spent_micros: int) -> int:
    """What the batch route saved: its billed lines at the online price, less what they cost through batches.
    In report terms, since the store keeps what was paid, not what the online route would have cost."""
    return billed_lines * online_price_micros - batch_spent_micros
