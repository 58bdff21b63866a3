"""The Vertex provider over real HTTP against the Vertex emulator, with google-auth's real token flow: a 401 sends
the request again once with a fresh token, a refused renewal, 403 naming the project, Dynamic Shared Quota
backoff, regional and express URLs, and a reply whose image is lifted out of the JSON read like any other."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

from batcher.emulator.vertex.server import DEFAULT_ACCOUNT, VertexEmulator
from batcher.providers.auth import BearerToken, CredentialRefused, Token
from batcher.providers.base import AuthRejected, Done, RateLimited, Request
from batcher.providers.google_wire import Garbled, parse_json, parse_reply, read_response
from batcher.providers.vertex import VertexProvider, VertexSettings, vertex_credential, vertex_settings
from tests.conftest import StartVertex
from tests.emulator.emu_helpers import LITE, read_png
from tests.integration.test_gemini_provider import RecordingGate, Sent

REQUEST = Request(model=LITE, prompt="a red mug", quality="1K", size="16x9")


def adc(emu: VertexEmulator, tmp: Path, **env: str) -> tuple[VertexSettings, BearerToken]:
    """Settings and the bearer credential from a key file the emulator issued, as `provider: vertex` reads them."""
    given = {"GOOGLE_CLOUD_PROJECT": emu.project, "GOOGLE_VERTEX_BASE_URL": emu.origin,
             "GOOGLE_APPLICATION_CREDENTIALS": str(emu.write_key_file(tmp / "key.json")), **env}  # fmt: skip
    settings, credential = vertex_credential(given, vertex_settings(given))
    assert isinstance(credential, BearerToken)
    return settings, credential


async def test_an_expired_token_is_refreshed_and_the_request_sent_once_more(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(token_lifetime_s=3600)
    settings, credential = adc(emu, tmp_path)
    gate = RecordingGate()
    async with VertexProvider(settings, credential, gate) as p:
        assert credential.fetches == 1  # fetched on entering: a bad credential fails before any request
        emu.advance(3601)  # the token expires by the service's clock while ours still trusts it
        outcome = await p.submit(REQUEST, before_send=Sent(gate))
    assert isinstance(outcome, Done), outcome
    assert outcome.image.data is not None and read_png(outcome.image.data).width == 1376
    assert credential.fetches == 2 and gate.events == ["acquire", "before_send", "answered"]
    stats = emu.stats
    assert (stats.expired_tokens, stats.images_billed, stats.count("generate")) == (1, 1, 2)


async def test_a_refused_renewal_after_a_401_is_auth_rejected_and_nothing_billed(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex()
    settings, real = adc(emu, tmp_path)
    first = await real.headers()

    def fetch() -> Token:
        if not fetched:
            fetched.append(1)
            return Token(first["Authorization"].removeprefix("Bearer "), None)
        raise CredentialRefused("the token endpoint refused the credentials (invalid_grant: key revoked)")

    fetched: list[int] = []
    gate = RecordingGate()
    async with VertexProvider(settings, BearerToken(fetch, "GOOGLE_APPLICATION_CREDENTIALS (key.json)"), gate) as p:
        emu.advance(4000)
        outcome = await p.submit(REQUEST, before_send=Sent(gate))
    assert isinstance(outcome, AuthRejected) and "key revoked" in outcome.message, outcome
    assert outcome.call.http_status == 401 and emu.stats.images_billed == 0


async def test_403_names_the_project(start_vertex: StartVertex, tmp_path: Path) -> None:
    emu = await start_vertex()
    settings, credential = adc(emu, tmp_path, GOOGLE_CLOUD_PROJECT="not-ours")
    async with VertexProvider(settings, credential, RecordingGate()) as p:
        outcome = await p.submit(REQUEST, before_send=Sent(RecordingGate()))
        assert isinstance(outcome, AuthRejected) and "PERMISSION_DENIED" in outcome.message
        assert "(project not-ours)" in outcome.message and DEFAULT_ACCOUNT in p.key_env
    assert emu.stats.permission_denied == 1 and emu.stats.images_billed == 0


async def test_dynamic_shared_quota_backs_off_with_jitter_growing_and_resets_on_an_answer(
    start_vertex: StartVertex, tmp_path: Path
) -> None:
    emu = await start_vertex(dsq_429_rate=1.0)
    settings, credential = adc(emu, tmp_path)
    gate = RecordingGate()
    async with VertexProvider(settings, credential, gate, rng=random.Random(1)) as p:
        outcomes = [await p.submit(REQUEST, before_send=Sent(gate)) for _ in range(4)]
        assert all(isinstance(o, RateLimited) and "Dynamic Shared Quota" in o.message for o in outcomes)
        waits = [o.wait_s for o in outcomes if isinstance(o, RateLimited)]
        for n, wait in enumerate(waits):  # full jitter in the upper half of 1, 2, 4, 8 s
            assert wait is not None and 2**n / 2 <= wait <= 2**n, waits
        assert gate.waits == waits and len(set(waits)) == 4  # the pool waits it out, each wait drawn anew
        emu.configure(dsq_429_rate=0.0)
        assert isinstance(await p.submit(REQUEST, before_send=Sent(gate)), Done)
        emu.configure(dsq_429_rate=1.0)
        again = await p.submit(REQUEST, before_send=Sent(gate))
        assert isinstance(again, RateLimited) and again.wait_s is not None and again.wait_s <= 1.0  # reset
    assert emu.stats.dsq_429s == 5 and emu.stats.images_billed == 1


def test_urls_for_global_regional_overridden_and_express() -> None:
    model = "gemini-3.1-flash-lite-image"
    tail = f"publishers/google/models/{model}:generateContent"
    assert VertexSettings("p").url(model) == f"https://aiplatform.googleapis.com/v1/projects/p/locations/global/{tail}"
    regional = VertexSettings("p", "europe-west4").url(model)
    assert regional == f"https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4/{tail}"
    assert VertexSettings("p", base_url="http://127.0.0.1:9/").url(model).startswith("http://127.0.0.1:9/v1/projects/")
    assert VertexSettings(None).url(model) == f"https://aiplatform.googleapis.com/v1/{tail}"
    settings, key = vertex_credential({"GOOGLE_API_KEY": "AIza-x"}, vertex_settings({"GOOGLE_API_KEY": "AIza-x"}))
    assert settings.project is None and "express" in key.hint and "AIza" not in key.hint


def test_a_lifted_reply_reads_as_the_parsed_one() -> None:
    image = bytes(range(256)) * 400  # over the lift threshold once in base64
    data = base64.b64encode(image).decode()
    doc = {"candidates": [{"content": {"parts": [{"text": 'a "data": "x" in a text'},
                                                 {"inlineData": {"mimeType": "image/png", "data": data}}]}}],
           "usageMetadata": {"candidatesTokenCount": 1290}, "responseId": "r1"}  # fmt: skip
    plain = json.dumps(doc).encode()
    escaped = plain.replace(b"/", b"\\/")  # JSON may escape a slash: then the parser reads it
    for raw in (plain, escaped, json.dumps(doc, indent=1).encode()):
        lifted, parsed = parse_reply(raw), parse_json(raw)
        assert lifted is not None and parsed is not None
        assert read_response(lifted) == read_response(parsed)
    garbled = plain.replace(data[:8].encode(), b"!!!!!!!!")  # not base64 in either alphabet: never decoded leniently
    assert isinstance(read_response(parse_reply(garbled) or {}), Garbled)
