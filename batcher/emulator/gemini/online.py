"""``models.generateContent``: a synchronous image generation, with the configured faults in a fixed order.

Order: a dropped connection (nothing done); the model and the body (404, 400); the account token bucket and
the per-minute 429 (QuotaFailure quotaId ...PerMinute...); the per-day quota (...PerDay...); a slow start;
500 and 503; then the generation's wait; 504 after it (nothing billed); a refusal or blocked prompt (not
billed); else the image is billed, and its reply may still be lost (the connection closes after billing) or
replaced by the front end's HTML 502 (a body that is not the API's JSON).
"""

from __future__ import annotations

import math

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import JSON_TYPE, json_response
from batcher.emulator.gemini.errors import (
    DEADLINE_MESSAGE,
    api_error,
    gateway_error,
    quota_exceeded,
    spend_cap_exceeded,
)
from batcher.emulator.gemini.facts import QUOTA_PER_DAY, QUOTA_PER_MINUTE
from batcher.emulator.gemini.reply import IMAGE_SLOT, blocked_reply, encode_with_image, image_reply, refused_reply
from batcher.emulator.gemini.request import BadRequest, UnknownModel, check_model, model_id, parse_generate
from batcher.emulator.gemini.state import GeminiState
from batcher.emulator.gemini.wire import BodyError, close_connection, read_json
from batcher.emulator.limiter import retry_after_seconds

INTERNAL_MESSAGE = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
OVERLOADED_MESSAGE = "The model is overloaded. Please try again later."


async def generate_content(
    state: GeminiState, clock: EmulatorClock, request: web.Request, version: str, raw_model: str
) -> web.StreamResponse:
    config = state.config
    stats = state.stats
    if state.roll(config.drop_rate):
        stats.dropped += 1
        return close_connection(request)
    model = model_id(raw_model)
    try:
        check_model(model, version)
        body = await read_json(request, config.max_request_bytes)
        spec = parse_generate(body, model, config.max_image_bytes, config.max_input_images, state.file_exists)
    except UnknownModel as exc:
        return api_error(404, str(exc))
    except (BodyError, BadRequest) as exc:
        return api_error(400, str(exc))

    now = clock.now()
    wait_s = state.admit(now)
    if wait_s == 0 and state.roll(config.quota_429_rate):
        wait_s = config.retry_delay_s
    if wait_s > 0:
        stats.rate_limited += 1
        stats.minute_quota_429s += 1
        return quota_exceeded(QUOTA_PER_MINUTE, model, config.minute_limit, retry_after_seconds(wait_s))
    if config.spend_cap_images is not None and stats.images_billed >= config.spend_cap_images:
        stats.rate_limited += 1
        return spend_cap_exceeded()
    day_left_s = state.take_daily(now)
    if day_left_s > 0:
        stats.rate_limited += 1
        stats.daily_refusals += 1
        return quota_exceeded(QUOTA_PER_DAY, model, config.daily_limit, math.ceil(day_left_s))

    if state.roll(config.slow_rate):
        await clock.sleep_until(clock.now() + config.slow_s)
    if state.roll(config.error_500_rate):
        return api_error(500, INTERNAL_MESSAGE)
    if state.roll(config.error_503_rate):
        return api_error(503, OVERLOADED_MESSAGE)
    await clock.sleep_until(now + config.latency.sample(state.rng))
    config = state.config  # knobs may have changed during the wait
    if state.roll(config.error_504_rate):
        return api_error(504, DEADLINE_MESSAGE)

    response_id = state.next_id()
    refused = state.refusal(spec.prompt, config.refusal_rate, config.block_rate)
    if refused is not None:
        reason, blocked = refused
        stats.refuse(reason, blocked)
        reply = blocked_reply if blocked else refused_reply
        return json_response(reply(spec, reason, response_id))
    stats.bill_image(spec.model, spec.prompt, spec.input_images)
    if state.roll(config.lost_reply_rate):
        stats.lost_replies += 1
        return close_connection(request)
    if state.roll(config.gateway_502_rate):
        stats.gateway_errors += 1
        return gateway_error(502, "google")
    _, b64 = state.images.image(spec.prompt, spec.width, spec.height, config.image_bytes)
    body = b"".join(encode_with_image(image_reply(spec, IMAGE_SLOT, response_id), b64))
    return web.Response(body=body, content_type=JSON_TYPE)
