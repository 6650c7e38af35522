"""A real RTSP camera for tests: tests/rtsp_server.py (GStreamer's RTSP server) as a subprocess.

with rtsp_camera() as camera:   # skips the test when the system Python lacks GstRtspServer
    open(camera.url)            # rtsp://127.0.0.1:<port>/cam, a live ball and a sweeping tone
    camera.freeze()             # the camera hangs: connections open, nothing sent (SIGSTOP)
    camera.thaw()               # and carries on (SIGCONT)
    camera.kill()               # the camera dies (SIGKILL)
    camera.start()              # and comes back on the same port

with rtsp_camera(frames=8) as camera:  # every connection opens, plays 8 frames and ends
with rtsp_camera(audio="none", fps=1, auth="user:pw") as camera:  # tests/rtsp_server.py's options
"""

from __future__ import annotations

import functools
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi lives
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@functools.cache
def rtsp_server_missing() -> str | None:
    """Why the test camera cannot run here, or None when it can."""
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import GstRtspServer"
    )
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot run: {exc}"
    if result.returncode != 0:
        return (
            f"{SYSTEM_PYTHON} cannot import GstRtspServer (install python3-gi and "
            f"gir1.2-gst-rtsp-server-1.0): {result.stderr.strip().splitlines()[-1:]}"
        )
    return None


class RtspCamera:
    """The test camera process; `port` stays the same across `kill()` and `start()`. `options`
    are tests/rtsp_server.py's (`frames=8`, `audio="none"`, `audio_jump=3.0`, ...); with `auth`
    ("user:password") `url` carries the credentials."""

    def __init__(self, port: int = 0, **options: str | int | float):
        self.port = port  # 0 until the first start picks a free one
        self.options = options
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        auth = self.options.get("auth")
        return f"rtsp://{f'{auth}@' if auth else ''}127.0.0.1:{self.port}/cam"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start serving and return once it listens."""
        assert not self.running, "the camera is already running"
        flags = [
            item
            for name, value in self.options.items()
            for item in (f"--{name.replace('_', '-')}", str(value))
        ]
        process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._process = process
        lines: queue.Queue[str] = queue.Queue()
        # Read its output on a thread for the whole run, so a full pipe never blocks the server.
        threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
        output = []
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                self.kill()
                raise AssertionError(f"the RTSP camera did not start in {START_TIMEOUT_S:.0f} s") from None
            if line.startswith("READY "):
                self.port = urlsplit(line.split()[1]).port or self.port
                return
            output.append(line)
            if not line:  # its output ended: it exited
                process.wait(STOP_TIMEOUT_S)
                raise AssertionError(f"the RTSP camera exited ({process.returncode}): {''.join(output)}")

    def freeze(self) -> None:
        """The camera stops sending but keeps its connections open, as when it hangs (SIGSTOP)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """The camera dies at once, as when it loses power (SIGKILL)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT_S)
            self._process = None


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put("")


@contextmanager
def rtsp_camera(port: int = 0, **options: str | int | float) -> Iterator[RtspCamera]:
    """A running test camera (`options` as `RtspCamera`'s), killed afterwards; skips the test
    where it cannot run."""
    missing = rtsp_server_missing()
    if missing is not None:
        pytest.skip(missing)
    camera = RtspCamera(port, **options)
    camera.start()
    try:
        yield camera
    finally:
        camera.kill()
