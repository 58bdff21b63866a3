"""How a client proves who it is: an API key in a header, or a bearer token renewed before it expires.

Both are a `Credential`: the headers for the next request, what a 401 does (a key cannot be renewed; a token is
fetched again, once, and the request sent again: a 401 proves nothing was created), the words that tell a person
what to check (`hint`, written here once per credential, never the secret) and a scrubber for messages that might
echo the secret.

A bearer token is reused by every request until it is close to its expiry. The margin is at most half the token's
life, so a token that lives a minute is not fetched again per call, and one that lives an hour is renewed five
minutes early. One task renews at a time (an asyncio lock); the fetch itself may block (google-auth's refresh
does), so it runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

RENEW_MARGIN_S = 300.0  # renew this long before expiry, or half the token's life if that is shorter


class CredentialUnavailable(Exception):
    """A token could not be fetched for now (its endpoint unreachable): nothing was sent; try again later."""


class CredentialRefused(Exception):
    """The token endpoint refused the credential: no request can be authorised; the message never holds a secret."""


@dataclass(frozen=True)
class Token:
    """An access token and when it expires (epoch seconds on the credential's clock; None: not said)."""

    value: str
    expires_at: float | None

    def __repr__(self) -> str:  # never the token
        return f"Token(expires_at={self.expires_at!r})"


class Credential(Protocol):
    """What a provider asks of its credential."""

    hint: str  # what to check when the API refuses it ("GEMINI_API_KEY or GOOGLE_API_KEY"); never the secret

    async def prepare(self) -> None:
        """Make sure the credential works before anything is sent (a token is fetched now); raises AuthError."""
        ...

    async def headers(self) -> dict[str, str]:
        """The headers that authorise the next request."""
        ...

    async def renew(self, used: dict[str, str]) -> bool:
        """After a 401 to a request sent with `used`: whether a fresh credential is ready to send it again."""
        ...

    def scrub(self, text: str) -> str:
        """`text` with every secret this credential holds replaced."""
        ...


class ApiKey:
    """A key sent in one header on every request; a 401 is final."""

    def __init__(self, header: str, key: str, hint: str) -> None:
        self._header, self._key, self.hint = header, key, hint

    def __repr__(self) -> str:
        return f"ApiKey({self._header!r}, hint={self.hint!r})"

    async def prepare(self) -> None:
        return None

    async def headers(self) -> dict[str, str]:
        return {self._header: self._key}

    async def renew(self, used: dict[str, str]) -> bool:
        return False

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "[key]") if self._key else text


class BearerToken:
    """`Authorization: Bearer` with a token from `fetch` (blocking: run in a thread), renewed by one task at a time
    before its expiry, and once after a 401. `now` is the clock expiries are read on (a test's own)."""

    def __init__(self, fetch: Callable[[], Token], hint: str, *, now: Callable[[], float] = time.time,
                 margin_s: float = RENEW_MARGIN_S) -> None:  # fmt: skip
        self._fetch, self.hint, self._now, self._margin = fetch, hint, now, margin_s
        self._token: Token | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0  # tokens fetched so far (a test reads it; never the tokens)

    def __repr__(self) -> str:
        return f"BearerToken(hint={self.hint!r}, fetches={self.fetches})"

    def renew_at(self, token: Token, fetched_at: float) -> float:
        """When to fetch again: `margin` before expiry, but never earlier than half-way through the token's life."""
        if token.expires_at is None:
            return float("inf")  # no expiry said: renewed only after a 401
        life = max(0.0, token.expires_at - fetched_at)
        return token.expires_at - min(self._margin, life / 2)

    async def prepare(self) -> None:
        await self.headers()

    async def headers(self) -> dict[str, str]:
        token = self._token
        if token is None or self._now() >= self._renew_at:
            token = await self._refresh(stale=token)
        return {"Authorization": f"Bearer {token.value}"}

    async def renew(self, used: dict[str, str]) -> bool:
        sent = used.get("Authorization", "").removeprefix("Bearer ")
        # The token refused, if it is still the current one; else another task renewed it already.
        stale = self._token if self._token is not None and self._token.value == sent else None
        if stale is not None:
            self._renew_at = 0.0  # refused: due now, whatever its expiry said
        await self._refresh(stale=stale)
        return True

    async def _refresh(self, *, stale: Token | None) -> Token:
        async with self._lock:
            current = self._token
            # Another task renewed while this one waited for the lock: use its token.
            if current is not None and current is not stale and self._now() < self._renew_at:
                return current
            fetched_at = self._now()
            token = await asyncio.to_thread(self._fetch)
            self.fetches += 1
            self._token, self._renew_at = token, self.renew_at(token, fetched_at)
            return token

    def scrub(self, text: str) -> str:
        token = self._token
        return text.replace(token.value, "[token]") if token is not None and token.value else text
