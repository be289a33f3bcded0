"""The relay serves the browser peer over plain HTTP on its websocket port (``server.py --web``): the page,
the onnxruntime-web files and the graphs, nothing else; a page's token offered as a websocket subprotocol
opens a room that needs one; Python clients connect as before."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from call import wire
from call.relay_metrics import metrics_route
from call.web_routes import SUBPROTOCOL, WebRoutes
from server import Relay, main as server_main
from tests.web_page import install_web_packages


@pytest.fixture
def graphs(tmp_path):
    install_web_packages()
    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": "00" * 8}))
    (tmp_path / "decoder.onnx").write_bytes(b"graph")
    return tmp_path


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def bearer(token: str) -> str:
    return "bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def test_page_runtime_and_graphs_served_and_nothing_else(graphs, caplog, relay_transport):
    caplog.set_level(logging.DEBUG, logger="relay")  # the websockets layer logs each header at DEBUG
    relay = Relay(room_tokens={"locked": "s3cret/+="})
    async with relay.start("127.0.0.1", 0, web=WebRoutes(graphs)) as server:
        base = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        fetch = lambda path: asyncio.to_thread(get, f"http://{base}{path}")  # noqa: E731
        status, kind, body = await fetch("/")
        assert status == 200 and kind == "text/html" and b"<title>EnCodec call</title>" in body
        assert (await fetch("/codec-worker.js"))[:2] == (200, "text/javascript")
        status, kind, body = await fetch("/vendor/ort-wasm-simd-threaded.wasm")
        assert status == 200 and kind == "application/wasm" and body[:4] == b"\0asm"
        assert (await fetch("/models/decoder.onnx"))[2] == b"graph"
        assert json.loads((await fetch("/models/manifest.json"))[2]) == {"fingerprint": "00" * 8}
        for path in ["/../server.py", "/%2e%2e/server.py", "/models/../../server.py", "/node_modules/onnxruntime-web/package.json",
                     "/.gitignore", "/package.json", "/vendor/ort.node.min.mjs", "/models/x.py", "/a/b/c.js"]:
            assert (await fetch(path))[0] == 404, path

        # The page's token travels as a subprotocol (a browser cannot set Authorization on a websocket).
        async with connect(f"ws://{base}/locked", subprotocols=[SUBPROTOCOL, bearer("s3cret/+=")], compression=None) as page:
            assert page.subprotocol == SUBPROTOCOL
            async with connect(f"ws://{base}/locked", additional_headers={"Authorization": "Bearer s3cret/+="},
                               compression=None) as python_peer:
                assert python_peer.subprotocol is None  # a Python client offers none and is served as before
                assert wire.parse_presence(await asyncio.wait_for(page.recv(), 5)) == (2, True)
        with pytest.raises(InvalidStatus, match="401"):
            async with connect(f"ws://{base}/locked", subprotocols=[SUBPROTOCOL, bearer("wrong")]):
                pass
    assert relay.counters["refused_auth"] == 1
    if relay_transport == "websockets":  # picows logs no headers (call/relay_picows.py: picows_log)
        assert "Sec-WebSocket-Protocol: [redacted]" in caplog.text
    assert bearer("s3cret/+=") not in caplog.text and bearer("wrong") not in caplog.text


def test_web_without_graphs_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--web: .* holds no manifest.json: export the graphs first"):
        server_main(["--port", "0", "--web", str(tmp_path)])


async def test_metrics_and_the_page_share_the_port(graphs, relay_transport):
    relay = Relay()
    relay.routes.append(metrics_route(relay))
    async with relay.start("127.0.0.1", 0, web=WebRoutes(graphs)) as server:
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        status, kind, body = await asyncio.to_thread(get, f"{base}/metrics")
        assert status == 200 and kind.startswith("text/plain") and b"relay_peers" in body
        assert (await asyncio.to_thread(get, f"{base}/"))[0] == 200
