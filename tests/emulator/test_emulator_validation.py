"""Create requests are checked against the model facts: each bad field is a 400 naming it."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from .emu_helpers import CLASSIC, FLASH, LITE, PNG_SIGNATURE, MakeApi

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8
PNG = PNG_SIGNATURE + b"\x00" * 16
MISSING = object()  # leave the field out of the body


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"model": MISSING}, "model"),
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"model": 7}, "model"),
        ({"model": "gemini-9-ultra-image"}, "gemini-9-ultra-image"),
        ({"prompt": MISSING}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"quality": "2K"}, "quality"),  # the Lite model is 1K only
        ({"quality": "4K", "model": CLASSIC}, "quality"),
        ({"quality": "8K", "model": FLASH}, "quality"),
        ({"quality": 1}, "quality"),
        ({"size": "7x3"}, "size"),
        ({"size": "16:9"}, "size"),
        ({"size": "1x8", "model": CLASSIC}, "size"),  # the 2.5 model has only the first ten ratios
        ({"size": None}, "size"),
    ],
)
async def test_invalid_field_is_a_400_naming_it(make_api: MakeApi, fields: dict[str, Any], names: str) -> None:
    api = await make_api()
    body = {"model": LITE, "prompt": "a banana", "quality": "1K", "size": "1x1"}
    for key, value in fields.items():
        if value is MISSING:
            del body[key]
        else:
            body[key] = value
    reply = await api.post_json(body)
    assert reply.status == 400
    assert reply.body["code"] == 400 and reply.body["data"] is None
    assert names in reply.body["msg"]
    assert api.emu.stats.creates_accepted == 0


async def test_quality_and_size_default_to_1k_square(make_api: MakeApi) -> None:
    api = await make_api()
    reply = await api.post_json({"model": LITE, "prompt": "a banana"})
    assert reply.status == 200 and reply.body["code"] == 0


@pytest.mark.parametrize("body", [b"{not json", b"", b'["a list"]', b'"text"'])
async def test_a_body_that_is_not_a_json_object_is_a_400(make_api: MakeApi, body: bytes) -> None:
    api = await make_api()
    async with api.session.post(
        f"{api.emu.base_url}/image-generation", data=body, headers={**api.headers, "Content-Type": "application/json"}
    ) as resp:
        reply = await resp.json()
    assert resp.status == 400 and reply["code"] == 400 and "JSON" in reply["msg"]


async def test_edit_inputs_accept_urls_and_image_data_uris(make_api: MakeApi) -> None:
    api = await make_api()
    images = [
        "https://example.com/in.png",
        "http://cdn.example.com/a/b.jpg?x=1",
        data_uri(PNG),
        data_uri(JPEG, "image/jpeg"),
        data_uri(WEBP, "image/webp"),
    ]
    reply = await api.create(images=images)
    assert reply.status == 200 and reply.body["code"] == 0
    assert (await api.create(images=["https://example.com/x.png"] * 10)).status == 200


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        ("https://example.com/a.png", "must be a list"),
        ([], "1 to 10"),
        (["https://example.com/a.png"] * 11, "1 to 10"),
        (["https://example.com/a.png", "ftp://example.com/b.png"], "images[1]"),
        (["file:///etc/passwd"], "images[0]"),
        (["http:///no-host.png"], "no host"),
        (["https://example.com/a.png", 5], "images[1]"),
        (["data:image/png;base64,@@not-base64@@"], "base64"),
        (["data:image/png;base64,"], "empty"),
        (["data:text/plain;base64," + base64.b64encode(PNG).decode()], "data:image/"),
        (["data:image/png," + PNG.hex()], "data:image/"),
        ([data_uri(b"hello, not an image")], "not a PNG, JPEG or WebP"),
        (["https://example.com/ok.png", data_uri(PNG + b"\x00" * 200)], "images[1]: the image is larger"),
    ],
)
async def test_bad_edit_inputs_are_a_400_naming_which(make_api: MakeApi, images: Any, expected: str) -> None:
    api = await make_api(max_image_bytes=128)
    reply = await api.create(images=images)
    assert reply.status == 400 and reply.body["code"] == 400
    assert expected in reply.body["msg"]
    assert reply.body["msg"].startswith("images")


async def test_edit_input_field_name_is_a_knob(make_api: MakeApi) -> None:
    api = await make_api(images_field="input_images")
    bad = await api.create(input_images=["ftp://x/y.png"])
    assert bad.status == 400 and "input_images[0]" in bad.body["msg"]
    assert (await api.create(input_images=[data_uri(PNG)])).status == 200
