"""Batch Mode over HTTP: batchGenerateContent, batches.get/list/cancel/delete, and the results download.

A succeeded batch's results are a JSONL file, one ``{"key", "response"}`` or ``{"key", "error"}`` a line,
made while it streams so that a gigabyte of images never sits in memory. For `batch_unavailable_s` after a
batch succeeds, batches.get and its download answer 503, as the field has seen for large result files.
Creation can answer 503 having made nothing (`batch_create_503_rate`), lose its reply after making the
batch (`batch_create_lost_rate`), or make it and be answered by a gateway's 502/504
(`batch_create_gateway_rate`); one page of the listing can answer 503 (`batch_list_unavailable_page`), and
the listing is not immediately consistent (`batch_list_lag_s`). batches.get, list and cancel can be slow
(`batch_api_latency`). A responses file may leave out billed lines (`batch_omit_line_rate`), end without a
newline, be gone (`results_gone_rate`) or expire (`file_ttl_s`, answering 404).
"""

from __future__ import annotations

import base64
import binascii
import json

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import json_response
from batcher.emulator.gemini import lifecycle
from batcher.emulator.gemini.batches import (
    GRPC_INTERNAL,
    GRPC_INVALID_ARGUMENT,
    SUCCEEDED,
    TERMINAL,
    Batch,
    operation,
    parse_lines,
)
from batcher.emulator.gemini.errors import api_error, gateway_error
from batcher.emulator.gemini.files import FILES_PREFIX
from batcher.emulator.gemini.lifecycle import RESULTS_MIME, create_batch
from batcher.emulator.gemini.reply import IMAGE_SLOT, encode_with_image, image_reply, refused_reply
from batcher.emulator.gemini.request import BadRequest, UnknownModel, check_model, field, model_id
from batcher.emulator.gemini.state import GeminiState
from batcher.emulator.gemini.uploads import find_file
from batcher.emulator.gemini.wire import BodyError, close_connection, read_json

DEFAULT_PAGE_SIZE = 50  # our choice
MAX_PAGE_SIZE = 1000
BATCH_PREFIX = "batches/"
UNAVAILABLE_MESSAGE = "The service is currently unavailable."
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


async def create(state: GeminiState, clock: EmulatorClock, request: web.Request, raw_model: str) -> web.StreamResponse:
    """``models/{model}:batchGenerateContent`` from an uploaded JSONL file: an Operation, state PENDING."""
    model = model_id(raw_model)
    version = request.match_info["version"]
    try:
        check_model(model, version, "batchGenerateContent")
        body = await read_json(request, state.config.max_request_bytes)
        display_name, file_name = _batch_fields(body)
    except UnknownModel as exc:
        return api_error(404, str(exc))
    except (BodyError, BadRequest) as exc:
        return api_error(400, str(exc))
    now = clock.now()
    stored = state.files.get(file_name, now)
    if stored is None or stored.source != "UPLOADED":
        return api_error(400, f"File {file_name} does not exist or you do not have permission to access it.")
    config = state.config
    lines = parse_lines(stored.data, model, config.max_image_bytes, config.max_input_images)
    if not lines:
        return api_error(400, f"The input file {file_name} holds no requests.")
    if state.roll(config.batch_create_503_rate):
        return api_error(503, UNAVAILABLE_MESSAGE)
    batch = create_batch(state, display_name, model, file_name, lines, now)
    if config.batch_create_delay_s:  # made (and to be billed); the reply waits
        await clock.sleep_until(now + config.batch_create_delay_s)
    if state.roll(config.batch_create_lost_rate):
        return close_connection(request)
    if state.roll(config.batch_create_gateway_rate):  # made (and to be billed); a gateway answers
        state.stats.batch_create_gateway_errors += 1
        status = config.batch_create_gateway_status or state.rng.choice((502, 504))
        return gateway_error(status, config.batch_create_gateway_body)
    return json_response(operation(batch, now, state.wall_offset_s))


def _batch_fields(body: object) -> tuple[str, str]:
    batch = field(body, "batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict):
        raise BadRequest("batch is required: an object with displayName and inputConfig")
    display_name = field(batch, "displayName", "")
    input_config = field(batch, "inputConfig")
    if not isinstance(display_name, str) or not isinstance(input_config, dict):
        raise BadRequest("batch.displayName must be a string and batch.inputConfig an object")
    if field(input_config, "requests") is not None:
        raise BadRequest("this emulator serves file input only: set batch.inputConfig.fileName")  # our limit
    file_name = field(input_config, "fileName")
    if not isinstance(file_name, str) or not file_name.startswith(FILES_PREFIX):
        raise BadRequest("batch.inputConfig.fileName must name an uploaded file (files/...)")
    return display_name, file_name


def _find(state: GeminiState, batch_id: str, now: float) -> Batch | None:
    lifecycle.settle(state, now)
    batch = state.batches.get(BATCH_PREFIX + batch_id)
    return None if batch is None or batch.deleted else batch


def _not_found(batch_id: str) -> web.Response:
    return api_error(404, f"Batch {BATCH_PREFIX}{batch_id} not found.")


def _unavailable(state: GeminiState, batch: Batch, now: float) -> bool:
    """Whether a succeeded batch is still in its window of 503s (batch_unavailable_s)."""
    return batch.ended == SUCCEEDED and now < batch.end_time() + state.config.batch_unavailable_s


async def _slow(state: GeminiState, clock: EmulatorClock) -> None:
    """batches.get, list and cancel wait `batch_api_latency` on the emulator's clock before acting."""
    wait_s = state.config.batch_api_latency.sample(state.rng)
    if wait_s > 0:
        await clock.sleep_until(clock.now() + wait_s)


async def get(state: GeminiState, clock: EmulatorClock, request: web.Request, batch_id: str) -> web.Response:
    await _slow(state, clock)
    now = clock.now()
    batch = _find(state, batch_id, now)
    if batch is None:
        return _not_found(batch_id)
    if _unavailable(state, batch, now):
        state.stats.unavailable_answers += 1
        return api_error(503, UNAVAILABLE_MESSAGE)
    return json_response(operation(batch, now, state.wall_offset_s))


async def list_batches(state: GeminiState, clock: EmulatorClock, request: web.Request) -> web.Response:
    """``GET /{v}/batches?pageSize&pageToken``: newest first; the token is opaque to clients. A batch is
    listed only `batch_list_lag_s` after its creation (the listing is not immediately consistent)."""
    await _slow(state, clock)
    now = clock.now()
    lifecycle.settle(state, now)
    try:
        size = int(request.query.get("pageSize", DEFAULT_PAGE_SIZE))
        token = request.query.get("pageToken", "")
        start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    except (ValueError, binascii.Error):
        return api_error(400, "pageSize must be a number and pageToken one this API gave out.")
    size = DEFAULT_PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)
    if state.config.batch_list_unavailable_page == start // size + 1:
        state.stats.unavailable_answers += 1
        return api_error(503, UNAVAILABLE_MESSAGE)
    lag_s = state.config.batch_list_lag_s
    visible = [b for b in reversed(state.batches.values()) if not b.deleted and b.created_at + lag_s <= now]
    page = visible[start : start + size]
    out: dict[str, object] = {"operations": [operation(b, now, state.wall_offset_s) for b in page]}
    if start + size < len(visible):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return json_response(out)


async def cancel(state: GeminiState, clock: EmulatorClock, request: web.Request, batch_id: str) -> web.Response:
    await _slow(state, clock)
    now = clock.now()
    batch = _find(state, batch_id, now)
    if batch is None:
        return _not_found(batch_id)
    if batch.state(now) in TERMINAL:
        return api_error(400, f"Batch {batch.name} has already ended.", status="FAILED_PRECONDITION")
    batch.cancelled_at = now
    lifecycle.settle(state, now)
    return json_response({})


async def delete(state: GeminiState, clock: EmulatorClock, request: web.Request, batch_id: str) -> web.Response:
    """Hide the batch; like deleting any long-running operation, this does not cancel it."""
    batch = _find(state, batch_id, clock.now())
    if batch is None:
        return _not_found(batch_id)
    batch.deleted = True
    return json_response({})


async def download(state: GeminiState, clock: EmulatorClock, request: web.Request, file_id: str) -> web.StreamResponse:
    """``files/{id}:download?alt=media``: a generated file's bytes, streamed line by line."""
    now = clock.now()
    lifecycle.settle(state, now)
    stored = find_file(state, file_id, now)
    if isinstance(stored, web.Response):
        return stored
    batch = state.batches.get(stored.batch or "")
    if stored.source != "GENERATED" or batch is None:
        return api_error(400, "Only generated files can be downloaded.")
    if _unavailable(state, batch, now):
        state.stats.unavailable_answers += 1
        return api_error(503, UNAVAILABLE_MESSAGE)
    response = web.StreamResponse(headers={"Content-Type": RESULTS_MIME})
    response.enable_chunked_encoding()
    await response.prepare(request)
    last = len(batch.file_lines) - 1
    for at, number in enumerate(batch.file_lines):
        line = batch.lines[number]
        response_id = f"{batch.name.removeprefix(BATCH_PREFIX)}-{number}"
        record: dict[str, object] = {"key": line.key}
        end = b"" if at == last and state.config.batch_results_no_final_newline else b"\n"
        if line.spec is None or line.fate == "failed":
            code = GRPC_INVALID_ARGUMENT if line.spec is None else GRPC_INTERNAL
            record["error"] = {"code": code, "message": line.error}
        elif line.fate == "refused":
            record["response"] = refused_reply(line.spec, state.config.refusal_reason, response_id)
        else:
            spec = line.spec
            _, b64 = state.images.image(spec.prompt, spec.width, spec.height, state.config.image_bytes)
            record["response"] = image_reply(spec, IMAGE_SLOT, response_id)
            for piece in encode_with_image(record, b64, end):  # the image's bytes written as they are cached
                await response.write(piece)
            continue
        await response.write(_dumps(record).encode("utf-8") + end)
    await response.write_eof()
    return response
