"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, with aiohttp (which we ship anyway).

One page and the notes its tests and benchmarks read: dialogs (dismissed, so the page never hangs), JS and console
errors, the bytes read for each URL, and the requests still pending. Used by tests/acceptance/test_gallery.py and
bench/gallery_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = Path(os.environ.get("BATCHER_CHROMIUM", "/usr/bin/chromium"))
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip
VIEWPORT = (1280, 900)  # px: the window's size, and so a screenshot's
DOMAINS = ("Page", "Runtime", "Log")  # enabled at the start; add "Network" for `fetched` and `pending`
START_S = 30.0  # seconds for Chromium to open its DevTools port
STOP_S = 10.0  # seconds for Chromium to end after SIGTERM, before SIGKILL


class BrowserError(RuntimeError):
    """Chromium did not start, refused a DevTools call, or a page's script threw; or a wait ran out."""


class Page:
    """One page of a headless Chromium, over the DevTools protocol.

    Events are read while a call waits for its reply (so a round trip, `await page.eval("0")`, reads the ones
    sent before it) and noted: dialogs (with Page enabled), errors (Runtime and Log), `fetched` and `pending`
    (Network).
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._id = 0
        self.dialogs: list[str] = []  # alert() and friends, each dismissed: an injected script would open one
        self.errors: list[str] = []  # uncaught exceptions, CSP violations, failed loads
        self.fetched: dict[str, int] = {}  # URL -> bytes read, summed over its loads that finished
        self.failed: dict[str, str] = {}  # URL -> why its last load failed
        self.pending: dict[str, str] = {}  # request id -> URL, for each load not finished yet
        self._sends: set[asyncio.Future[None]] = set()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self._ws.send_json({"id": self._id, "method": method, "params": params})
        async for msg in self._ws:
            data = json.loads(msg.data)
            if data.get("id") == self._id:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                return dict(data["result"])
            self._note(data)
        raise BrowserError("Chromium closed the DevTools connection")

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Page.javascriptDialogOpening":
            self.dialogs.append(params["message"])
            # dismiss it, or the page would hang; the reply (id 0) is never awaited
            dismiss = {"id": 0, "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}
            sent = asyncio.ensure_future(self._ws.send_json(dismiss))
            self._sends.add(sent)
            sent.add_done_callback(self._sends.discard)
        elif method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":  # again, with the new URL, after a redirect
            self.pending[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFinished" and (url := self.pending.pop(params["requestId"], None)):
            self.fetched[url] = self.fetched.get(url, 0) + int(params["encodedDataLength"])
        elif method == "Network.loadingFailed" and (url := self.pending.pop(params["requestId"], None)):
            self.failed[url] = params.get("errorText", "failed")

    async def eval(self, expression: str) -> Any:
        """The value of a JS expression (a promise: what it resolves to), returned by value."""
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression[:60]}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def until(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll `expression` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        problem = "still false"
        while True:
            try:
                if value := await self.eval(expression):
                    return value
            except BrowserError as e:  # the page was between documents; or the expression is wrong
                problem = str(e)
            if time.monotonic() >= deadline:
                raise BrowserError(f"after {timeout} s: {problem}: {expression[:80]}")
            await asyncio.sleep(0.05)

    async def open(self, url: str, timeout: float = 20.0) -> float:
        """Load `url` afresh; returns the milliseconds the page's script took to be ready (its data-ready-ms)."""
        await self.call("Page.navigate", url="about:blank")
        await self.until("location.href === 'about:blank'")
        await self.call("Page.navigate", url=url)
        return float(await self.until("document.documentElement.dataset.readyMs", timeout))

    async def screenshot(self) -> bytes:
        """The viewport, as PNG."""
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


@asynccontextmanager
async def chromium(
    profile: Path, *, domains: Iterable[str] = DOMAINS, viewport: tuple[int, int] = VIEWPORT
) -> AsyncIterator[Page]:
    """Headless Chromium with its profile in `profile` (a new folder) and one page, showing about:blank with
    `domains` enabled and a `viewport` (width, height) in px; ended, with its helpers, when the block exits."""
    width, height = viewport
    port_file = profile / "DevToolsActivePort"  # Chromium writes its port here once it listens
    port_file.unlink(missing_ok=True)  # not one from a browser before
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM), *FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}",
        "--remote-debugging-port=0", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_S
        while len(lines := (port_file.read_text().split() if port_file.exists() else [])) < 2:
            if proc.returncode is not None:
                raise BrowserError(f"Chromium exited with {proc.returncode}")
            if time.monotonic() >= deadline:
                raise BrowserError(f"Chromium did not open its DevTools port in {START_S} s")
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{lines[0]}/json/list") as reply:
                target = next(t for t in await reply.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in domains:
                    await page.call(f"{domain}.enable")
                await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                deviceScaleFactor=1, mobile=False)  # fmt: skip
                yield page
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group: Chromium's renderer and GPU helpers too
        try:
            await asyncio.wait_for(proc.wait(), STOP_S)
        except TimeoutError:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
