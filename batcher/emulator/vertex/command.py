"""The Vertex knobs of ``batcher emulator --provider vertex``, and serving the Vertex emulator until signalled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from batcher.emulator.until_signalled import serve_until_signalled
from batcher.emulator.vertex.config import VertexConfig

F = TypeVar("F", bound=Callable[..., Any])

# Options of the other providers that mean the same for Vertex (the LinkModel ones, then the Gemini ones).
SHARED = (
    *("host", "port", "api_key", "seed", "latency", "error_500_rate", "error_503_rate", "rate_limit", "burst"),
    *("image_bytes", "refusal_rate", "refusal_reason", "block_rate", "block_reason", "lost_reply_rate"),
    *("batch_latency", "batch_expiry_s", "batch_fail_rate", "batch_line_fail_rate", "batch_line_refusal_rate"),
    *("batch_create_503_rate", "batch_create_gateway_rate", "batch_list_lag_s"),  # the last two: Gemini's options
)

_RATE = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(min=0.0)

# name -> (click type, help); every default is None: the VertexConfig default applies.
VERTEX_OPTIONS: dict[str, tuple[Any, str]] = {
    "project": (str, "a project the credentials may use, ID=NUMBER (repeat) [emulator-project=123456789012]"),
    "location": (str, "locations served, comma-separated [global and five regions]"),
    "token_lifetime_s": (_SECONDS, "access tokens are refused (401) this long after they were issued [3599]"),
    "dsq_429_rate": (_RATE, "probability of a Dynamic Shared Quota 429 (capacity: --rate-limit, --burst)"),
    "batch_queued_s": (_SECONDS, "a job stays JOB_STATE_QUEUED this long before PENDING [0]"),
    "batch_cancel_s": (_SECONDS, "a cancelled job stays JOB_STATE_CANCELLING this long [0]"),
    "batch_output_files": (click.IntRange(min=1), "the *.jsonl files a job writes its rows across [3]"),
    "batch_partial_rate": (_RATE, "probability a job ends PARTIALLY_SUCCEEDED, its last tenth of rows not run"),
    "key_file": (click.Path(dir_okay=False, path_type=Path), "write a service-account key file for this emulator"),
}
MULTIPLE = frozenset({"project"})


def vertex_options(command: F) -> F:
    """Add the Vertex-only options, each defaulting to None (the emulator's own default)."""
    for name, (kind, help_text) in reversed(VERTEX_OPTIONS.items()):
        flag = "--" + name.replace("_", "-")
        many = name in MULTIPLE
        command = click.option(flag, name, type=kind, default=() if many else None, multiple=many, help=help_text)(
            command
        )
    return command


def vertex_config(given: dict[str, Any], own: dict[str, Any]) -> VertexConfig:
    """The config from the shared options and the Vertex ones that were given."""
    knobs: dict[str, Any] = {k: given[k] for k in SHARED if given.get(k) is not None}
    projects = own.pop("project", ())
    if projects:
        pairs = [p.partition("=") for p in projects]
        if any(not (i and eq and n) for i, eq, n in pairs):
            raise click.BadParameter("expected ID=NUMBER", param_hint="--project")
        knobs["projects"] = {i: n for i, _, n in pairs}
    location = own.pop("location", None)
    if location:
        knobs["locations"] = location
    own.pop("key_file", None)
    knobs.update({k: v for k, v in own.items() if v is not None})
    try:
        return VertexConfig().replace(**knobs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


async def serve_vertex(config: VertexConfig, ready_prefix: str, key_file: Path | None) -> None:
    """Serve until SIGINT or SIGTERM; print the ready line a parent process waits for."""
    try:
        from batcher.emulator.vertex.server import VertexEmulator
    except ImportError as exc:  # it checks service-account signatures with cryptography
        raise click.ClickException(
            f"the Vertex emulator needs {exc.name}: pip install 'batcher-images[vertex]'"
        ) from None

    emu = VertexEmulator(config)

    def ready_line() -> str:
        line = f"{ready_prefix} base_url={emu.origin} api_key={emu.api_key} provider=vertex project={emu.project}"
        if key_file is not None:
            try:
                emu.write_key_file(key_file)
            except OSError as exc:
                raise click.ClickException(f"cannot write the key file {key_file}: {exc.strerror}") from None
            line += f" key_file={key_file}"
        return line

    await serve_until_signalled(emu, ready_line)
