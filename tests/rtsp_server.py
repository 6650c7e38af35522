"""A live RTSP camera for tests: GStreamer's RTSP server on 127.0.0.1 serving /cam.

Run it with the SYSTEM interpreter (Debian python3-gi and gir1.2-gst-rtsp-server-1.0; a venv
has no `gi`): `/usr/bin/python3 tests/rtsp_server.py --port 8554`. The picture is a bouncing
ball (motion, so the temporal rule keeps the video) and the sound a tone that sweeps up and
down (real, non-silent audio). One shared media: every client sees the same live feed. Prints
`READY rtsp://127.0.0.1:<port>/cam` once it listens; runs until killed.

`--frames N`: a camera that drops its clients at once. Each client gets a media of its own that
ends after N video frames (and as many audio buffers), so every connection opens, plays a
fraction of a second and ends before a chunk is complete.
"""

from __future__ import annotations

import argparse
import math
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PATH = "/cam"
LAUNCH = (
    "( videotestsrc is-live=true {limit} pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 "
    "audiotestsrc is-live=true {limit} name=tone freq=440 volume=0.5 ! audioconvert ! audioresample "
    "! avenc_aac ! rtpmp4gpay name=pay1 pt=97 )"
)
SWEEP_PERIOD_S = 4.0  # the tone's frequency goes 300 → 900 → 300 Hz in this time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--frames", type=int, help="end each client's stream after this many frames")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH.format(limit="" if args.frames is None else f"num-buffers={args.frames}"))
    factory.set_shared(args.frames is None)  # a short media ends for good: each client gets its own
    factory.connect("media-configure", _sweep_tone)
    server.get_mount_points().add_factory(PATH, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{PATH}", flush=True)
    GLib.MainLoop().run()
    return 0


def _sweep_tone(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
    """Vary the tone's pitch while the media plays, so consecutive chunks sound different."""
    tone = media.get_element().get_by_name("tone")
    ticks = 0

    def step() -> bool:
        nonlocal ticks
        ticks += 1
        phase = 2 * math.pi * ticks * 0.1 / SWEEP_PERIOD_S
        tone.set_property("freq", 600.0 - 300.0 * math.cos(phase))
        return True

    timer = GLib.timeout_add(100, step)
    media.connect("unprepared", lambda _media: GLib.source_remove(timer))


if __name__ == "__main__":
    sys.exit(main())
