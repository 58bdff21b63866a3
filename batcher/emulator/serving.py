"""What both emulators' servers share: an aiohttp app on a loopback socket in the running loop, and the parsing
of their administration requests (`/_emulator/advance`, `/_emulator/config`)."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Self

from aiohttp import web

SHUTDOWN_GRACE_S = 1.0  # seconds in-flight requests get to finish on close


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class LoopbackServer:
    """Serves one app: `_serve(app)` from a subclass's `start`; `close`, `async with`, `port`, `origin`."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._bind_port = host, port
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def start(self) -> None:
        raise NotImplementedError

    async def _serve(self, app: web.Application) -> None:
        """Bind the socket and start serving `app`."""
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._bind_port)
        try:
            await site.start()
        except BaseException:
            await self.close()
            raise
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving and close connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def origin(self) -> str:
        """``http://host:port``: where a client points its base URL (and where files are served)."""
        return f"http://{url_host(self._host)}:{self._port}"


def advance_seconds(request: web.Request) -> float | None:
    """`?seconds=N` of an advance request; None unless a number >= 0."""
    try:
        seconds = float(request.query.get("seconds", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


async def knobs_of(request: web.Request) -> dict[str, Any] | None:
    """The JSON object of knobs a config request carries; None if it is not one."""
    try:
        knobs = json.loads(await request.read())
    except ValueError:
        return None
    return knobs if isinstance(knobs, dict) else None


ADVANCE_USAGE = {"error": "give ?seconds=N, a number >= 0"}
KNOBS_USAGE = {"error": "the body must be a JSON object of knobs"}
