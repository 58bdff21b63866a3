"""Batch prediction jobs over HTTP: create, get, list (``filter=display_name="X"``, paging), cancel, delete.

Faults, to prove a client reconciles instead of creating twice: a create answered 503 having made nothing
(`batch_create_503_rate`); a create that makes the job, then is answered by the front end's HTML 502
(`batch_create_gateway_rate`); a create whose reply waits `batch_create_delay_s` after the job is made (a client
killed meanwhile); listings that show a new job only `batch_list_lag_s` after its create.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import json_response
from batcher.emulator.gemini.errors import GATEWAY_PAGE
from batcher.emulator.gemini.facts import MODELS
from batcher.emulator.gemini.wire import BodyError, read_json
from batcher.emulator.vertex import lifecycle
from batcher.emulator.vertex.errors import model_not_found, vertex_error
from batcher.emulator.vertex.jobs import CANCELLING, TERMINAL, Job
from batcher.emulator.vertex.state import VertexState

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MODEL_PATH = re.compile(r"^(?:projects/[^/]+/locations/[^/]+/)?publishers/google/models/([^/]+)$")
_FILTER_TERM = re.compile(r'^\s*(display_name|displayName|state)\s*=\s*"?([^"]*)"?\s*$')
UNAVAILABLE_MESSAGE = "The service is currently unavailable."


class CreateError(ValueError):
    """An INVALID_ARGUMENT naming the field."""


def _fields(body: Any) -> tuple[str, str, str, list[str], str]:
    """(display name, model as given, model id, input URIs, output prefix) of a create body."""
    if not isinstance(body, dict):
        raise CreateError("The request body must be a BatchPredictionJob object.")
    display_name = body.get("displayName")
    if not isinstance(display_name, str) or not display_name:
        raise CreateError(
            "List of found errors: 1.Field: batch_prediction_job.display_name; Message: Required field is not set."
        )
    model = body.get("model")
    found = MODEL_PATH.match(model) if isinstance(model, str) else None
    if found is None:
        raise CreateError("batch_prediction_job.model must be publishers/google/models/MODEL.")
    inputs = body.get("inputConfig")
    source = inputs.get("gcsSource") if isinstance(inputs, dict) else None
    uris = source.get("uris") if isinstance(source, dict) else None
    if not isinstance(inputs, dict) or inputs.get("instancesFormat") != "jsonl":
        raise CreateError("batch_prediction_job.input_config.instances_format must be jsonl (this emulator's limit).")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) and u.startswith("gs://") for u in uris):
        raise CreateError("batch_prediction_job.input_config.gcs_source.uris must list gs:// URIs.")
    outputs = body.get("outputConfig")
    destination = outputs.get("gcsDestination") if isinstance(outputs, dict) else None
    prefix = destination.get("outputUriPrefix") if isinstance(destination, dict) else None
    if not isinstance(outputs, dict) or outputs.get("predictionsFormat") != "jsonl":
        raise CreateError(
            "batch_prediction_job.output_config.predictions_format must be jsonl (this emulator's limit)."
        )
    if not isinstance(prefix, str) or not prefix.startswith("gs://") or len(prefix.rstrip("/")) <= len("gs://"):
        raise CreateError("batch_prediction_job.output_config.gcs_destination.output_uri_prefix must be a gs:// URI.")
    return display_name, str(model), found.group(1), list(uris), prefix


async def create(
    state: VertexState, clock: EmulatorClock, request: web.Request, number: str, location: str
) -> web.StreamResponse:
    try:
        body = await read_json(request, state.config.max_request_bytes)
        display_name, model, model_id, uris, prefix = _fields(body)
    except (BodyError, CreateError) as exc:
        return vertex_error(400, str(exc))
    if model_id not in MODELS:
        return model_not_found(f"projects/{number}/locations/{location}/publishers/google/models/{model_id}")
    if state.roll(state.config.batch_create_503_rate):
        return vertex_error(503, UNAVAILABLE_MESSAGE)
    echo = {k: body[k] for k in ("inputConfig", "outputConfig", "labels") if k in body}
    echo["model"] = model
    now = clock.now()
    job = lifecycle.create_job(state, number, location, display_name, model_id, echo, uris, prefix, now)
    if state.config.batch_create_delay_s:  # made (it runs and bills); the reply waits
        await clock.sleep_until(now + state.config.batch_create_delay_s)
    if state.roll(state.config.batch_create_gateway_rate):  # made, and will run and bill; the reply is lost
        return web.Response(status=502, text=GATEWAY_PAGE, content_type="text/html")
    return json_response(job.resource(now, state.wall_offset_s))


def _find(state: VertexState, number: str, location: str, job_id: str) -> Job | None:
    job = state.jobs.get(job_id)
    if job is None or job.deleted or job.project_number != number or job.location != location:
        return None
    return job


def _missing(number: str, location: str, job_id: str) -> web.Response:
    name = f"projects/{number}/locations/{location}/batchPredictionJobs/{job_id}"
    return vertex_error(404, f"The BatchPredictionJob {name} does not exist.")


async def get(state: VertexState, clock: EmulatorClock, number: str, location: str, job_id: str) -> web.Response:
    job = _find(state, number, location, job_id)
    if job is None:
        return _missing(number, location, job_id)
    return json_response(job.resource(clock.now(), state.wall_offset_s))


def _filter(text: str) -> list[tuple[str, str]]:
    """The terms of a filter such as ``display_name="X" AND state=JOB_STATE_RUNNING``; raises ValueError."""
    terms: list[tuple[str, str]] = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        found = _FILTER_TERM.match(part)
        if found is None:
            raise ValueError(f"Unsupported filter: {text}")
        field, value = found.groups()
        terms.append(("state" if field == "state" else "display_name", value))
    return terms


async def list_jobs(
    state: VertexState, clock: EmulatorClock, request: web.Request, number: str, location: str
) -> web.Response:
    """Newest first; the page token is opaque to clients; an empty listing is ``{}``."""
    now = clock.now()
    query = request.query
    try:
        terms = _filter(query.get("filter", ""))
        size = int(query.get("pageSize", DEFAULT_PAGE_SIZE))
        token = query.get("pageToken", "")
        start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    except (ValueError, binascii.Error) as exc:
        return vertex_error(400, str(exc) if "filter" in str(exc) else "Invalid pageSize or pageToken.")
    size = DEFAULT_PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)
    lag = state.config.batch_list_lag_s
    visible = [
        job
        for job in reversed(state.jobs.values())
        if not job.deleted
        and job.project_number == number
        and job.location == location
        and now >= job.created_at + lag
        and all((job.display_name if f == "display_name" else job.state(now)) == v for f, v in terms)
    ]
    page = visible[start : start + size]
    out: dict[str, Any] = {}
    if page:
        out["batchPredictionJobs"] = [job.resource(now, state.wall_offset_s) for job in page]
    if start + size < len(visible):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return json_response(out)


async def cancel(state: VertexState, clock: EmulatorClock, number: str, location: str, job_id: str) -> web.Response:
    job = _find(state, number, location, job_id)
    if job is None:
        return _missing(number, location, job_id)
    now = clock.now()
    current = job.state(now)
    if current in TERMINAL:
        return vertex_error(
            400, f"The BatchPredictionJob {job.name} is in state {current} and cannot be cancelled.",
            status="FAILED_PRECONDITION",
        )  # fmt: skip
    if current != CANCELLING:
        lifecycle.cancel(state, job, now)
    return json_response({})


async def delete(state: VertexState, clock: EmulatorClock, number: str, location: str, job_id: str) -> web.Response:
    """Only an ended job can be deleted; the reply is a finished long-running operation."""
    job = _find(state, number, location, job_id)
    if job is None:
        return _missing(number, location, job_id)
    current = job.state(clock.now())
    if current not in TERMINAL:
        return vertex_error(
            400, f"The BatchPredictionJob {job.name} is in state {current}: cancel it, or wait for it to end, first.",
            status="FAILED_PRECONDITION",
        )  # fmt: skip
    job.deleted = True
    operation = f"projects/{number}/locations/{location}/operations/{state.next_id()}"
    metadata = {
        "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
        "genericMetadata": {},
    }
    return json_response(
        {
            "name": operation,
            "metadata": metadata,
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }
    )
