"""Shared fixtures: a JACK server for the tests that need real MIDI ports.

How the JACK tests connect ports (checked with jackd2 1.9 and python-rtmidi 1.5):
rtmidi's JACK backend makes the connection itself. Opening a port *by name*
(``backend.open_input('client:port')`` / ``open_output(...)``, which is what
``improv.live.ports.MidiInput('part of name')`` does) creates our own JACK port and
connects it to the named one. Virtual ports (``virtual=True``) are plain JACK
ports named ``client:port`` (client 'improv' for improv's own), visible to any
JACK client. The ``jack_connect`` / ``jack_lsp`` tools of jackd2 work too but
are not needed. Note the JACK view: a JACK *input* port (a sink, e.g. 'improv in')
is listed among mido's *output* names, because that is what an output can open.

``JACK_NO_START_SERVER=1`` is set so that no client ever autostarts a server
behind our back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import mido
import pytest
from hypothesis import HealthCheck, settings

# A loaded CI machine must not turn slow examples into failures: no deadlines, no
# too-slow health check (each test still sets its own number of examples).
settings.register_profile("improv", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("improv")

JACK_BACKEND = "mido.backends.rtmidi/UNIX_JACK"


def _missing(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where the resource must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


def _jack_running() -> bool:
    if shutil.which("jack_lsp"):
        try:
            done = subprocess.run(
                ["jack_lsp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0
    try:
        import rtmidi

        rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK).delete()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def jack_server():
    """A JACK server for the session: the running one, or `jackd -d dummy` started here."""
    os.environ["JACK_NO_START_SERVER"] = "1"
    try:
        import rtmidi

        if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
            _missing("python-rtmidi was built without JACK support")
    except ImportError:
        _missing("python-rtmidi is not installed")
    if _jack_running():
        yield None
        return
    jackd = shutil.which("jackd")
    if jackd is None:
        _missing("jackd is not installed (apt install jackd2)")
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: jackd must never block on it
    proc = subprocess.Popen(
        [jackd, "-d", "dummy", "-r", "48000", "-p", "64"], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 10.0
    while not _jack_running():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            log.seek(0)
            err = log.read().strip().splitlines()[-3:]
            _missing(f"jackd did not start: {' / '.join(err) or 'no output'}")
        time.sleep(0.1)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def jack_backend(jack_server) -> mido.Backend:
    """mido's rtmidi backend bound to JACK, with a server running."""
    return mido.Backend(JACK_BACKEND)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight model, exported to ONNX: the live path's tests run on it."""
    import torch

    from improv.learn.export import export_model
    from improv.learn.model import GPT, ModelConfig, default_styles, save_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    gpt = GPT(ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, context=128))
    save_model(gpt, out, default_styles())
    export_model(out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run fastest on one thread (and the box is shared); ``train.main`` sets
    threads too, so the count is restored afterwards. Use: ``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def library():
    """The shipped presets."""
    from improv.core.presets import PresetLibrary

    return PresetLibrary()
