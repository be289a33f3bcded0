"""Helpers of the browser tests: the page's npm packages, its graphs, a relay serving it on loopback, and
Debian's Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from call.web_routes import WEB_ROOT, WebRoutes, runtime_installed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAKE_MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="session")
def web_graphs(tmp_path_factory) -> tuple[object, Path, Path]:
    """The bundled model, a graph cache of the Python ONNX engine, and in it the page's graphs for 6 and
    12 kbps (``call.web_bundle``): the page and ``OnnxStreamingEncoder(cache_dir=…)`` read the same files."""
    from call.web_bundle import write_bundle
    from codec import load_default_model
    from streaming.onnx_engine import graph_dir

    model = load_default_model().eval()
    cache = tmp_path_factory.mktemp("onnx")
    graphs = graph_dir(model, cache)
    write_bundle(model, graphs, [6.0, 12.0])
    return model, cache, graphs


def require_browser() -> str:
    """Chromium's path; the test is skipped (with how to install it) where it is not installed."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed: sudo scripts/install-system-deps.sh")
    return CHROMIUM


def install_web_packages() -> None:
    """onnxruntime-web from the lockfile (``npm ci``), once."""
    if runtime_installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: sudo scripts/install-system-deps.sh")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB_ROOT, check=True, timeout=600, capture_output=True)


@dataclass
class ServedPage:
    """A relay serving the page in a thread of its own: read its rooms from the test; change them only
    through :meth:`call`, which runs a function on the relay's event loop."""

    url: str
    relay: object
    loop: asyncio.AbstractEventLoop

    @property
    def ws_url(self) -> str:
        """The relay's websocket address (same port as the page)."""
        return self.url.replace("http", "ws", 1)

    def call(self, function: Callable[[], object]) -> object:
        async def run() -> object:
            return function()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


@contextmanager
def relay_serving_page(graphs: Path, **relay_options: object) -> Iterator[ServedPage]:
    """A relay (``Relay(**relay_options)``) with the page, on a free loopback port, in a thread of its own."""
    from server import Relay

    loop = asyncio.new_event_loop()
    started: dict[str, object] = {}
    ready = threading.Event()

    async def serve() -> None:
        relay = Relay(**relay_options)
        async with relay.start("127.0.0.1", 0, web=WebRoutes(graphs)) as server:
            started["port"], started["relay"] = server.sockets[0].getsockname()[1], relay
            started["stop"] = stop = asyncio.Event()
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the relay did not start"
    try:
        yield ServedPage(f"http://127.0.0.1:{started['port']}", started["relay"], loop)
    finally:
        loop.call_soon_threadsafe(started["stop"].set)
        thread.join(10)


@contextmanager
def chromium(*arguments: str) -> Iterator[object]:
    """A headless Debian Chromium (Playwright's sync API); yields the browser."""
    executable = require_browser()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=[*FAKE_MEDIA, *arguments])
        try:
            yield browser
        finally:
            browser.close()


def console_errors(page: object) -> list[str]:
    """Collects the page's console errors and uncaught exceptions (the list fills as the page runs)."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def open_page(browser: object, served: ServedPage, **page_options: object) -> tuple[object, list[str]]:
    """A new tab on the served page, once its codec is ready, and the console errors it collects."""
    page = browser.new_page(**page_options)
    errors = console_errors(page)
    page.goto(served.url + "/")
    page.wait_for_function("document.getElementById('state').textContent === 'ready'", timeout=120_000)
    return page, errors


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.25) -> object:
    """Polls ``condition`` until it gives a true value, which is returned; fails saying ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
