"""The HTML report of a 5,000-image job in headless Chromium: with thumbnails, and with the originals on the cards.

Builds a job of `--images` PNGs as heavy as the real API's (1.7 MB each: `--bases` different noise images, each
file a copy with its own text chunk, so every file has its own SHA-256 and so its own thumbnail), renders its report
with the real CLI twice (the first makes every thumbnail, the second reuses them), also writes the same page with
the originals on the cards (the page before thumbnails), and opens each page `--repeat` times in a fresh headless
Chromium (Debian's `chromium`), driven over the DevTools protocol (tests/acceptance/browser_kit.py):

- load: when the page's script is ready, and when the images of the first screen are decoded (ms after
  navigation starts);
- scroll: the page scrolled top to bottom at `--step` px per frame, each frame's duration from
  requestAnimationFrame (median, 95th percentile, worst, and the share of frames over 50 ms);
- bytes: the image bytes Chromium read during load and scroll, until no load is pending.

It prints medians over the repeats. It needs about 9 GB free in TMPDIR for the originals, and about 10 minutes.

    .venv/bin/python bench/gallery_browser.py [--images 5000] [--repeat 3] [--step 120]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from benchkit import sample
from sqlalchemy import bindparam, update

from batcher import gallery, session
from batcher.emulator.images import photo_png
from batcher.models import JobSettings, TaskSpec, import_batches
from batcher.report import rows as report_rows
from batcher.store import Store
from batcher.store.tables import tasks

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.acceptance.browser_kit import chromium  # noqa: E402

SHAPES = [(1024, 1024), (1376, 768), (768, 1376), (896, 1152)]  # px, as the API's 1K sizes
MODEL = "gemini-3.1-flash-lite-image"
PAGE_READY_S = 300.0  # at most this long for the page's script to be ready
IDLE_WAIT_S = 120.0  # at most this long for the loads a scroll started to finish

# Resolves, once the images in the first screen are decoded, with the ms since navigation started.
FIRST_SCREEN = """new Promise((resolve) => {
  const seen = new IntersectionObserver(async (entries) => {
    seen.disconnect();
    const shown = entries.filter((e) => e.isIntersecting).map((e) => e.target);
    await Promise.all(shown.map((i) => i.decode().catch(() => null)));
    resolve(performance.now());
  });
  document.querySelectorAll("#grid img").forEach((i) => seen.observe(i));
})"""
# Scrolls to the bottom STEP px per frame; each frame's duration in ms.
SCROLL = """(async () => {
  const frames = [], end = document.documentElement.scrollHeight - innerHeight;
  let last = await new Promise(requestAnimationFrame);
  for (let y = STEP; y < end + STEP; y += STEP) {
    window.scrollTo(0, Math.min(y, end));
    const now = await new Promise(requestAnimationFrame);
    frames.push(now - last);
    last = now;
  }
  return frames;
})()"""


def variants(base: bytes, n: int) -> Iterator[bytes]:
    """`base` with a text chunk after its header, different in each: the same pixels, another file."""
    head, tail = base[:33], base[33:]  # the signature and IHDR chunk, then the rest
    for i in range(n):
        data = b"batcher-bench\x00" + str(i).encode()
        chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
        yield head + chunk + tail


async def build(root: Path, images: int, bases: int) -> Path:
    out = root / "out"
    out.mkdir()
    started = time.monotonic()
    files = [out / f"{i // 1000:02d}" / f"{i}.png" for i in range(images)]
    for d in {f.parent for f in files}:
        d.mkdir()
    for b in range(bases):
        w, h = SHAPES[b % len(SHAPES)]
        for f, data in zip(files[b::bases], variants(photo_png(b, w, h), len(files[b::bases])), strict=True):
            f.write_bytes(data)
    size = sum(f.stat().st_size for f in files)
    print(f"{images} images, {size / images / 2**20:.2f} MB each, {size / 2**30:.1f} GB, "
          f"made in {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    db = root / "batcher.db"
    store = await Store.open(str(db))
    try:
        items = [TaskSpec(MODEL, f"Catalog photo {i}", "1K", "1x1", str(f.relative_to(out)), source=f"bench:{i}")
                 for i, f in enumerate(files)]  # fmt: skip
        await store.import_manifest(JobSettings("gallery", str(out)), "bench", import_batches(items), extra={},
                                    now=time.time())  # fmt: skip
        job = await store.job("gallery")
        t0 = time.time() - 3600
        keys = [r["key"] async for r in store.task_rows(job)]
        done = [{"jid": job.id, "k": k, "path": str(f), "w": SHAPES[i % bases % len(SHAPES)][0],
                 "h": SHAPES[i % bases % len(SHAPES)][1], "sub": t0 + i * 0.7, "fin": t0 + i * 0.7 + 6}
                for i, (k, f) in enumerate(zip(keys, files, strict=True))]  # fmt: skip
        values = {"status": "succeeded", "output_path": bindparam("path"), "cost_micros": 67_000,
                  "width": bindparam("w"), "height": bindparam("h"), "submitted_at": bindparam("sub"),
                  "finished_at": bindparam("fin")}  # fmt: skip
        async with store.engine.begin() as conn:
            where = (tasks.c.job_id == bindparam("jid"), tasks.c.key == bindparam("k"))
            await conn.execute(update(tasks).where(*where).values(values), done)
        # the page before thumbnails: the same cards with the originals on them
        head = await session.job_summary(store, job)
        rows = [r async for r in report_rows(store, job)]
        page = root / "originals.html"
        with page.open("w", encoding="utf-8") as out_file:
            out_file.writelines(gallery.render(head, rows, await store.calls(job), str(page)))
    finally:
        await store.close()
    return db


async def visit(url: str, profile: Path, step: int) -> dict[str, float]:
    async with chromium(profile, domains=("Page", "Runtime", "Network")) as page:
        ready = await page.open(url, timeout=PAGE_READY_S)
        first = float(await page.eval(FIRST_SCREEN))
        frames = await page.eval(SCROLL.replace("STEP", str(step)))
        deadline = time.monotonic() + IDLE_WAIT_S
        while page.pending and time.monotonic() < deadline:
            await page.eval("0")  # a round trip: reads the load events sent meanwhile
            await asyncio.sleep(0.2)
        requested = {*page.fetched, *page.failed, *page.pending.values()}
        images = {u: page.fetched.get(u, 0) for u in requested if not u.endswith(".html")}
        frames.sort()
        return {
            "ready_ms": ready, "first_screen_ms": first, "frames": len(frames),
            "frame_median_ms": statistics.median(frames), "frame_p95_ms": frames[int(len(frames) * 0.95)],
            "frame_worst_ms": frames[-1], "over_50ms": sum(f > 50 for f in frames) / len(frames),
            "images": len(images), "image_mb": sum(images.values()) / 2**20, "still_loading": len(page.pending),
        }  # fmt: skip


def render(db: Path, root: Path) -> float:
    cmd = [sys.executable, "-m", "batcher.cli", "report", "--db", str(db), "--format", "html", "-o",
           str(root / "report.html")]  # fmt: skip
    done = sample(cmd, cwd=root)
    assert done.code == 0, done.err
    print(f"  {done.err.strip().splitlines()[-1]}: {done.wall_s:.1f} s wall, {done.cpu_s:.1f} s CPU", flush=True)
    return done.wall_s


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--bases", type=int, default=40, help="different noise images the files are copies of")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--step", type=int, default=120, help="px scrolled per frame")
    ap.add_argument("--keep", action="store_true", help="leave the job's folder in TMPDIR")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gallery-bench-"))
    try:
        db = await build(root, args.images, args.bases)
        print("render with thumbnails, first (makes them) and again (reuses them):", flush=True)
        render(db, root)
        render(db, root)
        thumbs = list((root / "report_files" / "thumbs").glob("*.webp"))
        size = sum(t.stat().st_size for t in thumbs)
        print(f"  {len(thumbs)} thumbnails, {size / len(thumbs) / 1024:.1f} KB each", flush=True)
        results: dict[str, list[dict[str, float]]] = {"thumbnails": [], "originals": []}
        for i in range(args.repeat):  # interleaved, so a busy moment of the machine hits both
            for name, html in (("thumbnails", "report.html"), ("originals", "originals.html")):
                r = await visit((root / html).as_uri(), root / f"profile-{name}-{i}", args.step)
                results[name].append(r)
                print(f"  {name} run {i + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
        print(f"\nmedians of {args.repeat} runs, {args.images} cards, 1280x900, {args.step} px per frame:")
        keys = list(results["thumbnails"][0])
        print(f"{'':22}" + "".join(f"{k:>12}" for k in ("thumbnails", "originals")))
        for k in keys:
            print(f"{k:22}" + "".join(f"{statistics.median(r[k] for r in results[n]):12.3g}" for n in results))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
