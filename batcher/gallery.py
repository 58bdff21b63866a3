"""The HTML gallery of a run: one self-contained page to look at the images, spot the bad ones, see the cost.

Pure rendering: the summary from `report.summary`, the task rows from `report.rows` and the job's API calls
go in, text comes out. The page loads nothing from the network (its Content-Security-Policy forbids it);
images are linked by paths relative to the page, so the page and the output folder zip and travel together.
Every card is rendered here (the page works without script; the script adds filters, search and a lightbox).
A 10,000-task page stays quick: cards come in sections the browser skips while off screen
(`content-visibility: auto`) and images load lazily, so only what is near the viewport is laid out and decoded;
with `thumbs` (from `batcher.thumbs`) a card shows a small thumbnail and links the original, which the lightbox
opens, so scrolling fetches kilobytes per card rather than the originals' megabytes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import statistics
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batcher.models import BILLED_APART, STATUS_ORDER
from batcher.money import fmt_usd, usd_to_micros

if TYPE_CHECKING:
    from batcher.thumbs import Thumb

THROUGHPUT_BUCKETS = 60  # most bars in the throughput chart
LATENCY_BINS = 24  # most bars in the latency histogram
TOP_REASONS = 8  # failure reasons listed in the summary
# Cards come in sections of CHUNK, each laid out (and skipped, while off screen) as one: a browser lays out
# one grid of 10,000 cards again on every scroll step. CHUNK is a multiple of every column count in STYLE,
# so rows stay full across sections.
CHUNK = 120  # cards
CARD_H = 360  # px, a card's height plus the gap, to size sections not yet laid out
CHART_W, CHART_H = 520, 140  # px, the SVG's coordinate space
PLOT_L, PLOT_T, PLOT_B = 34, 8, 20  # px margins inside it: y labels left, x labels below
# Bucket widths a person reads at a glance, in seconds.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
STATUSES = (*STATUS_ORDER, "retired")


def esc(value: object) -> str:
    """Text or attribute value, escaped: every string from a manifest or the API passes through here."""
    return html.escape(str(value), quote=True)


def render(head: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], calls: Iterable[Mapping[Any, Any]],
           page: str, thumbs: Mapping[str, Thumb] | None = None, links: Mapping[str, str] | None = None,
           links_expire: str | None = None) -> Iterator[str]:  # fmt: skip
    """The page for `page` (its path decides the relative image links), in chunks to write one after another.

    `calls` are the job's API calls (store rows will do): `at` (epoch seconds) and `outcome` are read.
    `thumbs`, by each row's `file`: what its card shows; without it, cards show the originals. `links`, by
    `file`: the address of an original a browser cannot open as it is (a bucket's object: a signed HTTPS URL,
    which stops working at `links_expire`, said on the page)."""
    page_dir = os.path.dirname(os.path.abspath(page))
    tasks = list(rows)  # the summary's charts and filters need every row before the first card
    call_list = list(calls)
    origins = sorted({_origin(url) for url in (links or {}).values()})
    yield _top(head, origins)
    yield _summary(head, tasks, call_list)
    if links:
        yield (f'<p class="links">Full-size images in the bucket open by signed links that stop working at '
               f"{esc(links_expire or 'their expiry')}: make the report again for fresh ones.</p>\n")  # fmt: skip
    yield _toolbar(tasks)
    yield f'<main id="grid" data-chunk="{CHUNK}">\n'
    for i, r in enumerate(tasks):
        if i % CHUNK == 0:
            yield ("</section>\n" if i else "") + "<section>\n"
        yield _card(r, page_dir, thumbs, links)
    yield (
        ("</section>\n" if tasks else "") + '<div id="parked" hidden></div></main>\n' + LIGHTBOX + "</body>\n</html>\n"
    )


# --- the summary ---------------------------------------------------------------------------------------------


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _top(head: Mapping[str, Any], origins: Sequence[str] = ()) -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    # Nothing but the page's own script, style and local images may load (and a bucket's signed originals): no
    # other network, and an injected <script> would not run even if escaping ever failed.
    extra = "".join(f" {o}" for o in origins)
    csp = (f"default-src 'none'; img-src 'self' file: data:{extra}; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")  # fmt: skip
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>batcher report: {esc(head['job'])}</title>\n<style>{STYLE}"
        f"#grid>section{{contain-intrinsic-size:auto calc({CHUNK} / var(--cols) * {CARD_H}px)}}</style>\n"
        f"<script>{SCRIPT}</script>\n"
        "</head>\n<body>\n"
    )


def _stat(key: str, value: object, label: str, cls: str = "", tip: str = "") -> str:
    title = f' title="{esc(tip)}"' if tip else ""
    return f'<div class="stat {cls}" data-stat="{esc(key)}"{title}><b>{esc(value)}</b><span>{esc(label)}</span></div>'


def _money(usd: str | None) -> str:
    return "none" if usd is None else fmt_usd(usd_to_micros(usd))


def _summary(head: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[Any, Any]]) -> str:
    counts: Mapping[str, int] = head["status_counts"]
    stats = [_stat("tasks", head["tasks"], "tasks")]
    stats += [_stat(f"status-{s}", counts[s], s, f"st-{s}") for s in STATUSES if counts.get(s)]
    if head["retired"]:
        stats.append(_stat("status-retired", head["retired"], "retired", "", "no longer listed in the manifest"))
    stats.append(_stat("cost", _money(head["cost_usd"]), "spent", "", f"{head['billed_calls']} billed calls"))
    if head.get("batch_billed"):
        stats.append(_stat("online-cost", _money(head["online_cost_usd"]), "spent online"))
        stats.append(_stat("batch-cost", _money(head["batch_cost_usd"]), "spent by batch", "",
                           f"{head['batch_billed']} images by batch"))  # fmt: skip
        saved = head.get("batch_saved_usd")
        stats.append(_stat("batch-saved", _money(saved) if saved is not None else "?", "saved by batch", "",
                           "against the online price; at least this much when the job has several models"))  # fmt: skip
    if head["budget_usd"] is None:
        stats.append(_stat("budget-left", "-", "no budget", "", "set budget_usd in the manifest or --max-cost"))
    else:
        stats.append(_stat("budget-left", _money(head["budget_left_usd"]), f"left of {_money(head['budget_usd'])}"))
    prices = head["unit_price_usd"]
    price = " / ".join(dict.fromkeys(_money(p) for p in prices.values())) or "?"
    stats.append(_stat("unit-price", price, "per image", "", ", ".join(f"{m}: {_money(p)}" for m, p in prices.items())))
    wall = head["wall_time_s"]
    stats.append(_stat("wall-time", "-" if wall is None else _duration(wall), "wall time"))
    per_image = "–" if head["calls_per_image"] is None else head["calls_per_image"]  # nothing succeeded
    by_kind = ", ".join(f"{k} {n}" for k, n in head["api_calls"].items()) or "no API calls"
    stats.append(_stat("calls-per-image", per_image, "calls / image", "", by_kind))
    limited = head["rate_limited_429"]
    stats.append(_stat("rate-limited", limited, "429s", "warn" if limited else "", "rate-limited replies, retried"))
    unknown = head["unknown_submissions"]
    stats.append(_stat("unknown", unknown, "unknown submissions", "bad" if unknown else "",
                       "creates whose outcome never came back: possible double charges"))  # fmt: skip
    # the billed calls that gave no image here, apart, to hold the ledger against the provider's invoice
    for key, label, tip in (
        *BILLED_APART,
        ("blocked", "blocked", "the model gave no image on purpose (IMAGE_SAFETY and the like): not billed"),
    ):
        if head.get(key):
            stats.append(_stat(key.replace("_", "-"), head[key], label, "bad", tip))
    if head["failed_generations"]:
        stats.append(_stat("failed-generations", head["failed_generations"], "failed generations", "warn"))
    if head["price_mismatches"]:
        stats.append(_stat("price-mismatches", head["price_mismatches"], "other price", "warn",
                           "calls the API billed at a price other than the unit price"))  # fmt: skip
    ats = [float(c["at"]) for c in calls]
    when = f"{_utc(min(ats))} to {_utc(max(ats))}" if ats else "no API calls yet"
    return (
        f'<header><h1>Job <span id="job">{esc(head["job"])}</span></h1><p class="when">{esc(when)}</p></header>\n'
        f'<section class="stats">{"".join(stats)}</section>\n'
        f'<section class="charts">{_throughput(tasks, calls)}{_latency(tasks)}</section>\n'
        f"{_reasons(tasks)}"
    )


def _reasons(tasks: Sequence[Mapping[str, Any]]) -> str:
    reasons = Counter(str(r["error"]) for r in tasks if r["status"] == "failed" and r["error"])
    if not reasons:
        return ""
    items = "".join(f"<tr><td>{n}</td><td>{esc(why)}</td></tr>" for why, n in reasons.most_common(TOP_REASONS))
    more = len(reasons) - TOP_REASONS
    tail = f'<p class="more">and {more} other reasons</p>' if more > 0 else ""
    return f'<section class="reasons"><h2>Why tasks failed</h2><table>{items}</table>{tail}</section>\n'


# --- charts: inline SVG bars ---------------------------------------------------------------------------------


def _throughput(tasks: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[Any, Any]]) -> str:
    done = [float(r["finished_at"]) for r in tasks if r["status"] == "succeeded" and r.get("finished_at")]
    limited = [float(c["at"]) for c in calls if c["outcome"] == "rate_limited"]
    times = done + [float(c["at"]) for c in calls]
    if not done:
        return _chart_box("throughput", "", "no image finished yet")
    t0, span = min(times), max(times) - min(times)
    step = next(
        (s for s in TIME_STEPS if s * THROUGHPUT_BUCKETS >= span), -(-span // (86400 * THROUGHPUT_BUCKETS)) * 86400
    )
    n = max(1, int(span // step) + 1)
    images, r429 = [0] * n, [0] * n
    for t in done:
        images[int((t - t0) // step)] += 1
    for t in limited:
        r429[int((t - t0) // step)] += 1
    tips = [
        f"{_duration(i * step)} to {_duration((i + 1) * step)}: {images[i]} images, {r429[i]} 429s" for i in range(n)
    ]
    svg = _bars([("img", images), ("r429", r429)], tips, ("0", _duration(n * step)))
    per = _duration(step)
    return _chart_box("throughput", svg, f"images finished (green) and 429 responses (red) per {per}")


def _latency(tasks: Sequence[Mapping[str, Any]]) -> str:
    took = [
        float(r["finished_at"]) - float(r["submitted_at"])
        for r in tasks
        if r["status"] == "succeeded" and r.get("finished_at") and r.get("submitted_at")
    ]
    if not took:
        return _chart_box("latency", "", "no generation timed yet")
    steps = (m * 10.0**e for e in range(-2, 7) for m in (1, 2, 5))
    step = next((s for s in steps if s * LATENCY_BINS >= max(took)), max(took))
    n = int(max(took) // step) + 1
    bins = [0] * n
    for t in took:
        bins[int(t // step)] += 1
    tips = [f"{_seconds(i * step)} to {_seconds((i + 1) * step)}: {bins[i]} images" for i in range(n)]
    svg = _bars([("lat", bins)], tips, ("0 s", _seconds(n * step)))
    p95 = statistics.quantiles(took, n=20)[-1] if len(took) > 1 else took[0]
    caption = (f"generation time, create accepted to image saved: median {_seconds(statistics.median(took))}, "
               f"p95 {_seconds(p95)}, {len(took)} images")  # fmt: skip
    return _chart_box("latency", svg, caption)


def _chart_box(name: str, svg: str, caption: str) -> str:
    return f'<figure class="chart" id="chart-{name}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def _bars(series: Sequence[tuple[str, Sequence[int]]], tips: Sequence[str], x_labels: tuple[str, str]) -> str:
    """Bars side by side per slot, all on one scale; each slot's numbers show on hover."""
    top = max(max(values) for _, values in series) or 1
    plot_w, plot_h = CHART_W - PLOT_L - 4, CHART_H - PLOT_T - PLOT_B
    slot = plot_w / len(tips)
    bar_w = slot * 0.8 / len(series)
    base = PLOT_T + plot_h
    out = [f'<svg viewBox="0 0 {CHART_W} {CHART_H}" role="img">']
    for i, tip in enumerate(tips):
        out.append(f"<g><title>{esc(tip)}</title>")
        out.append(f'<rect class="hit" x="{PLOT_L + i * slot:.1f}" y="{PLOT_T}" width="{slot:.1f}" height="{plot_h}"/>')
        for j, (cls, values) in enumerate(series):
            h = values[i] / top * plot_h
            x = PLOT_L + i * slot + slot * 0.1 + j * bar_w
            out.append(f'<rect class="{cls}" x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}"/>')
        out.append("</g>")
    out.append(f'<line x1="{PLOT_L}" y1="{base}" x2="{CHART_W - 4}" y2="{base}"/>')
    out.append(f'<text x="{PLOT_L - 4}" y="{PLOT_T + 8}" text-anchor="end">{top}</text>')
    out.append(f'<text x="{PLOT_L - 4}" y="{base}" text-anchor="end">0</text>')
    out.append(f'<text x="{PLOT_L}" y="{CHART_H - 6}">{esc(x_labels[0])}</text>')
    out.append(f'<text x="{CHART_W - 4}" y="{CHART_H - 6}" text-anchor="end">{esc(x_labels[1])}</text>')
    return "".join(out) + "</svg>"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60:02d} s" if s % 60 else "")
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


# --- the grid ------------------------------------------------------------------------------------------------


def _toolbar(tasks: Sequence[Mapping[str, Any]]) -> str:
    statuses = Counter(str(r["status"]) for r in tasks)
    sizes = Counter(str(r["size"]) for r in tasks)
    status_opts = "".join(
        f'<option value="{esc(s)}">{esc(s)} ({statuses[s]})</option>'
        for s in sorted(statuses, key=lambda s: (STATUSES.index(s) if s in STATUSES else len(STATUSES), s))
    )
    size_opts = "".join(f'<option value="{esc(s)}">{esc(s)} ({n})</option>' for s, n in sorted(sizes.items()))
    problems = len(tasks) - statuses["succeeded"]
    return (
        '<nav class="bar">'
        '<label>Status <select id="f-status"><option value="">all</option>'
        f'<option value="-succeeded">not succeeded ({problems})</option>{status_opts}</select></label>'
        f'<label>Size <select id="f-size"><option value="">all</option>{size_opts}</select></label>'
        '<input id="f-q" type="search" placeholder="search names and prompts" aria-label="search names and prompts">'
        f'<span class="count"><b id="shown">{len(tasks)}</b> of {len(tasks)} shown</span></nav>\n'
    )


def _href(path: str, page_dir: str) -> str:
    """The image's address relative to the page, so the page finds it wherever the two are unpacked together."""
    target = os.path.abspath(path)
    try:
        rel = os.path.relpath(target, page_dir)
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(target).as_uri()
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def _card(r: Mapping[str, Any], page_dir: str, thumbs: Mapping[str, Thumb] | None,
          links: Mapping[str, str] | None = None) -> str:  # fmt: skip
    status, size = str(r["status"]), str(r["size"])
    made = thumbs.get(str(r["file"])) if thumbs is not None and r["file"] else None
    if made is not None and made.path is None:  # the file is gone or no image: say so on the card
        problem = made.problem or "no image"
        thumb = f'<div class="thumb none bad" title="{esc(problem)}">{esc(problem)}</div>'
    elif r["file"]:
        link = links.get(str(r["file"])) if links else None
        href = esc(link if link is not None else _href(str(r["file"]), page_dir))
        src, w, h = href, r.get("width"), r.get("height")
        if made is not None and made.path is not None:
            src, w, h = esc(_href(str(made.path), page_dir)), made.width, made.height
        dims = f' width="{int(w)}" height="{int(h)}"' if w and h else ""
        thumb = f'<a class="thumb" href="{href}"><img src="{src}" loading="lazy" decoding="async" alt=""{dims}></a>'
    else:
        thumb = f'<div class="thumb none">{esc(status)}</div>'
    attempts = f"{r['attempts']} attempt{'' if r['attempts'] == 1 else 's'}"
    flag = ' <span class="flag">possible double charge</span>' if r["possible_double_charge"] else ""
    if r.get("cached_from"):  # an earlier output reused, no API call
        flag += f' <span class="flag" title="{esc(r["cached_from"])}">cached</span>'
    error = f'<p class="err">{esc(r["error"])}</p>' if r["error"] else ""
    label = r.get("task") or r["key"]
    return (
        f'<article class="card st-{esc(status)}" id="t-{esc(r["key"])}" data-status="{esc(status)}" '
        f'data-size="{esc(size)}">{thumb}<p class="name" title="{esc(label)}">{esc(label)}</p>'
        f'<p class="prompt">{esc(r["prompt"])}</p>'
        f'<p class="meta"><span class="badge">{esc(status)}</span> {esc(size)} · {esc(fmt_usd(usd_to_micros(r["cost_usd"])))}'
        f" · {attempts}{flag}</p>{error}"
        f'<p class="src">{esc(r["source"])} · {esc(str(r["key"])[:12])}</p></article>\n'
    )


LIGHTBOX = '<dialog id="box"><img alt=""><p></p></dialog>\n'

STYLE = """
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--mut:#59636e;--line:#d1d9e0;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;background:var(--bg)}
header{padding:16px 24px 0}h1{font-size:20px;margin:0}h2{font-size:15px;margin:0 0 6px}
.when{margin:2px 0 0;color:var(--mut)}
.stats,.charts,.reasons{padding:10px 24px 0}.stats,.charts{display:flex;flex-wrap:wrap;gap:8px}
.stat{background:#fff;border:1px solid var(--line);border-radius:6px;padding:5px 12px;min-width:86px}
.stat b{display:block;font-size:18px;white-space:nowrap}.stat span{color:var(--mut);font-size:12px}
.stat.st-succeeded b{color:var(--ok)}.stat.st-failed b,.stat.bad b{color:var(--bad)}.stat.warn b{color:var(--warn)}
.chart{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px}
.chart svg{width:520px;max-width:100%;height:140px;display:block}.chart figcaption{font-size:12px;color:var(--mut)}
svg .img{fill:#2da44e}svg .r429{fill:#cf222e}svg .lat{fill:#0969da}svg .hit{fill:transparent}
svg g:hover .hit{fill:#eaeef2}svg text{font-size:10px;fill:var(--mut)}svg line{stroke:#8c959f}
.reasons table{border-collapse:collapse;background:#fff}.reasons td{border:1px solid var(--line);padding:3px 8px}
.reasons td:first-child{text-align:right;color:var(--bad)}.more{color:var(--mut);margin:4px 0}
.bar{position:sticky;top:0;z-index:1;display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin-top:14px;
padding:8px 24px;background:#fff;border-block:1px solid var(--line)}
.bar input{width:260px;padding:3px 6px}.count{color:var(--mut);margin-left:auto}
#grid{padding:14px 24px}
#grid>section{display:grid;grid-template-columns:repeat(var(--cols),minmax(0,1fr));gap:12px;margin-bottom:12px;
content-visibility:auto}
:root{--cols:1}@media(min-width:460px){:root{--cols:2}}@media(min-width:672px){:root{--cols:3}}
@media(min-width:884px){:root{--cols:4}}@media(min-width:1096px){:root{--cols:5}}@media(min-width:1308px){:root{--cols:6}}
@media(min-width:1732px){:root{--cols:8}}@media(min-width:2156px){:root{--cols:10}}@media(min-width:2580px){:root{--cols:12}}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;overflow:hidden}
.card[hidden]{display:none}.card p{margin:6px 10px}
.thumb{display:block;aspect-ratio:4/3;background:#eaeef2}
.thumb img{width:100%;height:100%;object-fit:contain;display:block}
.thumb.none,.card.missing .thumb{display:flex;align-items:center;justify-content:center;color:var(--mut)}
.card.missing .thumb img{display:none}.card.missing .thumb::after{content:"image file missing";color:var(--bad)}
.card.st-failed{border-color:#ff8182}.card.st-failed .thumb{background:#ffebe9;color:var(--bad)}
.name{font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}.thumb.bad{color:var(--bad)}
.prompt{display:-webkit-box;-webkit-line-clamp:4;-webkit-box-orient:vertical;overflow:hidden;overflow-wrap:anywhere}
.meta,.src{color:var(--mut);font-size:12px}.src{color:#818b98;overflow-wrap:anywhere}
.badge{border-radius:9px;padding:0 6px;background:#eaeef2}
.st-succeeded .badge{background:#dafbe1;color:var(--ok)}.st-failed .badge{background:#ffebe9;color:var(--bad)}
.st-unknown .badge,.flag{background:#fff8c5;color:var(--warn)}.flag{border-radius:9px;padding:0 6px}
.err{color:var(--bad);font-size:12px;overflow-wrap:anywhere}
dialog{border:0;padding:0;max-width:94vw;max-height:94vh;background:#111;color:#eee}
dialog::backdrop{background:rgba(0,0,0,.8)}dialog img{display:block;max-width:94vw;max-height:86vh;margin:auto}
dialog p{margin:0;padding:6px 10px;font-size:13px}
"""

# Filters read and write the URL fragment (#status=failed&size=1x1&q=mug), so a filtered view is a link.
SCRIPT = """
"use strict";
// In <head>, so an image that fails before the page has parsed is still marked.
document.addEventListener("error", (e) => {
  const card = e.target instanceof HTMLImageElement && e.target.closest(".card");
  if (card) card.classList.add("missing");
}, true);
document.addEventListener("DOMContentLoaded", () => {
  const grid = document.getElementById("grid"), parked = document.getElementById("parked");
  const cards = Array.from(grid.querySelectorAll(".card")), chunk = Number(grid.dataset.chunk);
  let regrouped = false;
  const text = cards.map((c) => (c.querySelector(".name").textContent + "\\n"
    + c.querySelector(".prompt").textContent).toLowerCase());
  const status = document.getElementById("f-status"), size = document.getElementById("f-size");
  const q = document.getElementById("f-q"), shown = document.getElementById("shown");
  const pick = (select, value) => {  // a value no task has (a link to "the failed ones") shows none, not all
    if (value && !Array.from(select.options, (o) => o.value).includes(value)) select.add(new Option(value, value));
    select.value = value;
  };
  function fromHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    pick(status, p.get("status") || ""); pick(size, p.get("size") || ""); q.value = p.get("q") || "";
  }
  function apply() {
    const s = status.value, z = size.value, needle = q.value.trim().toLowerCase();
    const not = s.startsWith("-"), want = not ? s.slice(1) : s;
    const visible = [], hidden = [];
    cards.forEach((c, i) => {
      const ok = (!s || (c.dataset.status === want) !== not) && (!z || c.dataset.size === z)
        && (!needle || text[i].includes(needle));
      if (c.hidden === ok) c.hidden = !ok;
      (ok ? visible : hidden).push(c);
    });
    if (hidden.length || regrouped) regroup(visible, hidden);
    shown.textContent = String(visible.length);
    grid.dataset.shown = String(visible.length);
  }
  // The shown cards in full sections again, in manifest order; the others parked out of the layout.
  function regroup(visible, hidden) {
    const page = document.createDocumentFragment();
    for (let i = 0; i < visible.length; i += chunk) {
      const section = document.createElement("section");
      for (const c of visible.slice(i, i + chunk)) section.appendChild(c);
      page.appendChild(section);
    }
    for (const c of hidden) parked.appendChild(c);
    page.appendChild(parked);
    grid.replaceChildren(page);
    regrouped = hidden.length > 0;
  }
  function toHash() {
    const p = new URLSearchParams();
    if (status.value) p.set("status", status.value);
    if (size.value) p.set("size", size.value);
    if (q.value.trim()) p.set("q", q.value.trim());
    const h = p.toString();
    try { history.replaceState(null, "", h ? "#" + h : location.pathname + location.search); } catch (e) { }
  }
  let timer = 0;
  const changed = () => { apply(); toHash(); };
  status.addEventListener("change", changed);
  size.addEventListener("change", changed);
  q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(changed, 150); });
  window.addEventListener("hashchange", () => { fromHash(); apply(); });
  const box = document.getElementById("box"), big = box.querySelector("img"), cap = box.querySelector("p");
  let at = -1;
  function open(i) {
    at = i;
    const c = cards[i];
    big.src = c.querySelector("a.thumb").getAttribute("href");
    cap.textContent = c.querySelector(".name").textContent + ": " + c.querySelector(".prompt").textContent
      + "  |  " + c.querySelector(".meta").textContent
      + "  |  \\u2190 \\u2192 next, Esc closes";
    if (!box.open) box.showModal();
  }
  function step(d) {
    for (let i = at + d; i >= 0 && i < cards.length; i += d) {
      if (!cards[i].hidden && cards[i].querySelector("a.thumb")) { open(i); return; }
    }
  }
  grid.addEventListener("click", (e) => {
    const a = e.target.closest("a.thumb");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    open(cards.indexOf(a.closest(".card")));
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight") step(1); else if (e.key === "ArrowLeft") step(-1);
  });
  box.addEventListener("click", () => box.close());
  fromHash();
  apply();
  document.documentElement.dataset.readyMs = String(Math.round(performance.now()));
});
"""
