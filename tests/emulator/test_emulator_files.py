"""Hosted files: real PNGs at the documented pixel size, derived from the prompt, with expiring URLs."""

from __future__ import annotations

import pytest

from .emu_helpers import CLASSIC, FLASH, LITE, MakeApi, read_png

# Pixel sizes at 1K, copied from the published size tables (a third reading, so a typo in the emulator's table shows).
SIZES_31 = {
    "1x1": (1024, 1024),
    "2x3": (848, 1264),
    "3x2": (1264, 848),
    "3x4": (896, 1200),
    "4x3": (1200, 896),
    "4x5": (928, 1152),
    "5x4": (1152, 928),
    "9x16": (768, 1376),
    "16x9": (1376, 768),
    "21x9": (1584, 672),
    "1x4": (512, 2048),
    "4x1": (2048, 512),
    "1x8": (384, 3072),
    "8x1": (3072, 384),
}
SIZES_25 = {
    "1x1": (1024, 1024),
    "2x3": (832, 1248),
    "3x2": (1248, 832),
    "3x4": (864, 1184),
    "4x3": (1184, 864),
    "4x5": (896, 1152),
    "5x4": (1152, 896),
    "9x16": (768, 1344),
    "16x9": (1344, 768),
    "21x9": (1536, 672),
}
TIER_SCALE = {"0.5K": 0.5, "1K": 1, "2K": 2, "4K": 4}


@pytest.mark.parametrize(
    ("model", "tier", "sizes"),
    [
        (LITE, "1K", SIZES_31),
        (FLASH, "0.5K", SIZES_31),
        (FLASH, "1K", SIZES_31),
        (FLASH, "2K", SIZES_31),
        (FLASH, "4K", SIZES_31),
        (CLASSIC, "1K", SIZES_25),
    ],
)
async def test_every_aspect_ratio_has_the_documented_pixel_size(
    make_api: MakeApi, model: str, tier: str, sizes: dict[str, tuple[int, int]]
) -> None:
    api = await make_api()
    for ratio, (width, height) in sizes.items():
        data = await api.generate(model=model, quality=tier, size=ratio, prompt=f"{model} {tier} {ratio}")
        status, body = await api.download(data["file_url"])
        assert status == 200
        png = read_png(body)  # checks signature, CRCs and that IDAT holds exactly `height` scanlines
        expected = (int(width * TIER_SCALE[tier]), int(height * TIER_SCALE[tier]))
        assert (png.width, png.height) == expected, (model, tier, ratio)
        assert png.colour_type == 3 and len(png.palette) % 3 == 0  # indexed colour needs a palette


async def test_downloads_carry_the_png_content_type(make_api: MakeApi) -> None:
    api = await make_api()
    url = (await api.generate())["file_url"]
    async with api.session.get(url) as resp:
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.content_length == len(await resp.read())


async def test_same_prompt_same_bytes_different_prompt_different_bytes(make_api: MakeApi) -> None:
    api = await make_api()
    first = (await api.download((await api.generate(prompt="a red fox"))["file_url"]))[1]
    again = (await api.download((await api.generate(prompt="a red fox"))["file_url"]))[1]
    other = (await api.download((await api.generate(prompt="a red fix"))["file_url"]))[1]
    assert first == again
    assert first != other
    assert read_png(first).pixels != read_png(other).pixels or read_png(first).palette != read_png(other).palette


async def test_the_same_prompt_reproduces_across_emulators(make_api: MakeApi) -> None:
    one, two = await make_api(), await make_api()
    a = (await one.download((await one.generate(prompt="stable"))["file_url"]))[1]
    b = (await two.download((await two.generate(prompt="stable"))["file_url"]))[1]
    assert a == b


async def test_expired_url_is_410_and_a_fresh_query_gives_a_fresh_url(make_api: MakeApi) -> None:
    api = await make_api(url_ttl_s=30)
    data = await api.generate()
    old_url = data["file_url"]
    assert (await api.download(old_url))[0] == 200
    api.emu.advance(31)
    assert (await api.download(old_url))[0] == 410
    new_url = (await api.query(data["task_id"])).data["file_url"]
    assert new_url != old_url
    assert (await api.download(new_url))[0] == 200
    assert api.emu.stats.expired_downloads == 1 and api.emu.stats.downloads == 2


async def test_unknown_file_is_404(make_api: MakeApi) -> None:
    api = await make_api()
    data = await api.generate()
    task_id = data["task_id"]
    assert (await api.download(f"{api.emu.origin}/files/{task_id}/forged.png"))[0] == 404
    assert (await api.download(f"{api.emu.origin}/files/nope/forged.png"))[0] == 404


async def test_file_urls_use_the_listening_address(make_api: MakeApi) -> None:
    api = await make_api()
    url = (await api.generate())["file_url"]
    assert url.startswith(f"http://127.0.0.1:{api.emu.port}/files/") and url.endswith(".png")
