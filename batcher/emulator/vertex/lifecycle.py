"""Batch jobs over time: drawing a job's fate at create, reading its input when it starts, exporting its finished
rows to Cloud Storage as it runs (and billing each image row then), and recording how it ended."""

from __future__ import annotations

import json
from typing import Any

from batcher.emulator.gemini.files import rfc3339
from batcher.emulator.gemini.reply import image_reply, refused_reply
from batcher.emulator.gemini.request import BadRequest, parse_generate
from batcher.emulator.vertex.jobs import NEVER, PARTIAL_SHARE, PENDING_SHARE, TERMINAL, Job, Row
from batcher.emulator.vertex.state import VertexState
from batcher.emulator.vertex.stats import VertexStats
from batcher.emulator.vertex.storage import split_gs

OUTPUT_MIME = "application/jsonl"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def create_job(
    state: VertexState,
    project_number: str,
    location: str,
    display_name: str,
    model: str,
    echo: dict[str, Any],
    input_uris: list[str],
    output_prefix: str,
    now: float,
) -> Job:
    """A new job (never deduplicated), its timeline and fate drawn now."""
    config = state.config
    duration = config.batch_latency.sample(state.rng)
    pending_at = now + config.batch_queued_s
    job = Job(
        job_id=state.next_id(),
        project_number=project_number,
        location=location,
        display_name=display_name,
        model=model,
        echo=echo,
        input_uris=input_uris,
        output_prefix=output_prefix.rstrip("/"),
        created_at=now,
        pending_at=pending_at,
        running_at=pending_at + PENDING_SHARE * duration,
        finishes_at=pending_at + duration,
        expires_at=now + config.batch_expiry_s,
        fails=state.roll(config.batch_fail_rate),
        partial=state.roll(config.batch_partial_rate),
        cancel_s=config.batch_cancel_s,
    )
    state.jobs[job.job_id] = job
    state.stats.created_job(display_name)
    return job


def settle(state: VertexState, now: float) -> VertexStats:
    """Move every unfinished job on to `now`: start it, export its finished rows, end it; the counters."""
    for job in state.jobs.values():
        if job.ended is None:
            _settle_job(state, job, now)
    return state.stats


def cancel(state: VertexState, job: Job, now: float) -> None:
    """Stop a job: rows finished by now are exported (and billed); the rest never run."""
    _settle_job(state, job, now)
    job.cancelled_at = now
    job.cancel_s = state.config.batch_cancel_s
    _settle_job(state, job, now)


def _settle_job(state: VertexState, job: Job, now: float) -> None:
    started = job.cancelled_at is None or job.cancelled_at > job.running_at
    if job.rows is None and job.error is None and started and now >= job.running_at and not job.expires():
        _start(state, job)
    if job.rows is not None:
        _export(state, job, min(now, job.work_ends()))
    ended = job.state(now)
    if ended in TERMINAL:
        job.ended = ended
        state.stats.ended_job(ended)


def _start(state: VertexState, job: Job) -> None:
    """Read the input (it must still be there), draw each row's outcome and when it finishes."""
    config = state.config
    data: list[bytes] = []
    for uri in job.input_uris:
        bucket, name = split_gs(uri)
        stored = state.store.get(bucket, name)
        if stored is None:
            job.error = f"Failed to read the input {uri}: the object does not exist or is not readable."
            return
        data.append(stored.data)
    rows = _rows(b"\n".join(data), job.model, config.max_image_bytes, config.max_input_images)
    for row in rows:
        if row.fate == "failed":
            continue
        if state.roll(config.batch_line_fail_rate):
            row.fate = "failed"
            row.status = _status("Internal Server Error", 500, "Internal error encountered.", "INTERNAL")
        elif state.roll(config.batch_line_refusal_rate):
            row.fate = "refused"
    order = list(range(len(rows)))
    state.rng.shuffle(order)  # rows finish, and are written, in no particular order
    run_s = job.finishes_at - job.running_at
    ran = len(order) if not job.partial else int(len(order) * PARTIAL_SHARE)
    for position, index in enumerate(order):
        row = rows[index]
        row.file_index = position % config.batch_output_files
        row.done_at = job.running_at + run_s * (position + 1) / len(order) if position < ran else NEVER
    job.rows = rows
    job.output_files = config.batch_output_files
    wall = state.wall(job.running_at)
    job.output_dir = f"{job.output_prefix}/prediction-model-{rfc3339(wall)}/"


def _rows(data: bytes, model: str, max_image_bytes: int, max_images: int) -> list[Row]:
    rows: list[Row] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        fields: dict[str, Any] = {}
        key = f"line-{number}"
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise BadRequest("a line must be a JSON object with a request")
            fields = record
            key = _key(record, key)
            if "request" not in record:
                raise BadRequest("the line has no request")
            spec = parse_generate(record["request"], model, max_image_bytes, max_images, lambda _: False)
        except (ValueError, BadRequest) as exc:
            status = _status("Bad Request", 400, str(exc) or "Invalid request.", "INVALID_ARGUMENT")
            rows.append(Row(fields, key, None, status, "failed"))
            continue
        rows.append(Row(fields, key, spec))
    return rows


def _key(record: dict[str, Any], default: str) -> str:
    """What billing counts a row by: its `key` field, else its request's labels, else its line number."""
    if isinstance(record.get("key"), str):
        return str(record["key"])
    request = record.get("request")
    labels = request.get("labels") if isinstance(request, dict) else None
    return json.dumps(labels, sort_keys=True) if isinstance(labels, dict) and labels else default


def _status(kind: str, code: int, message: str, status: str) -> str:
    """A failed row's `status`, as Vertex writes it: a phrase, then Google's error body as JSON text."""
    return f"{kind}: " + json.dumps({"error": {"code": code, "message": message, "status": status}})


def _export(state: VertexState, job: Job, until: float) -> None:
    """Write every row finished by `until` that is not written yet; bill its image."""
    assert job.rows is not None and job.output_dir is not None
    touched: set[int] = set()
    for row in job.rows:
        if row.exported or row.done_at > until:
            continue
        row.exported = True
        job.files.setdefault(row.file_index, []).append(_line(state, job, row))
        touched.add(row.file_index)
        _bill(state.stats, job, row)
    bucket, prefix = split_gs(job.output_dir)
    for index in sorted(touched):
        name = f"{prefix}predictions-{index:05d}-of-{job.output_files:05d}.jsonl"
        data = b"".join(job.files[index])
        state.store.put(bucket, name, data, OUTPUT_MIME, state.wall(until))
        state.stats.objects_written += 1


def _bill(stats: VertexStats, job: Job, row: Row) -> None:
    if row.fate == "image":
        stats.bill_row(job.model, row.key, job.job_id)
    elif row.fate == "refused":
        stats.batch_rows_refused += 1
    else:
        stats.batch_rows_failed += 1


def _line(state: VertexState, job: Job, row: Row) -> bytes:
    out = dict(row.fields)
    out["processed_time"] = rfc3339(state.wall(row.done_at))
    spec = row.spec
    if spec is None or row.fate == "failed":
        out["status"] = row.status
        return _dumps(out).encode() + b"\n"
    response_id = state.next_id()
    if row.fate == "refused":
        reply = refused_reply(spec, state.config.refusal_reason, response_id)
    else:
        _, b64 = state.images.image(spec.prompt, spec.width, spec.height, state.config.image_bytes)
        reply = image_reply(spec, b64, response_id)
    reply["createTime"] = rfc3339(state.wall(row.done_at))
    out["response"] = reply
    out["status"] = ""
    return _dumps(out).encode() + b"\n"
