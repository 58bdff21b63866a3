"""Vertex credentials against the emulator: google-auth's real service-account flow at its token endpoint,
tokens that expire and are refreshed, refused keys, and the 401/403/404 a project route answers."""

from __future__ import annotations

import datetime

import aiohttp
import pytest
from google.auth import exceptions

from batcher.emulator.vertex.tokens import new_key_file

from .emu_helpers import read_png
from .gemini_helpers import image_bytes
from .vertex_helpers import StartVertex, VertexApi, credentials, fetch_token


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # google-auth keeps naive UTC


async def test_a_service_account_key_gets_a_token_that_generates_an_image(start_vertex: StartVertex) -> None:
    emu = await start_vertex(token_lifetime_s=1800)
    creds = credentials(emu.new_key_file())
    before = _utcnow()
    token = await fetch_token(creds)
    after = _utcnow()
    assert token.startswith("ya29.") and creds.expiry is not None
    # expires_in as google-auth read it: the knob's lifetime
    lifetime = datetime.timedelta(seconds=1800)
    assert before + lifetime <= creds.expiry <= after + lifetime + datetime.timedelta(seconds=1)
    async with aiohttp.ClientSession() as session:
        reply = await VertexApi(session, emu, token).generate()
    assert reply.status == 200, reply.body
    assert read_png(image_bytes(reply.body)).width == 1024
    assert reply.body["createTime"].endswith("Z") and reply.body["usageMetadata"]["candidatesTokenCount"] == 1290
    stats = emu.stats
    assert (stats.tokens_issued, stats.images_billed) == (1, 1)
    assert stats.billed_by_project == {emu.project_number: 1}


async def test_an_expired_token_is_refused_until_google_auth_refreshes_it(start_vertex: StartVertex) -> None:
    emu = await start_vertex(token_lifetime_s=600)
    creds = credentials(emu.new_key_file())
    async with aiohttp.ClientSession() as session:
        api = VertexApi(session, emu, await fetch_token(creds))
        assert (await api.generate()).status == 200
        emu.advance(601)
        expired = await api.generate()
        assert expired.status == 401 and expired.body["error"]["status"] == "UNAUTHENTICATED"
        assert expired.body["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
        assert "invalid_token" in expired.headers["WWW-Authenticate"]
        old = api.token
        api.token = await fetch_token(creds)
        assert api.token != old
        assert (await api.generate()).status == 200
    stats = emu.stats
    assert (stats.tokens_issued, stats.expired_tokens, stats.images_billed) == (2, 1, 2)


async def test_google_auth_refreshes_a_short_lived_token_before_each_use(start_vertex: StartVertex) -> None:
    """A token living less than google-auth's refresh margin (225 s) counts as expired at once: it is fetched
    again before every request, which is why a client must keep its own renewal margin under half a life."""
    emu = await start_vertex(token_lifetime_s=60)
    creds = credentials(emu.new_key_file())
    await fetch_token(creds)
    assert creds.expired
    await fetch_token(creds)
    assert emu.stats.tokens_issued == 2


async def test_refused_keys_answer_as_googles_token_endpoint(start_vertex: StartVertex) -> None:
    emu = await start_vertex()
    stranger, _ = new_key_file("who@elsewhere.iam.gserviceaccount.com", emu.token_uri, "elsewhere")
    with pytest.raises(exceptions.RefreshError, match="invalid_grant: Invalid grant: account not found"):
        await fetch_token(credentials(stranger))
    # a known account signing with a key it does not hold
    forged = {**emu.new_key_file("me@emulator-project.iam.gserviceaccount.com"), "private_key": stranger["private_key"]}
    with pytest.raises(exceptions.RefreshError, match="invalid_grant: Invalid JWT Signature"):
        await fetch_token(credentials(forged))
    async with aiohttp.ClientSession() as session:
        async with session.post(emu.token_uri, data={"grant_type": "password", "assertion": "x"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "unsupported_grant_type"
        async with session.post(
            emu.token_uri, data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "a.b"}
        ) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
    assert (emu.stats.tokens_issued, emu.stats.tokens_refused) == (0, 4)


@pytest.mark.parametrize(
    ("token", "reason"), [("", "CREDENTIALS_MISSING"), ("ya29.never-issued", "ACCESS_TOKEN_TYPE_UNSUPPORTED")]
)
async def test_a_missing_or_unknown_token_is_unauthenticated(
    start_vertex: StartVertex, token: str, reason: str
) -> None:
    emu = await start_vertex()
    async with aiohttp.ClientSession() as session:
        reply = await VertexApi(session, emu, token).generate()
    assert reply.status == 401 and reply.body["error"]["details"][0]["reason"] == reason
    assert (emu.stats.unauthenticated, emu.stats.images_billed) == (1, 0)


async def test_projects_locations_and_models_are_checked_in_googles_order(start_vertex: StartVertex) -> None:
    emu = await start_vertex(projects={"mine": "42", "other": "43"})
    token = await fetch_token(credentials(emu.new_key_file()))
    async with aiohttp.ClientSession() as session:
        api = VertexApi(session, emu, token)
        denied = await api.generate(project="not-mine")
        assert denied.status == 403 and denied.body["error"]["status"] == "PERMISSION_DENIED"
        assert denied.body["error"]["details"][0]["reason"] == "IAM_PERMISSION_DENIED"
        assert "aiplatform.endpoints.predict" in denied.body["error"]["message"]
        by_number = await api.generate(project="43", location="us-central1")
        assert by_number.status == 200
        nowhere = await api.generate(location="mars-north1")
        assert nowhere.status == 404 and nowhere.body["error"]["status"] == "NOT_FOUND"
        no_model = await api.generate(model="imagen-9")
        assert no_model.status == 404 and "Publisher Model" in no_model.body["error"]["message"]
        unauthenticated = await VertexApi(session, emu, "").generate(project="not-mine")
        assert unauthenticated.status == 401  # the token is checked before the project
    assert emu.stats.billed_by_project == {"43": 1} and emu.stats.permission_denied == 1


async def test_express_mode_takes_an_api_key_and_no_project(start_vertex: StartVertex) -> None:
    emu = await start_vertex(api_key="express-key")
    async with aiohttp.ClientSession() as session:
        api = VertexApi(session, emu, "")
        good = await api.express()
        assert good.status == 200 and "createTime" in good.body
        wrong = await api.express(key="nope")
        assert wrong.status == 400 and wrong.body["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        missing = await api.express(key="")
        assert missing.status == 401
    stats = emu.stats
    assert (stats.express_requests, stats.images_billed, stats.billed_by_project) == (1, 1, {"express": 1})


def test_the_suite_never_asks_the_metadata_server() -> None:
    """tests/conftest.py points google-auth away from 169.254.169.254 before it is imported: it neither probes
    for Compute Engine nor could reach a metadata server (its address is a closed loopback port)."""
    from google.auth.compute_engine import _metadata
    from google.auth.transport.requests import Request

    assert _metadata._NO_GCE_CHECK and not _metadata.is_on_gce(Request())  # type: ignore[no-untyped-call]
    host = _metadata._GCE_METADATA_HOST
    assert (
        host is not None
        and host.startswith("127.0.0.1:")
        and _metadata._get_metadata_ip_root(False).startswith("http://127.0.0.1:")
    )
