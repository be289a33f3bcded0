"""Plain HTTP beside the relay's websocket, on the same port: the browser peer's page (``web/``), its
onnxruntime-web runtime (``web/node_modules``, installed from the lockfile) and the exported graphs
(``call.web_bundle``). Torch-free: the relay imports it.

A request that asks for a websocket upgrade goes on to the relay's own checks; any other GET is
answered here, from the files of an allow-list read once at start (no path is ever joined from the
URL; an answer never waits for a disk, so either websocket library can give it in its handshake).

Browsers cannot put an ``Authorization`` header on a websocket, so the page offers its token as a
websocket subprotocol, ``bearer.<base64url(token)>``, beside ``encodec-stream``; this turns it
into the header the relay checks and the relay picks ``encodec-stream`` (a browser closes a socket
whose server picked none of the protocols it offered). A token never goes in the URL.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from http import HTTPStatus
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
RUNTIME = WEB_ROOT / "node_modules" / "onnxruntime-web" / "dist"
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
"""What onnxruntime-web's WASM build loads with one thread (no WebGPU, no JSEP)."""
PAGE_SUFFIXES = (".html", ".js", ".css", ".svg")
SUBPROTOCOL = "encodec-stream"
TOKEN_PREFIX = "bearer."
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".onnx": "application/octet-stream", ".json": "application/json"}

Handler = Callable[[object, Request], "Response | None"]


class WebRoutes:
    """Answers the page's GET requests from three folders: the page, the runtime and the graphs."""

    def __init__(self, graphs: Path, root: Path = WEB_ROOT, runtime: Path = RUNTIME) -> None:
        if not (graphs / "manifest.json").is_file():
            raise FileNotFoundError(f"{graphs} holds no manifest.json: export the graphs first "
                                    f"(python -m call.web_bundle --model default --out {graphs})")
        if not runtime_installed(runtime):
            raise FileNotFoundError(f"onnxruntime-web is not installed in {runtime.parents[1]}: run npm ci in {root}")
        folders: dict[str, tuple[Path, Callable[[str], bool]]] = {
            "/": (root, lambda name: name.endswith(PAGE_SUFFIXES)),
            "/vendor/": (runtime, RUNTIME_FILES.__contains__),
            "/models/": (graphs, lambda name: name.endswith((".onnx", ".json"))),
        }
        self.files = {prefix + path.name: (content_type(path), path.read_bytes())
                      for prefix, (directory, allowed) in folders.items() for path in sorted(directory.iterdir())
                      if FILE_NAME.fullmatch(path.name) and allowed(path.name) and path.is_file()}
        """URL path → (type, body): ``/NAME`` a file of the page, ``/vendor/NAME`` a runtime file,
        ``/models/NAME`` a graph or the manifest. Read now, at start: the graphs and the runtime are
        what a relay held anyway once the first page had loaded (a change in ``web/`` shows at a restart)."""

    def answer(self, request: Request) -> Response:
        """The file a GET names (``/`` is the page), or 404."""
        path = urlsplit(request.path).path
        found = self.files.get("/index.html" if path == "/" else path)
        if found is None:
            return _response(HTTPStatus.NOT_FOUND, "text/plain", b"Not found\n")
        return _response(HTTPStatus.OK, *found)

    def before(self, relay_check: Handler, relay_route: Handler | None = None) -> Handler:
        """A ``process_request``: HTTP here, upgrades to ``relay_check`` (the page's token made a header
        first). The relay's own routes (``relay_route``: ``/metrics``) answer plain HTTP before the page's files do."""
        def process_request(connection: object, request: Request) -> Response | None:
            if request.headers.get("Upgrade", "").lower() != "websocket":
                response = relay_route(connection, request) if relay_route is not None else None
                return response if response is not None else self.answer(request)
            bearer_from_subprotocol(request)
            return relay_check(connection, request)
        return process_request


def content_type(path: Path) -> str:
    return TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def runtime_installed(runtime: Path = RUNTIME) -> bool:
    """Whether ``npm ci`` in ``web/`` has put onnxruntime-web's files where the page loads them from."""
    return all((runtime / name).is_file() for name in RUNTIME_FILES)


def offered_subprotocols(request: Request) -> list[str]:
    """The subprotocols a websocket handshake offers, in order."""
    return [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",")]


def select_subprotocol(connection: object, offered: list[str]) -> str | None:
    """websockets' ``select_subprotocol``: the page's protocol where it is offered; none for the Python
    clients, which offer none (websockets' own choice would refuse them)."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def bearer_from_subprotocol(request: Request) -> None:
    """A page's token, offered as the subprotocol ``bearer.<base64url>``, as the ``Authorization`` header
    (a header the client sent wins); a token that does not decode is left out, so it fails as a wrong one."""
    if "Authorization" in request.headers:
        return
    for protocol in offered_subprotocols(request):
        if protocol.startswith(TOKEN_PREFIX):
            encoded = protocol[len(TOKEN_PREFIX):]
            try:
                token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                return
            request.headers["Authorization"] = f"Bearer {token}"
            return


def _response(status: HTTPStatus, content_type: str, body: bytes) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)
