import os
import sys

import pytest
import torch

# Tests import the project's top-level modules (server, client) from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A test that runs a command's ``main()`` in-process sets torch's threads for the process
    (``call.threads``): put them back, so that no test's numbers depend on which ran before it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["websockets", "picows"])
def relay_transport(request, monkeypatch):
    """Runs a relay test once per websocket library serving the relay (``server.py --transport``):
    the relay's behaviour towards peers must not depend on which one it is."""
    from server import Relay

    monkeypatch.setattr(Relay, "transport", request.param)
    return request.param
