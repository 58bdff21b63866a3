"""The one way an API client opens its HTTP session: a bounded pool, the provider's timeouts, no cookies."""

from __future__ import annotations

from typing import Generic, Protocol, Self, TypeVar

import aiohttp

USER_AGENT = "batcher/0.1"


class HttpLimits(Protocol):
    @property
    def max_connections(self) -> int: ...
    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def read_timeout_s(self) -> float: ...
    @property
    def total_timeout_s(self) -> float: ...


L = TypeVar("L", bound=HttpLimits)


class SessionOwner(Generic[L]):
    """Owns one aiohttp session, open inside `async with`, sized by `self.settings`."""

    settings: L
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        s = self.settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.max_connections, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(
                total=s.total_timeout_s, connect=s.connect_timeout_s, sock_read=s.read_timeout_s
            ),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),  # the APIs set no cookies; skipping the jar saves CPU per call
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, f"use `async with {type(self).__name__}(...)`"
        return self._session
