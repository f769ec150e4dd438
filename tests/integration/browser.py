"""A real headless Chromium driven over the DevTools protocol (aiohttp websocket client).

``chromium --dump-dom`` snapshots a page before a server-sent-events stream delivers
anything, so the tests open the page, wait until a JavaScript condition holds, then read the
DOM and take a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from stream_app.local.embedded import free_port


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is missing: apt-get install -y chromium (.ci/run installs it)"
    return found


async def _devtools_page(session: aiohttp.ClientSession, port: int, deadline: float) -> str:
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [p for p in await response.json() if p.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        await asyncio.sleep(0.2)


class _Cdp:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json()
            if message.get("id") == call_id:
                assert "error" not in message, message
                return dict(message.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


async def _capture(url: str, ready_js: str, timeout_s: float, port: int) -> tuple[str, bytes]:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        ws_url = await _devtools_page(session, port, deadline)
        async with session.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024) as ws:
            cdp = _Cdp(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.navigate", url=url)
            while not await cdp.evaluate(ready_js):
                assert time.monotonic() < deadline, f"page never satisfied {ready_js!r}"
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.5)  # let the last render paint
            html = str(await cdp.evaluate("document.documentElement.outerHTML"))
            shot = await cdp.call("Page.captureScreenshot", format="png")
            return html, base64.b64decode(shot["data"])


def capture(url: str, screenshot: Path, ready_js: str, timeout_s: float = 60.0) -> str:
    """Open ``url`` in headless Chromium, wait for ``ready_js`` to be truthy, write a PNG
    screenshot, return the DOM."""
    port = free_port()
    profile = screenshot.parent / "chromium-profile"
    argv = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
            "--hide-scrollbars", "--window-size=1400,900", f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
    browser = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        html, png = asyncio.run(_capture(url, ready_js, timeout_s, port))
        screenshot.write_bytes(png)
        return html
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)
