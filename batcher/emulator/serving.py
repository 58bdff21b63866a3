"""What both emulators' servers share: an aiohttp app on a loopback socket in the running loop, and the parsing
of their administration requests (`/_emulator/advance`, `/_emulator/config`)."""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.envelope import json_response

SHUTDOWN_GRACE_S = 1.0  # seconds in-flight requests get to finish on close
ADMIN_PREFIX = "/_emulator"


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
    def bind_address(self) -> str:
        """``host:port`` as asked for (port 0: any free one), for messages."""
        return f"{self._host}:{self._bind_port}"

    @property
    def origin(self) -> str:
        """``http://host:port``: where a client points its base URL (and where files are served)."""
        return f"http://{url_host(self._host)}:{self._port}"


class _Config(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def api_key(self) -> str: ...


Cfg = TypeVar("Cfg", bound=_Config)
Sta = TypeVar("Sta")


class ClockedEmulator(LoopbackServer, Generic[Cfg, Sta]):
    """An emulator whose state runs on a clock the tests move (`advance`): the Gemini and Vertex ones. A subclass
    makes its state and app in `_build`; `state`, `clock`, `config` and `api_key` are read here."""

    def __init__(self, initial: Cfg) -> None:
        super().__init__(initial.host, initial.port)
        self._initial = initial
        self._state: Sta | None = None
        self._clock: EmulatorClock | None = None

    def _build(self, clock: EmulatorClock) -> tuple[Sta, web.Application]:
        raise NotImplementedError

    async def start(self) -> None:
        """Bind the socket and start serving."""
        self._clock = EmulatorClock(asyncio.get_running_loop())
        self._state, app = self._build(self._clock)
        await self._serve(app)

    @property
    def state(self) -> Sta:
        if self._state is None:
            raise RuntimeError("the emulator has not been started")
        return self._state

    @property
    def clock(self) -> EmulatorClock:
        if self._clock is None:
            raise RuntimeError("the emulator has not been started")
        return self._clock

    @property
    def config(self) -> Cfg:
        config: Cfg = getattr(self._state, "config", self._initial)
        return config

    @property
    def api_key(self) -> str:
        return self.config.api_key


class AdminState(Protocol):
    @property
    def config(self) -> Any: ...

    def reset(self, now: float) -> None: ...

    def configure(self, now: float, **knobs: Any) -> Any: ...


St = TypeVar("St", bound=AdminState)


class AdminRoutes(Generic[St]):
    """The administration routes both emulators serve (no auth, not counted): stats (each its own), reset,
    config and advance under `/_emulator`."""

    state: St
    clock: EmulatorClock

    def add_admin_routes(self, app: web.Application) -> None:
        app.router.add_get(ADMIN_PREFIX + "/stats", self.get_stats)
        app.router.add_post(ADMIN_PREFIX + "/reset", self.reset)
        app.router.add_get(ADMIN_PREFIX + "/config", self.get_config)
        app.router.add_post(ADMIN_PREFIX + "/config", self.set_config)
        app.router.add_post(ADMIN_PREFIX + "/advance", self.advance)

    async def get_stats(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset(self.clock.now())
        return json_response({"reset": True})

    async def advance(self, request: web.Request) -> web.Response:
        """Move the emulator's clock forward by `?seconds=N`: hours pass for its tasks at once (a test's clock)."""
        seconds = _advance_seconds(request)
        if seconds is None:
            return json_response({"error": "give ?seconds=N, a number >= 0"}, 400)
        self.clock.advance(seconds)
        return json_response({"advanced_s": seconds})

    async def get_config(self, request: web.Request) -> web.Response:
        return json_response(self.state.config.as_dict())

    async def set_config(self, request: web.Request) -> web.Response:
        knobs = await _knobs_of(request)
        if knobs is None:
            return json_response({"error": "the body must be a JSON object of knobs"}, 400)
        try:
            config = self.state.configure(self.clock.now(), **knobs)
        except (TypeError, ValueError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(config.as_dict())


def _advance_seconds(request: web.Request) -> float | None:
    """`?seconds=N` of an advance request; None unless a number >= 0."""
    try:
        seconds = float(request.query.get("seconds", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


async def _knobs_of(request: web.Request) -> dict[str, Any] | None:
    """The JSON object of knobs a config request carries; None if it is not one."""
    try:
        knobs = json.loads(await request.read())
    except ValueError:
        return None
    return knobs if isinstance(knobs, dict) else None
