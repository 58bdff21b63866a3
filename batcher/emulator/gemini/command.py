"""The Gemini knobs of ``batcher emulator --provider gemini``, and serving the Gemini emulator until signalled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from batcher.emulator.gemini.config import GATEWAY_BODIES, GeminiConfig
from batcher.emulator.gemini.facts import BLOCK_REASONS, FINISH_REFUSALS
from batcher.emulator.latency import Latency
from batcher.emulator.until_signalled import serve_until_signalled

F = TypeVar("F", bound=Callable[..., Any])

# Options the LinkModel emulator also has, which mean the same for Gemini.
SHARED = (
    *("host", "port", "api_key", "seed", "latency"),
    *("error_500_rate", "error_503_rate", "drop_rate", "slow_rate", "slow_s", "rate_limit", "burst"),
)

_RATE = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(min=0.0)


def _latency(ctx: click.Context, param: click.Parameter, value: str | None) -> Latency | None:
    try:
        return None if value is None else Latency.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# name -> (click type, help); every default is None: the GeminiConfig default applies.
GEMINI_OPTIONS: dict[str, tuple[Any, str]] = {
    "image_bytes": (click.IntRange(min=1), "PNG replies of about this many bytes (real ones are 1-2 MB)"),
    "refusal_rate": (_RATE, "probability a prompt's candidate ends with no image (--refusal-reason)"),
    "refusal_reason": (click.Choice(FINISH_REFUSALS), "finishReason of a refusal [IMAGE_SAFETY]"),
    "block_rate": (_RATE, "probability a prompt is blocked: promptFeedback.blockReason, no candidates"),
    "block_reason": (click.Choice(BLOCK_REASONS), "blockReason of a blocked prompt [PROHIBITED_CONTENT]"),
    "quota_429_rate": (_RATE, "probability of a per-minute 429 RESOURCE_EXHAUSTED"),
    "retry_delay_s": (_SECONDS, "RetryInfo.retryDelay of a drawn per-minute 429 [47]"),
    "daily_limit": (click.IntRange(min=1), "requests per quota day; past it a per-day 429"),
    "spend_cap_images": (
        click.IntRange(min=0),
        "images billed online before the project's spending cap is reached; past it a 429",
    ),
    "day_s": (click.FloatRange(min=0.0, min_open=True), "length of the quota day, seconds [86400]"),
    "error_504_rate": (_RATE, "probability of a 504 DEADLINE_EXCEEDED after the generation's wait"),
    "lost_reply_rate": (_RATE, "probability an image is generated and billed, then the connection closes"),
    "gateway_502_rate": (_RATE, "probability an image is generated and billed, then answered by an HTML 502"),
    "batch_latency": (str, "a batch's time from create to done: fixed:S | uniform:LO:HI | ... [fixed:60]"),
    "batch_expiry_s": (_SECONDS, "a batch not done by then ends EXPIRED [172800]"),
    "batch_fail_rate": (_RATE, "probability a batch ends FAILED (no results, nothing billed)"),
    "batch_line_fail_rate": (_RATE, "probability a batch line is an error Status"),
    "batch_line_refusal_rate": (_RATE, "probability a batch line's response carries no image"),
    "batch_unavailable_s": (_SECONDS, "batches.get and the download answer 503 this long after success"),
    "batch_create_503_rate": (_RATE, "probability batchGenerateContent answers 503, creating nothing"),
    "batch_create_lost_rate": (_RATE, "probability a batch is created, then the connection closes"),
    "batch_list_unavailable_page": (click.IntRange(min=0), "this page of batches.list answers 503 [0: none]"),
    "file_ttl_s": (_SECONDS, "files (inputs and responses) are deleted this long after they are made [172800]"),
    "batch_create_gateway_rate": (_RATE, "probability a batch is created, then a gateway answers 502/504"),
    "batch_create_gateway_status": (click.Choice(["0", "502", "504"]), "that gateway's status [0: drawn]"),
    "batch_create_gateway_body": (click.Choice(GATEWAY_BODIES), "google: Google's own error; bare: a proxy's"),
    "batch_list_lag_s": (_SECONDS, "batches.list shows a batch only this long after its creation [0]"),
    "batch_api_latency": (str, "batches.get/list/cancel wait this long before acting: fixed:S | ... [fixed:0]"),
    "batch_partial_lines": (click.BOOL, "lines finish one by one; other endings keep and bill them [false]"),
    "batch_ended_no_file_rate": (_RATE, "probability a cancelled/failed/expired batch gives no responses file"),
    "batch_omit_line_rate": (_RATE, "probability a billed line is left out of a succeeded batch's file"),
    "batch_results_no_final_newline": (click.BOOL, "a responses file's last line has no newline [false]"),
    "results_gone_rate": (_RATE, "probability a batch's responses file is gone as soon as it is made"),
    "results_gone_status": (click.Choice(["403", "404"]), "what a gone responses file answers [403]"),
}
_LATENCY_OPTIONS = ("batch_latency", "batch_api_latency")
_INT_CHOICES = ("batch_create_gateway_status", "results_gone_status")


def gemini_options(command: F) -> F:
    """Add the Gemini-only options, each defaulting to None (the emulator's own default)."""
    for name, (kind, help_text) in reversed(GEMINI_OPTIONS.items()):
        flag = "--" + name.replace("_", "-")
        callback = _latency if name in _LATENCY_OPTIONS else None
        command = click.option(flag, name, type=kind, default=None, callback=callback, help=help_text)(command)
    return command


def gemini_config(shared: dict[str, Any], own: dict[str, Any]) -> GeminiConfig:
    """The config from the shared options and the Gemini ones that were given."""
    knobs = {k: shared[k] for k in SHARED if k in shared}
    knobs.update({k: int(v) if k in _INT_CHOICES else v for k, v in own.items() if v is not None})
    try:
        return GeminiConfig(**knobs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


async def serve_gemini(config: GeminiConfig, ready_prefix: str) -> None:
    """Serve until SIGINT or SIGTERM; print the ready line a parent process waits for."""
    from batcher.emulator.gemini.server import GeminiEmulator

    emu = GeminiEmulator(config)
    await serve_until_signalled(
        emu, lambda: f"{ready_prefix} base_url={emu.origin} api_key={emu.api_key} provider=gemini"
    )
