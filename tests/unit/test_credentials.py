"""Credentials (providers/auth.py) on a clock the test controls: when a bearer token is renewed, that one task
renews it however many ask at once, that a 401 renews it once, and that an API key is never renewed."""

from __future__ import annotations

import asyncio
import threading

import pytest

from batcher.providers.auth import RENEW_MARGIN_S, ApiKey, BearerToken, Token


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Issuer:
    """A token endpoint: each fetch a new token living `life` seconds on `clock`; `gate` holds fetches back."""

    def __init__(self, clock: Clock, life: float | None) -> None:
        self.clock, self.life = clock, life
        self.issued: list[Token] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self) -> Token:
        self.gate.wait(10)
        token = Token(f"tok-{len(self.issued)}", None if self.life is None else self.clock() + self.life)
        self.issued.append(token)
        return token


def bearer(life: float | None) -> tuple[BearerToken, Issuer, Clock]:
    clock = Clock()
    issuer = Issuer(clock, life)
    return BearerToken(issuer, "GOOGLE_APPLICATION_CREDENTIALS (key.json)", now=clock), issuer, clock


async def value(cred: BearerToken) -> str:
    return (await cred.headers())["Authorization"].removeprefix("Bearer ")


@pytest.mark.parametrize(
    ("life", "renewed_after"),
    [(3600.0, 3600.0 - RENEW_MARGIN_S), (60.0, 30.0), (2.0, 1.0)],  # the margin, or half the token's life
)
async def test_a_token_is_reused_until_its_renewal_margin(life: float, renewed_after: float) -> None:
    cred, issuer, clock = bearer(life)
    assert await value(cred) == "tok-0"
    for _ in range(50):  # every request until then reuses it
        assert await value(cred) == "tok-0"
    clock.t += renewed_after - 0.001
    assert await value(cred) == "tok-0"
    clock.t += 0.002
    assert await value(cred) == "tok-1" and len(issuer.issued) == cred.fetches == 2


async def test_a_token_with_no_expiry_is_renewed_only_after_a_401() -> None:
    cred, _, clock = bearer(None)
    used = await cred.headers()
    clock.t += 10 * 86400
    assert await cred.headers() == used and cred.fetches == 1
    assert await cred.renew(used) and await value(cred) == "tok-1"


async def test_many_tasks_asking_at_once_cause_one_fetch() -> None:
    cred, issuer, clock = bearer(600.0)
    issuer.gate.clear()  # the first fetch blocks (in its thread) while 20 more tasks ask
    asking = [asyncio.create_task(value(cred)) for _ in range(20)]
    await asyncio.sleep(0.05)
    issuer.gate.set()
    assert set(await asyncio.gather(*asking)) == {"tok-0"} and cred.fetches == 1
    clock.t += 600.0  # expired: again one fetch for all
    assert set(await asyncio.gather(*(value(cred) for _ in range(20)))) == {"tok-1"} and cred.fetches == 2


async def test_a_401_renews_once_however_many_requests_it_refused() -> None:
    cred, _, _ = bearer(3600.0)
    used = await cred.headers()
    # ten requests sent with the same token all come back 401: one fetch, and each sends again with the new one
    assert all(await asyncio.gather(*(cred.renew(used) for _ in range(10))))
    assert cred.fetches == 2 and await value(cred) == "tok-1"
    # a 401 to a token already replaced fetches nothing more
    assert await cred.renew(used) and cred.fetches == 2


async def test_the_event_loop_runs_while_a_token_is_fetched() -> None:
    cred, issuer, _ = bearer(3600.0)
    issuer.gate.clear()
    fetching = asyncio.create_task(cred.headers())
    ticks = 0
    for _ in range(5):  # the loop is free: the blocking fetch runs in a thread
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5 and not fetching.done()
    issuer.gate.set()
    await fetching


async def test_an_api_key_is_one_header_never_renewed_and_scrubbed() -> None:
    key = ApiKey("x-goog-api-key", "AIza-secret", "GOOGLE_API_KEY")
    assert await key.headers() == {"x-goog-api-key": "AIza-secret"}
    assert not await key.renew({"x-goog-api-key": "AIza-secret"})
    assert key.scrub("bad key AIza-secret") == "bad key [key]" and "AIza" not in repr(key)


async def test_the_token_never_shows() -> None:
    cred, _, _ = bearer(3600.0)
    token = await value(cred)
    assert token not in repr(cred) and token not in repr(cred._token)
    assert cred.scrub(f"echoed {token}") == "echoed [token]"
