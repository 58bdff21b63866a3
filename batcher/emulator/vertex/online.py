"""``generateContent`` on Vertex: a synchronous image generation, under a project or in express mode.

Order of faults: the body (400); Dynamic Shared Quota, from the capacity (`rate_limit`, `burst`) or drawn
(`dsq_429_rate`): a 429 with no RetryInfo and no Retry-After; 500 and 503; the generation's wait; a refusal or
blocked prompt (not billed); else the image is billed, and its reply may still be lost (`lost_reply_rate`).
"""

from __future__ import annotations

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import json_response
from batcher.emulator.gemini.files import rfc3339
from batcher.emulator.gemini.online import INTERNAL_MESSAGE, OVERLOADED_MESSAGE
from batcher.emulator.gemini.reply import blocked_reply, image_reply, refused_reply
from batcher.emulator.gemini.request import BadRequest, parse_generate
from batcher.emulator.gemini.wire import BodyError, close_connection, read_json
from batcher.emulator.vertex.errors import dsq_exhausted, vertex_error
from batcher.emulator.vertex.state import VertexState


async def generate_content(
    state: VertexState, clock: EmulatorClock, request: web.Request, model: str, billed_to: str
) -> web.StreamResponse:
    """One generation of a known model; `billed_to` is the project number, or "express"."""
    config = state.config
    stats = state.stats
    try:
        body = await read_json(request, config.max_request_bytes)
        spec = parse_generate(body, model, config.max_image_bytes, config.max_input_images, lambda _: False)
    except (BodyError, BadRequest) as exc:
        return vertex_error(400, str(exc))
    now = clock.now()
    if state.admit(now) > 0 or state.roll(config.dsq_429_rate):
        stats.dsq_429s += 1
        return dsq_exhausted()
    if state.roll(config.error_500_rate):
        return vertex_error(500, INTERNAL_MESSAGE)
    if state.roll(config.error_503_rate):
        return vertex_error(503, OVERLOADED_MESSAGE)
    await clock.sleep_until(now + config.latency.sample(state.rng))
    config = state.config  # knobs may have changed during the wait
    response_id = state.next_id()
    created = rfc3339(state.wall(clock.now()))
    refused = state.refusal(spec.prompt, config.refusal_rate, config.block_rate)
    if refused is not None:
        reason, blocked = refused
        stats.refuse(blocked)
        reply = (blocked_reply if blocked else refused_reply)(spec, reason, response_id)
        return json_response({**reply, "createTime": created})
    stats.bill_image(spec.model, spec.prompt, billed_to)
    if state.roll(config.lost_reply_rate):
        stats.lost_replies += 1
        return close_connection(request)
    _, b64 = state.images.image(spec.prompt, spec.width, spec.height, config.image_bytes)
    return json_response({**image_reply(spec, b64, response_id), "createTime": created})
