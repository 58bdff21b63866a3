"""The HTML report in a real browser: a run against the emulator, rendered by the real CLI, opened in headless
Chromium from the system's packages and driven over the DevTools protocol (tests/acceptance/browser_kit.py).

Set BATCHER_GALLERY_SHOT=docs/gallery.png to refresh the screenshot of docs/report.md from the first test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, update

from batcher import gallery
from batcher.emulator import Latency
from batcher.emulator.images import encode_png, photo_png
from batcher.gallery import CHUNK
from batcher.imageinfo import sniff
from batcher.models import JobSettings, TaskSpec, import_batches
from batcher.money import fmt_usd
from batcher.store import Job, Store
from batcher.store.tables import api_calls, tasks
from batcher.thumbs import THUMB_PX, Thumb
from tests.acceptance.browser_kit import CHROMIUM, VIEWPORT, chromium
from tests.acceptance.cli_kit import batcher, cli_env
from tests.conftest import OpenStore, StartEmulator
from tests.integration.runner_kit import MODEL, PRICE, drive, fast_config, load, specs

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"), reason=f"no {CHROMIUM} (apt-get install chromium); CI has it"
)
SCRIPT_PROMPT = "<script>alert(1)</script>"
TRICKY_PROMPT = 'Sticker of a mug saying "hi" & <img src=x onerror=alert(2)>'
CATALOG = [
    ("Studio shot of a red ceramic mug on a white background, soft shadows", "1x1"),
    (SCRIPT_PROMPT, "1x1"),
    ("Banner of a blue mug in an aspect ratio the API refuses", "7x7"),  # the emulator answers HTTP 400
    ("A flat-lay of a leather notebook, a brass pen and a coffee cup on an oak desk", "16x9"),
    ("Product photo of a canvas tote bag hanging on a hook, morning light", "3x4"),
    (TRICKY_PROMPT, "4x5"),
    ("Die-cut sticker of a fox, flat vector style, thick white border", "1x1"),
    ("Die-cut sticker of an owl, 3d clay style, thick white border", "1x1"),
    ("Lifestyle photo of a sage green mug on a windowsill, rain outside", "4x5"),
    ("Top-down photo of a ceramic mug of latte art on a marble table", "1x1"),
    ("Hero banner: a row of six mugs in pastel colours, shallow depth of field", "16x9"),
    ("Phone wallpaper of a mug-shaped planet orbiting a teapot star", "9x16"),
]

# Everything the assertions need, read from the live DOM after the page's own script ran.
FACTS = """(() => {
  const cards = Array.from(document.querySelectorAll("#grid .card"));
  return {
    cards: cards.map((c) => ({status: c.dataset.status, size: c.dataset.size, hidden: c.hidden,
      prompt: c.querySelector(".prompt").textContent, error: c.querySelector(".err")?.textContent ?? null,
      missing: c.classList.contains("missing")})),
    images: Array.from(document.querySelectorAll("#grid img")).map((i) => ({src: i.getAttribute("src"),
      loading: i.getAttribute("loading"), href: i.parentElement.getAttribute("href")})),
    stats: Object.fromEntries(Array.from(document.querySelectorAll("[data-stat]"),
      (e) => [e.dataset.stat, e.querySelector("b").textContent])),
    scripts: document.scripts.length,
    injected: document.querySelectorAll("#grid script, #grid [onerror]").length,
    shown: document.getElementById("shown").textContent,
    hash: location.hash,
  };
})()"""
VISIBLE = """Array.from(document.querySelectorAll("#grid .card")).filter((c) => !c.hidden)
  .map((c) => c.querySelector(".prompt").textContent)"""
# True once every image in the viewport has loaded and been decoded (`decoding="async"` paints it a little
# later than its load), and two frames have passed, so a screenshot shows them. An IntersectionObserver asks
# without forcing a layout of the sections `content-visibility` skips, which asking each image for its
# getBoundingClientRect() would do (minutes for 10,000 cards).
IMAGES_IN_VIEW = """new Promise((resolve) => {
  const seen = new IntersectionObserver(async (entries) => {
    seen.disconnect();
    const shown = entries.filter((e) => e.isIntersecting).map((e) => e.target);
    const ready = shown.length > 0 && shown.every((i) => i.complete && i.naturalWidth > 0);
    if (ready) {
      await Promise.all(shown.map((i) => i.decode()));
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    }
    resolve(ready);
  });
  document.querySelectorAll("#grid img").forEach((i) => seen.observe(i));
})"""

# Scrolls the page from top to bottom in 20 steps, waiting for each step to be painted; the slowest step in ms.
SCROLL_THROUGH = """(async () => {
  const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const end = document.documentElement.scrollHeight - innerHeight;
  let worst = 0;
  for (let i = 1; i <= 20; i += 1) {
    const t = performance.now();
    window.scrollTo(0, end * i / 20);
    await frame();
    worst = Math.max(worst, performance.now() - t);
  }
  return worst;
})()"""


def test_images_are_linked_relative_to_the_page_and_every_string_is_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "out" / 'a "b" <c> #1 ?.png'
    row = {
        "key": "k" * 32, "prompt": "<b>bold</b> & co", "size": "1x1", "status": "failed", "attempts": 2,
        "file": str(odd), "cost_usd": "0.067", "error": "</p><script>x()</script>", "possible_double_charge": True,
        "source": "<m>.yaml:3", "cached_from": 'other:"x".png', "task": "<i>name</i>",
    }  # fmt: skip
    head = {
        "job": "j", "tasks": 1, "retired": 0, "status_counts": {"failed": 1}, "billed_calls": 1, "cost_usd": "0.067",
        "unit_price_usd": {MODEL: "0.067"}, "budget_usd": None, "budget_left_usd": None, "price_mismatches": 0,
        "failed_generations": 0, "unknown_submissions": 1, "api_calls": {}, "calls_per_image": None,
        "rate_limited_429": 0, "wall_time_s": None,
    }  # fmt: skip
    text = "".join(gallery.render(head, [row], [], str(tmp_path / "reports" / "r.html")))
    assert 'src="../out/a%20%22b%22%20%3Cc%3E%20%231%20%3F.png"' in text
    assert '<p class="name" title="&lt;i&gt;name&lt;/i&gt;">&lt;i&gt;name&lt;/i&gt;</p>' in text
    # with thumbnails: the card shows the thumbnail and links the original; a problem is text, escaped
    shown = Thumb(tmp_path / "reports" / "r_files" / "thumbs" / "<t>.webp", 400, 300)
    text = "".join(gallery.render(head, [row], [], str(tmp_path / "reports" / "r.html"), {str(odd): shown}))
    assert 'href="../out/a%20%22b%22%20%3Cc%3E%20%231%20%3F.png"><img src="r_files/thumbs/%3Ct%3E.webp"' in text
    assert 'width="400" height="300"' in text
    broken = Thumb(None, problem="unreadable image: <x>")
    text = "".join(gallery.render(head, [row], [], str(tmp_path / "reports" / "r.html"), {str(odd): broken}))
    assert ">unreadable image: &lt;x&gt;</div>" in text and "<img" not in text.split("<main")[1].split("</main>")[0]
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in text and "&lt;/p&gt;&lt;script&gt;x()&lt;/script&gt;" in text
    assert "&lt;m&gt;.yaml:3" in text and 'title="other:&quot;x&quot;.png"' in text
    assert text.count("<script") == 1 and "http://" not in text and "https://" not in text


async def render(tmp_path: Path, page: Path, *extra: str) -> None:
    done = await batcher("report", *extra, "--db", str(tmp_path / "batcher.db"), "--format", "html", "-o", str(page),
                         env=cli_env(None), cwd=tmp_path)  # fmt: skip
    assert done.code == 0, done.err


@needs_chromium
async def test_the_gallery_of_a_run_shows_its_images_costs_and_failures(
    open_store: OpenStore, start_emu: StartEmulator, tmp_path: Path
) -> None:
    store = await open_store()
    # a rate limit the pool runs into now and then, so the throughput chart has 429s to show
    emu = await start_emu(latency=Latency("uniform", 0.2, 1.0), seed=3, rate_limit=10.0, burst=2.0)
    items = [TaskSpec(MODEL, p, "1K", size, f"{i:02d}-{size}.png", source=f"catalog.yaml:{i + 2}")
             for i, (p, size) in enumerate(CATALOG)]  # fmt: skip
    job = JobSettings("spring-catalog", str(tmp_path / "out"), budget_usd=Decimal(5))
    await store.import_manifest(job, "catalog.yaml", import_batches(items), extra={}, now=time.time())
    await drive(store, emu, fast_config(max_in_flight=4), name=job.name)
    ledger = await store.ledger(await store.job(job.name))
    assert ledger.counts == {"succeeded": len(CATALOG) - 1, "failed": 1}

    page = tmp_path / "report.html"
    await render(tmp_path, page, job.name)
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    assert SCRIPT_PROMPT not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text

    async with chromium(tmp_path / "chromium-profile") as browser:
        await browser.open(page.as_uri())
        facts = await browser.eval(FACTS)
        cards = facts["cards"]
        assert len(cards) == len(CATALOG) and facts["shown"] == str(len(CATALOG))
        assert facts["stats"]["tasks"] == str(len(CATALOG))
        assert facts["stats"]["status-succeeded"] == str(len(CATALOG) - 1)
        assert facts["stats"]["status-failed"] == "1"
        assert facts["stats"]["cost"] == fmt_usd(ledger.cost_micros) == fmt_usd((len(CATALOG) - 1) * PRICE)
        assert facts["stats"]["rate-limited"] == str(ledger.rate_limited)
        assert facts["stats"]["unknown"] == str(ledger.unknown_submissions)
        assert facts["stats"]["budget-left"] == fmt_usd(5_000_000 - ledger.cost_micros)
        # the injected markup is text on the page, not elements in it: our one script, no alert
        assert [c["prompt"] for c in cards if c["prompt"] in (SCRIPT_PROMPT, TRICKY_PROMPT)] == [
            SCRIPT_PROMPT, TRICKY_PROMPT,
        ]  # fmt: skip
        assert facts["scripts"] == 1 and facts["injected"] == 0
        failed = [c for c in cards if c["status"] == "failed"]
        assert len(failed) == 1 and failed[0]["size"] == "7x7" and "7x7" in (failed[0]["error"] or "")
        # images: lazily loaded thumbnails linking the originals, both relative to the page (so page, thumbnails
        # and output folder zip together), all found
        assert len(facts["images"]) == len(CATALOG) - 1
        for img in facts["images"]:
            assert img["loading"] == "lazy" and img["src"].startswith("report_files/thumbs/")
            assert img["href"].startswith("out/") and (tmp_path / img["href"]).is_file()
            assert (tmp_path / img["src"]).is_file()
        await browser.until(IMAGES_IN_VIEW)

        # a filter from the URL: what a shared link to "the failed ones" shows
        await browser.open(page.as_uri() + "#status=failed")
        assert await browser.eval(VISIBLE) == [CATALOG[2][0]]
        await browser.open(page.as_uri() + "#size=16x9&q=MUG")
        assert await browser.eval(VISIBLE) == [CATALOG[10][0]]

        # the controls: choose a size, then search; the count follows and the URL keeps the view
        await browser.open(page.as_uri())
        await browser.eval("""(() => { const s = document.getElementById("f-size");
            s.value = "4x5"; s.dispatchEvent(new Event("change")); })()""")
        assert await browser.eval(VISIBLE) == [TRICKY_PROMPT, CATALOG[8][0]]
        await browser.eval("""(() => { const q = document.getElementById("f-q");
            q.value = "sage"; q.dispatchEvent(new Event("input")); })()""")
        await browser.until("document.getElementById('shown').textContent === '1'")
        assert await browser.eval(VISIBLE) == [CATALOG[8][0]]
        assert await browser.eval("location.hash") == "#size=4x5&q=sage"

        # a click on a thumbnail opens the full image over the page
        await browser.eval("document.querySelector('#grid .card:not([hidden]) a.thumb').click()")
        box = await browser.eval("""(() => { const box = document.getElementById("box");
            return {open: box.open, src: box.querySelector("img").getAttribute("src")}; })()""")
        assert box["open"] and box["src"].startswith("out/08-4x5")

        await browser.open(page.as_uri())
        await browser.until(IMAGES_IN_VIEW)
        shot = await browser.screenshot()
        assert browser.dialogs == [] and browser.errors == []

    info = sniff(shot[:64])
    assert info is not None and (info.width, info.height) == VIEWPORT
    (tmp_path / "gallery.png").write_bytes(shot)
    if target := os.environ.get("BATCHER_GALLERY_SHOT"):
        shutil.copyfile(tmp_path / "gallery.png", target)


LARGE = 10_000  # tasks
FAILING_EVERY = 50  # every 50th synthetic task failed
SHAPES = [(1024, 1024), (1376, 768), (768, 1376), (896, 1152)]  # px


async def finish_overnight(store: Store, job: Job, out: Path) -> None:
    """Every task of `job` done (every FAILING_EVERY-th failed), with its API calls, written straight into the store.

    Each task gets its own small image (a sixteenth of its size), so its own thumbnail: the browser would take
    one file shared by many cards from its cache, lazy or not, and making 10,000 full-size thumbnails takes minutes.
    """
    out.mkdir()
    t0 = time.time() - 8 * 3600
    done = []
    for i, key in enumerate([r["key"] async for r in store.task_rows(job)]):  # in manifest order
        failed = i % FAILING_EVERY == 0
        if not failed:
            w, h = SHAPES[i % len(SHAPES)]
            (out / f"{i}.png").write_bytes(encode_png(f"image {i}", w // 16, h // 16))
        done.append({
            "jid": job.id, "k": key, "st": "failed" if failed else "succeeded",
            "path": None if failed else str(out / f"{i}.png"), "cost": 0 if failed else PRICE,
            "w": SHAPES[i % len(SHAPES)][0], "h": SHAPES[i % len(SHAPES)][1],
            "err": "content refused" if failed else None, "sub": t0 + i * 2.5, "fin": t0 + i * 2.5 + 4 + i % 13,
        })  # fmt: skip
    values = {"status": "st", "output_path": "path", "width": "w", "height": "h", "cost_micros": "cost",
              "last_error": "err", "submitted_at": "sub", "finished_at": "fin"}  # fmt: skip
    calls = [
        {"job_id": job.id, "kind": kind, "http_status": 200, "outcome": "ok", "latency_ms": 80.0, "at": d["sub"] + k}
        for d in done
        for k, kind in enumerate(("create", "query", "download"))
    ]
    async with store.engine.begin() as conn:
        where = (tasks.c.job_id == bindparam("jid"), tasks.c.key == bindparam("k"))  # the unique index
        await conn.execute(update(tasks).where(*where).values({c: bindparam(p) for c, p in values.items()}), done)
        await conn.execute(insert(api_calls), calls)


@needs_chromium
@pytest.mark.slow
async def test_a_10000_task_report_renders_and_stays_usable(open_store: OpenStore, tmp_path: Path) -> None:
    store = await open_store()
    await load(store, specs(LARGE, prefix="catalog item"), tmp_path / "out")
    await finish_overnight(store, await store.job("job"), tmp_path / "out")
    failed, sections = LARGE // FAILING_EVERY, -(-LARGE // CHUNK)

    # How fast it renders, loads and scrolls is bench/gallery_browser.py's to measure (a shared, loaded machine
    # makes any time bound here a flake); this test holds what does not depend on the machine's speed.
    page = tmp_path / "report.html"
    await render(tmp_path, page)
    size = page.stat().st_size
    assert size < LARGE * 1_000, f"{size} bytes for {LARGE} tasks"  # about 420 bytes a card

    async with chromium(tmp_path / "chromium-profile") as browser:
        await browser.open(page.as_uri(), timeout=120)
        layout = await browser.eval("""(() => { const s = document.querySelectorAll("#grid > section");
            return {cards: document.querySelectorAll("#grid .card").length, sections: s.length,
              skippable: Array.from(s).every((e) => getComputedStyle(e).contentVisibility === "auto"),
              lazy: document.querySelectorAll("#grid img[loading=lazy]").length,
              shown: document.getElementById("shown").textContent}; })()""")
        assert layout == {"cards": LARGE, "sections": sections, "skippable": True, "lazy": LARGE - failed,
                          "shown": str(LARGE)}  # fmt: skip
        # lazy loading: only the images near the viewport were fetched, not ten thousand
        await browser.until(IMAGES_IN_VIEW)
        loaded = await browser.eval("Array.from(document.images).filter((i) => i.naturalWidth > 0).length")
        assert 0 < loaded < 500
        # top to bottom in 20 painted jumps: each lays out only the sections coming into view
        await browser.eval(SCROLL_THROUGH)
        await browser.until(IMAGES_IN_VIEW)
        # filtering (a changed URL fragment, as a pasted link does) regroups the cards shown into full sections
        await browser.eval("location.hash = 'status=failed'")
        await browser.until(f"document.getElementById('shown').textContent === '{failed}'")
        assert await browser.eval("document.querySelectorAll('#grid > section').length") == -(-failed // CHUNK)
        await browser.eval("location.hash = 'q=catalog%20item%209999'")
        await browser.until("document.getElementById('shown').textContent === '1'")
        assert await browser.eval(VISIBLE) == ["catalog item 9999"]
        assert browser.dialogs == [] and browser.errors == []


# --- thumbnails ----------------------------------------------------------------------------------------------


async def finish_with(store: Store, job: Job, files: list[Path | None]) -> None:
    """The job's tasks, in manifest order, succeeded with `files` as their outputs (None: failed, no file)."""
    done = [
        {"jid": job.id, "k": key, "st": "failed" if f is None else "succeeded", "path": None if f is None else str(f),
         "cost": 0 if f is None else PRICE}
        for key, f in zip([r["key"] async for r in store.task_rows(job)], files, strict=True)
    ]  # fmt: skip
    async with store.engine.begin() as conn:
        where = (tasks.c.job_id == bindparam("jid"), tasks.c.key == bindparam("k"))
        values: dict[str, Any] = {
            "status": bindparam("st"),
            "output_path": bindparam("path"),
            "cost_micros": bindparam("cost"),
        }
        await conn.execute(update(tasks).where(*where).values(values), done)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def heavy_job(open_store: OpenStore, tmp_path: Path) -> tuple[list[Path], Path, Path]:
    """A job of four 1.7 MB images (as heavy as the real API's), a file that is no image, and one gone.
    Returns the four images, the junk file and the missing one."""
    store = await open_store()
    out = tmp_path / "out"
    out.mkdir()
    photos = [out / f"photo-{i}.png" for i in range(len(SHAPES))]
    for i, (p, (w, h)) in enumerate(zip(photos, SHAPES, strict=True)):
        p.write_bytes(photo_png(i, w, h))
    junk, gone = out / "junk.png", out / "gone.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of an image")
    await load(store, specs(len(photos) + 2, prefix="heavy"), out)
    await finish_with(store, await store.job("job"), [*photos, junk, gone])
    return photos, junk, gone


async def test_thumbnails_are_made_from_the_originals_once_and_never_touch_them(
    open_store: OpenStore, tmp_path: Path
) -> None:
    photos, junk, _ = await heavy_job(open_store, tmp_path)
    before = {p: (digest(p), p.stat().st_mtime_ns) for p in [*photos, junk]}
    page = tmp_path / "report.html"
    first = await batcher("report", "--db", str(tmp_path / "batcher.db"), "--format", "html", "-o", str(page),
                          env=cli_env(None), cwd=tmp_path)  # fmt: skip
    assert first.code == 0, first.err
    assert "4 made, 0 reused, 2 images missing or unreadable" in first.err
    # the originals (their bytes carry the provenance metadata) are read, never rewritten
    assert {p: (digest(p), p.stat().st_mtime_ns) for p in [*photos, junk]} == before
    folder = tmp_path / "report_files" / "thumbs"
    made = {p: folder / f"{digest(p)}-{THUMB_PX}.webp" for p in photos}
    text = page.read_text(encoding="utf-8")
    for p, thumb in made.items():
        info = sniff(thumb.read_bytes()[:64])
        assert info is not None and info.format == "webp" and max(info.width, info.height) == THUMB_PX
        assert thumb.stat().st_size < p.stat().st_size // 20
        assert f'href="out/{p.name}"><img src="report_files/thumbs/{thumb.name}"' in text
    # the files that are no image or gone get a card that says so, not a crash
    assert ">unreadable image: not an image file</div>" in text and ">image file missing</div>" in text

    # again: every thumbnail reused untouched; a replaced original gets a new one and its old one goes
    stamps = {t: t.stat().st_mtime_ns for t in made.values()}
    photos[0].write_bytes(photo_png(99, *SHAPES[0]))
    again = await batcher("report", "--db", str(tmp_path / "batcher.db"), "--format", "html", "-o", str(page),
                          env=cli_env(None), cwd=tmp_path)  # fmt: skip
    assert again.code == 0, again.err
    assert "1 made, 3 reused, 2 images missing or unreadable" in again.err
    assert {t: t.stat().st_mtime_ns for t in list(made.values())[1:]} == dict(list(stamps.items())[1:])
    assert not made[photos[0]].exists() and (folder / f"{digest(photos[0])}-{THUMB_PX}.webp").is_file()


@needs_chromium
async def test_cards_load_small_thumbnails_and_a_click_opens_the_original(
    open_store: OpenStore, tmp_path: Path
) -> None:
    photos, _, _ = await heavy_job(open_store, tmp_path)
    page = tmp_path / "report.html"
    await render(tmp_path, page)
    async with chromium(tmp_path / "chromium-profile", domains=("Page", "Runtime", "Log", "Network")) as browser:
        await browser.open(page.as_uri())
        await browser.until(IMAGES_IN_VIEW)
        images = {url: n for url, n in browser.fetched.items() if not url.endswith(".html")}
        # every card's image came from the thumbnails' folder, a few kilobytes each, no original
        assert len(images) == len(photos)
        assert all("/report_files/thumbs/" in url and n < 100_000 for url, n in images.items()), images
        problems = await browser.eval("Array.from(document.querySelectorAll('.thumb.bad'), (e) => e.textContent)")
        assert problems == ["unreadable image: not an image file", "image file missing"]

        # a click opens the original, full size, in the lightbox
        await browser.eval("document.querySelector('#grid a.thumb').click()")
        w, h = SHAPES[0]
        await browser.until(f"""(() => {{ const box = document.getElementById("box"), big = box.querySelector("img");
            return box.open && big.complete && big.naturalWidth === {w} && big.naturalHeight === {h}; }})()""")
        assert await browser.eval("document.querySelector('#box img').getAttribute('src')") == f"out/{photos[0].name}"
        original = (tmp_path / "out" / photos[0].name).as_uri()
        deadline = time.monotonic() + 20
        while original not in browser.fetched:  # the load's last event may come after the image shows
            assert time.monotonic() < deadline, browser.fetched
            await browser.eval("0")  # a round trip, which reads the events sent before its reply
        assert browser.fetched[original] == photos[0].stat().st_size
        assert browser.dialogs == [] and browser.errors == []
