"""client.py as a new user meets it: mistakes are one line and come before the model loads,
a relay that cannot be reached is given up with the reason, the help says what is accepted."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import client
from tests.models import small_model
from tests.test_call import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    small_model().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory):
    """A directory whose config.json is fine and whose weights cannot load: an error about the
    weights means the model was being loaded."""
    directory = tmp_path_factory.mktemp("broken")
    small_model().config.save_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"not a checkpoint")
    return directory


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the client gets as far as loading weights."""
    import codec

    def load_model(spec, **kwargs):
        raise AssertionError(f"the model {spec} was loaded before the mistake was seen")

    monkeypatch.setattr(codec, "load_model", load_model)


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "client.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def usage_error(capsys, argv: list[str]) -> str:
    """The one error line of a command line refused by argparse (exit status 2)."""
    with pytest.raises(SystemExit) as exited:
        client.main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("usage:") and ": error: " in lines[-1]
    assert not any("Traceback" in line for line in lines)
    return lines[-1].split(": error: ", 1)[1]


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    soundfile.write(path, np.zeros(2400, np.float32), 24000)
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--room", "my room"], "'my room' is not a room name: use letters, digits, _ . - (1 to 64 characters)"),
    (["--room", "x" * 65], "is not a room name"),
    (["--room", "r", "--input", "/no/such/speech.wav"], "argument --input: no such file: /no/such/speech.wav"),
    (["--room", "r", "--input", __file__], "is not an audio file this client reads"),
    (["--room", "r", "--output", "/no/such/dir/heard.wav"], "argument --output: no such directory: /no/such/dir"),
    (["--room", "r", "--bandwidth", "six"], "argument --bandwidth: must be a number"),
    (["--room", "r", "--frames-per-packet", "0"], "argument --frames-per-packet: must be a whole number from 1 to 128"),
    (["--room", "r", "--frames-per-packet", "1.5"], "argument --frames-per-packet: must be a whole number"),
    (["--room", "r", "--server", "localhost:8765"], "argument --server: 'localhost:8765' is not a relay URL"),
    (["--room", "r", "--threads", "0"], "argument --threads: must be a whole number of 1 or more"),
    (["--room", "r", "--connect-timeout", "-1"], "argument --connect-timeout: must be a number of 0 or more"),
    (["--room", "r", "--output-format", "mp3"], "argument --output-format: invalid choice: 'mp3'"),
], ids=["room-space", "room-long", "input-missing", "input-not-audio", "output-dir", "bandwidth-word",
        "frames-0", "frames-fraction", "server-scheme", "threads-0", "timeout-negative", "output-format"])
def test_mistakes_are_one_line_before_the_model_loads(capsys, no_model_load, args, message):
    # --model names a path that cannot load: had it been tried first, its error would be the one shown.
    assert message in usage_error(capsys, args + ["--model", "/no/such/model"])


def test_a_bandwidth_the_model_lacks_is_refused_from_its_config_before_its_weights(capsys, broken_model, audio):
    line = usage_error(capsys, ["--room", "r", "--input", audio, "--bandwidth", "5", "--model", str(broken_model)])
    assert line == f"--bandwidth 5: model '{broken_model}' offers 1.5, 3, 6, 12, 24 kbps"
    with pytest.raises(SystemExit, match="Cannot load model"):  # the weights would have failed
        client.main(["--room", "r", "--input", audio, "--bandwidth", "6", "--model", str(broken_model)])


def test_a_model_that_cannot_stream_is_refused_from_its_config(capsys, tmp_path, no_model_load):
    from codec.config import config_48khz

    config_48khz().save_pretrained(tmp_path)
    line = usage_error(capsys, ["--room", "r", "--model", str(tmp_path), "--bandwidth", "6"])
    assert line.startswith(f"--model {tmp_path}: This model cannot stream frame by frame")


def test_a_bandwidth_is_checked_once_loaded_where_no_config_could_be_read(monkeypatch, no_model_load):
    monkeypatch.setattr(client, "known_config", lambda spec: None)  # a Meta .th file, an uncached hub id
    import codec

    monkeypatch.setattr(codec, "load_model", lambda spec: small_model())
    monkeypatch.setattr(client, "configure_threads", lambda n: None)
    with pytest.raises(SystemExit) as exited:
        client.main(["--room", "r", "--bandwidth", "5", "--model", "x.th"])
    assert str(exited.value.code) == "--bandwidth 5: model 'x.th' offers 1.5, 3, 6, 12, 24 kbps"


def test_help_lists_the_bandwidths_and_the_room_rule():
    help_text = " ".join(run_client("--help").stdout.split())
    assert "1.5, 3, 6, 12, 24 for the default model" in help_text
    assert "room name: letters, digits, _ . - (1 to 64 characters)" in help_text
    for option in ("--connect-timeout", "--reconnect-timeout", "--retry-forever", "--threads",
                   "--output-format", "--output-rate"):
        assert option in help_text


def test_threads_default_to_one_per_model_thread_and_follow_threads(monkeypatch):
    import codec

    configured = []
    monkeypatch.setattr(client, "configure_threads", configured.append)
    monkeypatch.setattr(codec, "load_model", lambda spec: (_ for _ in ()).throw(OSError("stop here")))
    for argv in (["--room", "r"], ["--room", "r", "--threads", "3"]):
        with pytest.raises(SystemExit, match="stop here"):
            client.main(argv)
    assert configured == [1, 3]


def test_configure_threads_sets_torchs_intra_op_threads():
    import torch

    from call.threads import configure_threads

    before = torch.get_num_threads()
    try:
        configure_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_an_unreachable_relay_is_given_up_with_the_reason_in_one_line(model_dir, tmp_path):
    url = f"ws://127.0.0.1:{free_port()}"
    done = run_client("--server", url, "--room", "r", "--model", str(model_dir), "--output",
                      str(tmp_path / "heard.wav"), "--quiet", "--connect-timeout", "0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [f"Cannot reach the relay at {url}/r: connection refused by 127.0.0.1:{url.rsplit(':', 1)[1]} "
                     "(is the relay running there?); gave up after 0 s (--connect-timeout, --retry-forever)"]
    assert not (tmp_path / "heard.wav").exists()


def test_a_token_sent_in_clear_to_another_host_is_warned_about(capsys, no_model_load):
    with pytest.raises(AssertionError):  # stopped at the model load, before any connection
        client.main(["--server", "ws://relay.example.org:8765", "--room", "r", "--token", "secret"])
    assert capsys.readouterr().err.splitlines() == [
        "warning: --token goes to relay.example.org unencrypted over ws://, readable by anyone on the way; "
        "use wss:// (python server.py --tls-cert/--tls-key)"]


@pytest.mark.parametrize("url, token, warned", [
    ("ws://relay.example.org:8765", "t", True), ("ws://10.0.0.5", "t", True),
    ("wss://relay.example.org", "t", False), ("ws://relay.example.org", None, False),
    ("ws://127.0.0.1:8765", "t", False), ("ws://localhost:8765", "t", False), ("ws://[::1]:8765", "t", False),
])
def test_which_tokens_are_warned_about(url, token, warned):
    from call.connection import plaintext_token_warning

    assert (plaintext_token_warning(url, token) is not None) == warned
