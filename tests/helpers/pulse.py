"""A private PulseAudio server with virtual devices, for driving ``simulate --mic`` on a machine with no sound card.

Two null sinks: ``mic`` (what is played into it is what the microphone hears: the default source is
its monitor) and ``speaker`` (the default sink: what the agent says can be recorded from its monitor).
PortAudio reaches it through ALSA's pulse plugin (Debian: libasound2-plugins), found via ``PULSE_SERVER``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOOLS = ("pulseaudio", "pactl", "pacat", "parecord")
INSTALL = ("Debian/Ubuntu: apt-get install pulseaudio pulseaudio-utils libasound2-plugins portaudio19-dev, "
           "then pip install pyaudio (scripts/test.sh does the pip part when PortAudio's headers are there)")


def unavailable() -> str | None:
    """Why a virtual sound device cannot be set up here, or ``None``."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    try:
        import pyaudio  # noqa: F401
    except ImportError:
        return "PyAudio not installed"
    return None


class PulseServer:
    """A running private server; :attr:`env` points clients at it."""

    def __init__(self, folder: Path, process: subprocess.Popen[bytes]) -> None:
        self.folder = folder
        self.process = process
        self.env = {**os.environ, "PULSE_SERVER": f"unix:{folder / 'native'}"}

    def pactl(self, *args: str) -> str:
        """Run ``pactl`` against this server; its output."""
        return subprocess.run(["pactl", *args], env=self.env, check=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    def play(self, sink: str, pcm16k: bytes) -> None:
        """Play 16 kHz mono PCM16 into ``sink``, in real time; returns when it has played."""
        subprocess.run(["pacat", "--playback", "-d", sink, "--format=s16le", "--rate=16000", "--channels=1"],
                       input=pcm16k, env=self.env, check=True, timeout=60 + len(pcm16k) / 32000)

    @contextmanager
    def record(self, source: str, path: Path) -> Iterator[Path]:
        """Record ``source`` as 16 kHz mono PCM16 into ``path`` while the block runs."""
        recorder = subprocess.Popen(["parecord", "-d", source, "--raw", "--format=s16le", "--rate=16000",
                                     "--channels=1", str(path)], env=self.env)
        try:
            yield path
        finally:
            recorder.terminate()
            recorder.wait(timeout=10)


@contextmanager
def pulse_server() -> Iterator[PulseServer]:
    """Start a private PulseAudio server (no configuration of the machine's is read); stop it after."""
    folder = Path(tempfile.mkdtemp(prefix="pa-"))  # short: a unix socket path has ~100 characters
    script = folder / "default.pa"
    script.write_text(
        f"load-module module-native-protocol-unix socket={folder / 'native'} auth-anonymous=1\n"
        "load-module module-null-sink sink_name=mic rate=16000 channels=1\n"
        "load-module module-null-sink sink_name=speaker rate=16000 channels=1\n"
        "set-default-sink speaker\n"
        "set-default-source mic.monitor\n")
    env = {**os.environ, "HOME": str(folder), "XDG_RUNTIME_DIR": str(folder)}
    env.pop("PULSE_SERVER", None)
    log = (folder / "pulseaudio.log").open("wb")
    process = subprocess.Popen(["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1",
                                "--use-pid-file=no", "--disable-shm=yes", "--log-target=stderr"],
                               env=env, stdout=log, stderr=log)
    server = PulseServer(folder, process)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {(folder / 'pulseaudio.log').read_text()[-2000:]}")
            try:
                if "Default Sink: speaker" in server.pactl("info"):
                    break
            except subprocess.CalledProcessError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("pulseaudio did not come up in 20 s")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
