"""``batcher emulator`` / ``python -m batcher.emulator``: serve the emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import click

from batcher.emulator.config import (
    ALL_MODELS,
    DEFAULT_FAULT_KINDS,
    DEFAULT_HOSTILE_HUGE_BYTES,
    HOSTILE_KINDS,
    EmulatorConfig,
)
from batcher.emulator.facts import DEFAULT_PRICES
from batcher.emulator.gemini.command import GEMINI_OPTIONS, SHARED, gemini_config, gemini_options, serve_gemini
from batcher.emulator.latency import Latency
from batcher.emulator.server import Emulator
from batcher.emulator.until_signalled import serve_until_signalled
from batcher.emulator.vertex.command import SHARED as VERTEX_SHARED
from batcher.emulator.vertex.command import VERTEX_OPTIONS, serve_vertex, vertex_config, vertex_options

DEFAULT_PORT = 8600
READY_PREFIX = "emulator ready"  # the startup line: "emulator ready base_url=... api_key=..."

F = TypeVar("F", bound=Callable[..., Any])

_RATE_OPTIONS = {
    "fail_rate": "probability a generation ends Failed",
    "cancel_rate": "probability a generation ends Cancelled",
    "error_500_rate": "probability of an HTTP 500 reply",
    "error_503_rate": "probability of an HTTP 503 reply",
    "drop_rate": "probability the connection closes without a reply (nothing done)",
    "malformed_rate": "probability of an HTTP 200 reply that is not JSON",
    "slow_rate": "probability a reply is delayed by --slow-s",
    "lost_create_rate": "probability a create is accepted, then its reply is lost",
    "accepted_error_rate": "probability a create is accepted, then answered 502/504 by the gateway",
    "not_image_rate": "probability a download serves a page that is not an image",
    "forget_rate": "probability a task answers 404 once its Success has been reported",
    "truncate_rate": "probability a download is cut short",
    "hostile_file_rate": "probability a successful task's file URL attacks the client (see --hostile-file-kind)",
}


def _rate_options(command: F) -> F:
    for name, help_text in reversed(_RATE_OPTIONS.items()):
        flag = "--" + name.replace("_", "-")
        command = click.option(flag, name, type=click.FloatRange(0.0, 1.0), default=0.0, help=help_text)(command)
    return command


def _parse_latency(ctx: click.Context, param: click.Parameter, value: str) -> Latency:
    try:
        return Latency.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_prices(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    prices = dict(DEFAULT_PRICES)
    for value in values:
        model, _, price = value.rpartition("=")
        try:
            Decimal(price)
        except InvalidOperation:
            raise click.BadParameter(f"{value!r}: expected MODEL=USD or USD") from None
        prices[model or ALL_MODELS] = price
    return prices


@click.command("emulator")
@click.option(
    "--provider",
    type=click.Choice(["linkmodel", "gemini", "vertex"]),
    default="linkmodel",
    show_default=True,
    help="which API to emulate: LinkModel's, Google's Gemini API (v1beta and v1), or Vertex AI (with its token "
    "endpoint and Cloud Storage)",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="0 picks a free port")
@click.option("--api-key", default="emulator-key", show_default=True, help="the key clients must send")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of every random draw")
@click.option(
    "--latency",
    default="fixed:0",
    show_default=True,
    callback=_parse_latency,
    help="generation time: fixed:S | uniform:LO:HI | lognormal:MEDIAN:SIGMA (seconds)",
)
@click.option("--variant", type=click.Choice(["guide", "field"]), default="guide", show_default=True)
@click.option("--images-field", default="images", show_default=True, help="create field holding edit inputs")
@click.option("--max-image-bytes", type=click.IntRange(min=1), default=10 * 2**20, show_default=True)
@_rate_options
@click.option("--fail-reason", default="content refused", show_default=True)
@click.option("--slow-s", type=click.FloatRange(min=0.0), default=1.0, show_default=True, help="delay, seconds")
@click.option(
    "--fault-kinds",
    default=",".join(sorted(DEFAULT_FAULT_KINDS)),
    show_default=True,
    help="request kinds that 500/503/drop/malformed/slow apply to (create,query,download)",
)
@click.option(
    "--hostile-file-kind",
    type=click.Choice(HOSTILE_KINDS),
    default="scheme",
    show_default=True,
    help="scheme: file:// or ftp:// URL; huge: an endless download; not-image: HTML bytes; traversal: a ../ name",
)
@click.option(
    "--hostile-huge-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_HOSTILE_HUGE_BYTES,
    show_default=True,
    help="bytes a huge download streams unless the client hangs up",
)
@click.option("--url-ttl-s", type=click.FloatRange(min=0.0), default=None, help="file URLs expire (HTTP 410)")
@click.option("--task-ttl-s", type=click.FloatRange(min=0.0), default=None,
              help="tasks are forgotten this long after they finish (HTTP 404)")  # fmt: skip
@click.option("--rate-limit", type=click.FloatRange(min=0.0, min_open=True), default=None, help="requests/s")
@click.option("--burst", type=click.FloatRange(min=1.0), default=None, help="tokens (default: 1 s worth)")
@click.option("--retry-after-format", type=click.Choice(["seconds", "http-date"]), default="seconds")
@click.option("--errors-http-200", is_flag=True, help="answer errors under HTTP 200 (code stays non-zero)")
@click.option("--price", "prices", multiple=True, callback=_parse_prices, help="MODEL=USD, or USD for all models")
@click.option("--no-price", is_flag=True, help="leave price out of create replies")
@click.option("--max-events", type=click.IntRange(min=0), default=4_000_000, show_default=True)
@gemini_options
@vertex_options
def emulator(provider: str, no_price: bool, fault_kinds: str, **knobs: Any) -> None:
    """Serve an emulator of the LinkModel image API (or, with --provider gemini or vertex, of Google's Gemini API
    or Vertex AI) until interrupted."""
    own = {name: knobs.pop(name) for name in GEMINI_OPTIONS}
    vertex_own = {name: knobs.pop(name) for name in VERTEX_OPTIONS}
    ctx = click.get_current_context()
    given = {name for name in ctx.params if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if provider == "vertex":
        foreign = sorted(given - set(VERTEX_SHARED) - set(VERTEX_OPTIONS) - {"provider"})
        if foreign:
            raise click.UsageError(f"not a Vertex knob: {', '.join('--' + n.replace('_', '-') for n in foreign)}")
        key_file = vertex_own.get("key_file")
        asyncio.run(serve_vertex(vertex_config({**knobs, **own}, vertex_own), READY_PREFIX, key_file))
        return
    if provider == "gemini":
        foreign = sorted(given - set(SHARED) - set(GEMINI_OPTIONS) - {"provider"})
        if foreign:
            raise click.UsageError(f"not a Gemini knob: {', '.join('--' + n.replace('_', '-') for n in foreign)}")
        asyncio.run(serve_gemini(gemini_config(knobs, own), READY_PREFIX))
        return
    foreign = sorted(given & set(VERTEX_OPTIONS))
    if foreign:
        raise click.UsageError(f"only with --provider vertex: {', '.join('--' + n.replace('_', '-') for n in foreign)}")
    foreign = sorted(given & set(GEMINI_OPTIONS))
    if foreign:
        raise click.UsageError(f"only with --provider gemini: {', '.join('--' + n.replace('_', '-') for n in foreign)}")
    knobs["report_price"] = not no_price
    knobs["fault_kinds"] = frozenset(k.strip() for k in fault_kinds.split(",") if k.strip())
    try:
        config = EmulatorConfig(**knobs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    asyncio.run(_serve(config))


async def _serve(config: EmulatorConfig) -> None:
    emu = Emulator(config)
    await serve_until_signalled(emu, lambda: f"{READY_PREFIX} base_url={emu.base_url} api_key={emu.api_key}")
