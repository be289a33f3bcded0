"""The project's shape: dependencies point one way, and the relay runs where torch is not installed."""

import subprocess
import sys
from pathlib import Path

from scripts.check_imports import violations

ROOT = Path(__file__).resolve().parent.parent

RELAY_WITHOUT_TORCH = r'''
import asyncio, importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    """As if torch (and what needs it) were not installed: importing it fails as it would there."""
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "codec", "streaming", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())

from websockets.asyncio.client import connect
from call import wire
from server import Relay

async def media(ws):
    """The next message that is not a presence notice."""
    while (message := await asyncio.wait_for(ws.recv(), 5))[0] in (wire.JOINED, wire.LEFT):
        pass
    return message

async def main():
    relay = Relay()
    async with relay.start("127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/room"
        async with connect(url, compression=None) as alice, connect(url, compression=None) as bob:
            assert wire.parse_presence(await alice.recv())[1]  # Bob joined
            header = wire.StreamHeader(fingerprint=b"fprint01", sample_rate=24000, channels=1,
                                       samples_per_frame=320, codebook_nbits=10, max_codebooks=32, stream_id=7)
            packets = [wire.AudioPacket(i, ((i * 37 + 11 * wire.np.arange(8)) % 1024,)).encode(10) for i in range(5)]
            for message in [header.encode(), *packets]:
                await alice.send(message)
            source, first = wire.unroute(await media(bob))
            assert first == header.encode()
            for packet in packets:
                assert await media(bob) == packet
    assert "torch" not in sys.modules and "codec" not in sys.modules
    print("relay forwarded", len(packets) + 1, "messages without torch")

asyncio.run(main())
'''


def test_imports_point_one_way():
    """codec ← streaming ← call ← client/benchmarks, and call.wire ← server.py with no torch below."""
    assert violations() == []


def test_relay_runs_without_torch():
    """A process in which torch cannot be imported runs the relay and carries a two-peer exchange."""
    result = subprocess.run([sys.executable, "-c", RELAY_WITHOUT_TORCH], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "forwarded 6 messages without torch" in result.stdout
