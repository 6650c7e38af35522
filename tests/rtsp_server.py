"""A live RTSP camera for tests: GStreamer's RTSP server on 127.0.0.1 serving /cam.

Run it with the SYSTEM interpreter (Debian python3-gi and gir1.2-gst-rtsp-server-1.0; a venv
has no `gi`): `/usr/bin/python3 tests/rtsp_server.py --port 8554`. The picture is a bouncing
ball (motion, so the temporal rule keeps the video) and the sound a tone that sweeps up and
down (real, non-silent audio). One shared media: every client sees the same live feed. Prints
`READY rtsp://127.0.0.1:<port>/cam` once it listens; runs until killed.

The options make the kinds of camera met in the field:
  --video h264|h265|mjpeg|none   --size 320x240   --fps 15   --drop 0.95 (VFR: drops raw frames)
  --video junk                   H.264 by its SDP, random bytes on the wire: nothing decodes
  --audio aac|pcmu|pcma|none     --channels 1|2   --volume 0.5
  --auth user:password           basic authentication
  --audio-jump S                 the audio's RTP timestamps leap S seconds back and forth again,
                                 every second (what a camera whose clock re-syncs sends)
  --frames N                     a camera that drops its clients at once: each client gets a media
                                 of its own that ends after N video frames (and as many audio
                                 buffers), so every connection ends before a chunk is complete
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PATH = "/cam"
SWEEP_PERIOD_S = 4.0  # the tone's frequency goes 300 → 900 → 300 Hz in this time
SLOW_CAPTURE_FPS = 5  # a camera slower than this takes its pictures from a capture at this rate

VIDEO_ENCODERS = {
    # a key frame every second (at least every frame), as cameras are usually set up
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph264pay",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph265pay",
    "mjpeg": "jpegenc ! rtpjpegpay",
}
# H.264 as the SDP says, but random bytes: a camera whose media nothing can decode.
JUNK_VIDEO = (
    "appsrc name=junk is-live=true do-timestamp=true format=time "
    'caps="video/x-h264,stream-format=byte-stream,alignment=au" ! rtph264pay name=pay0 pt=96'
)
AUDIO_ENCODERS = {
    "aac": "audio/x-raw,rate=16000 ! avenc_aac ! rtpmp4gpay",
    "pcmu": "audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay",
    "pcma": "audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay",
}


def launch_line(args: argparse.Namespace) -> str:
    limit = "" if args.frames is None else f"num-buffers={args.frames}"
    width, height = args.size.split("x")
    parts = []
    if args.video == "junk":
        parts.append(JUNK_VIDEO)
    elif args.video != "none":
        # A live test source holds each frame for its whole period before it sends it; a slow
        # camera sends a picture as soon as it is taken: take them from a faster capture.
        capture = max(args.fps, SLOW_CAPTURE_FPS)
        slow = f"! videorate drop-only=true max-rate={args.fps} " if capture > args.fps else ""
        drop = f"! identity drop-probability={args.drop} " if args.drop else ""
        encoder = VIDEO_ENCODERS[args.video].format(gop=max(1, round(args.fps)))
        parts.append(  # I420: RTP carries 4:2:0 JPEG only
            f"videotestsrc is-live=true {limit} pattern=ball "
            f"! video/x-raw,format=I420,width={width},height={height},framerate={capture}/1 {slow}{drop}"
            f"! {encoder} name=pay0 pt=96"
        )
    if args.audio != "none":
        name = "pay1" if args.video != "none" else "pay0"
        parts.append(
            f"audiotestsrc is-live=true {limit} name=tone freq=440 volume={args.volume} "
            f"! audio/x-raw,channels={args.channels} ! audioconvert ! audioresample "
            f"! {AUDIO_ENCODERS[args.audio]} name={name} pt=97"
        )
    return f"( {' '.join(parts)} )"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--frames", type=int, help="end each client's stream after this many frames")
    parser.add_argument("--video", choices=[*VIDEO_ENCODERS, "junk", "none"], default="h264")
    parser.add_argument("--audio", choices=[*AUDIO_ENCODERS, "none"], default="aac")
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--drop", type=float, default=0.0, help="probability of dropping a raw frame")
    parser.add_argument("--channels", type=int, choices=[1, 2], default=1)
    parser.add_argument("--volume", type=float, default=0.5)
    parser.add_argument("--auth", help="user:password for basic authentication")
    parser.add_argument("--audio-jump", type=float, help="seconds the audio timestamps leap back and forth")
    args = parser.parse_args()
    if args.video == args.audio == "none":
        parser.error("a camera needs video or audio")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(args.frames is None)  # a short media ends for good: each client gets its own
    if args.audio != "none":
        factory.connect("media-configure", _sweep_tone)
    if args.video == "junk":
        factory.connect("media-configure", _feed_junk, args.fps)
    if args.audio_jump:
        factory.connect("media-configure", _jump_audio_clock, args)
    if args.auth:
        _require_basic_auth(server, factory, *args.auth.split(":", 1))
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

    _while_prepared(media, GLib.timeout_add(100, step))


def _jump_audio_clock(
    _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia, args: argparse.Namespace
) -> None:
    """Stamp the audio `--audio-jump` seconds early for one second in every two, so its RTP
    timestamps leap back and forth again, as a camera whose clock RTCP keeps re-syncing sends
    them. (Early, not late: the server would hold buffers stamped late until their time.)"""
    pay = media.get_element().get_by_name("pay1" if args.video != "none" else "pay0")
    leap = round(args.audio_jump * Gst.SECOND)

    def shift(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buffer = info.get_buffer()
        if buffer.pts != Gst.CLOCK_TIME_NONE and buffer.pts >= leap and (buffer.pts // Gst.SECOND) % 2:
            buffer.pts -= leap
        return Gst.PadProbeReturn.OK

    pay.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, shift)


def _feed_junk(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia, fps: int) -> None:
    """Push `fps` access units of random bytes a second (after a start code and an IDR NAL
    header, so the payloader sends them)."""
    source = media.get_element().get_by_name("junk")

    def push() -> bool:
        source.emit("push-buffer", Gst.Buffer.new_wrapped(b"\x00\x00\x00\x01\x65" + os.urandom(3000)))
        return True

    _while_prepared(media, GLib.timeout_add(1000 // fps, push))


def _while_prepared(media: GstRtspServer.RTSPMedia, timer: int) -> None:
    media.connect("unprepared", lambda _media: GLib.source_remove(timer))


def _require_basic_auth(
    server: GstRtspServer.RTSPServer, factory: GstRtspServer.RTSPMediaFactory, user: str, password: str
) -> None:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_role_from_structure(
        Gst.Structure.from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )[0]
    )
    factory.set_permissions(permissions)


if __name__ == "__main__":
    sys.exit(main())
