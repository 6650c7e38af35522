"""RTSP ingest against a real GStreamer RTSP camera on 127.0.0.1: the source alone (chunks,
unreachable cameras, a camera killed and restarted) and through the live service. Waits are
bounded; the timings printed (run with -s) are observations, never assertions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
from rtsp_helpers import RtspCamera, rtsp_camera
from service_helpers import TIMEOUT_S, eventually, receive_until, serve, tiny_settings, wait_until

from streamguard.config import ChunkSettings
from streamguard.ingest.chunker import AVChunk
from streamguard.ingest.rtsp import RtspSource, SourceUnreachable
from streamguard.service import create_app

pytestmark = pytest.mark.rtsp

SETTINGS = ChunkSettings()
FAST_RETRY = {"backoff": (0.1, 0.5)}  # a restarted camera is found again at once


@pytest.fixture(scope="module")
def camera():
    """A camera the tests only read from (tests that kill one start their own)."""
    with rtsp_camera() as running:
        yield running


@pytest.fixture()
def own_camera():
    with rtsp_camera() as running:
        yield running


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def source_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("rtsp ")]


async def no_source_threads() -> None:
    # a closed source does not wait for its connection thread: it ends after its current read
    await eventually(lambda: not source_threads(), "the connection threads to end")


async def take_chunks(source: RtspSource, count: int) -> list[AVChunk]:
    """The source's first `count` chunks; the source is closed afterwards."""
    chunks = []
    async with asyncio.timeout(TIMEOUT_S), contextlib.aclosing(source.chunks()) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == count:
                break
    return chunks


async def test_the_source_yields_chunks_of_moving_video_and_real_sound(camera):
    source = RtspSource(camera.url, SETTINGS)
    chunks = await take_chunks(source, 3)
    assert [chunk.index for chunk in chunks] == [0, 1, 2]
    for chunk in chunks:
        assert len(chunk.frames) == SETTINGS.frames_per_chunk
        assert chunk.frames[0].shape == (240, 320, 3) and chunk.frames[0].dtype == np.uint8
        assert chunk.audio.shape == (SETTINGS.samples_per_chunk,)
        assert np.sqrt(np.mean(chunk.audio**2)) > 0.05  # the test tone, not silence
    assert not np.array_equal(chunks[1].frames[0], chunks[1].frames[-1])  # the ball moves
    assert source.state == "live" and source.reconnects == 0 and source.chunks_dropped == 0
    await no_source_threads()  # closing the generator ended its connection thread


async def first_chunk(source: RtspSource) -> tuple[AVChunk, float]:
    """The source's first chunk and the seconds from the check before it (as a POST does both)."""
    began = time.monotonic()
    await source.check()
    (chunk,) = await take_chunks(source, 1)
    return chunk, time.monotonic() - began


async def test_single_track_cameras_deliver_their_first_chunk_as_soon_as_an_av_camera():
    # Side by side in one run, so the machine's load weighs on all three alike. The chunks of a
    # camera without audio (or video) must not wait the latency allowance for the missing track.
    with (
        rtsp_camera() as both,
        rtsp_camera(audio="none") as video_only,
        rtsp_camera(video="none") as audio_only,
    ):
        async with asyncio.timeout(TIMEOUT_S):
            (av_chunk, av_s), (video_chunk, video_s), (audio_chunk, audio_s) = await asyncio.gather(
                *(first_chunk(RtspSource(c.url, SETTINGS)) for c in (both, video_only, audio_only))
            )
    print(
        f"\nfirst chunk after the check began: A/V {av_s:.2f} s, video only {video_s:.2f} s, audio only {audio_s:.2f} s"
    )
    assert not (av_chunk.video_missing or av_chunk.audio_missing)
    assert video_chunk.audio_coverage == 0.0 and not video_chunk.video_missing
    assert audio_chunk.video_missing and audio_chunk.audio_coverage == 1.0
    assert video_s - av_s < 0.5 and audio_s - av_s < 0.5  # not the 2-s wait for a missing track


CAMERA_KINDS = {
    "pcmu": {"audio": "pcmu"},
    "pcma-mjpeg": {"audio": "pcma", "video": "mjpeg"},
    "video-only": {"audio": "none"},
    "audio-only": {"video": "none"},
    "stereo-0.9": {"channels": 2, "volume": 0.9},
    "basic-auth": {"auth": "viewer:secret"},
    "1-fps": {"fps": 1},
    "h265": pytest.param({"video": "h265"}, marks=pytest.mark.slow),
    "4k": pytest.param({"size": "3840x2160", "fps": 5}, marks=pytest.mark.slow),
}


@pytest.mark.parametrize("options", CAMERA_KINDS.values(), ids=CAMERA_KINDS.keys())
async def test_each_kind_of_camera_gives_chunks_of_its_tracks(options):
    with rtsp_camera(**options) as camera:
        chunks = await take_chunks(RtspSource(camera.url, SETTINGS), 2)
    width, height = (int(side) for side in options.get("size", "320x240").split("x"))
    for chunk in chunks:
        if options.get("video") == "none":
            assert chunk.video_missing
        else:
            assert len(chunk.frames) == SETTINGS.frames_per_chunk
            assert chunk.frames[0].shape == (height, width, 3)
        if options.get("audio") == "none":
            assert chunk.audio_coverage == 0.0
        else:
            assert chunk.audio_coverage == 1.0
            level = options.get("volume", 0.5) / np.sqrt(2)  # the tone's RMS, whatever its channels
            assert np.sqrt(np.mean(chunk.audio**2)) == pytest.approx(level, rel=0.03)
            assert not (np.abs(chunk.audio) >= 1.0).any()  # a downmix that sums would clip at 0.9


async def test_a_variable_rate_camera_holds_its_pictures_between_sparse_frames():
    # 95% of the frames dropped: about one picture in 1.3 s, gaps of several seconds. A picture
    # stays on screen until the next one, so no chunk is without video once the first came.
    with rtsp_camera(drop=0.95) as camera:
        chunks = await take_chunks(RtspSource(camera.url, SETTINGS), 5)
    first_seen = next(i for i, chunk in enumerate(chunks) if not chunk.video_missing)
    assert first_seen <= 2
    assert all(len(chunk.frames) == SETTINGS.frames_per_chunk for chunk in chunks[first_seen:])
    assert all(chunk.audio_coverage == 1.0 for chunk in chunks)


async def test_a_camera_whose_audio_clock_flips_keeps_the_timeline_to_the_clock_and_logs_it_once(caplog):
    # Its audio timestamps leap 3 s back and forth every second. Taken as holes, the leaps ran
    # the timeline ahead (14 chunks in 14 s, their audio half missing, then the video); they are
    # re-based, and the warning goes out once.
    with (
        rtsp_camera(audio_jump=3.0) as camera,
        caplog.at_level(logging.WARNING, logger="streamguard.ingest.chunker"),
    ):
        chunks = await take_chunks(RtspSource(camera.url, SETTINGS), 5)
    first = chunks[0]
    for chunk in chunks[1:]:  # the stream's time does not outrun the time it took to come
        assert chunk.start - first.start <= chunk.wallclock - first.wallclock + SETTINGS.seconds / 2
    assert all(len(chunk.frames) == SETTINGS.frames_per_chunk for chunk in chunks)
    assert all(chunk.audio_coverage > 0.9 for chunk in chunks)
    jumps = [record for record in caplog.records if "timestamp jumped" in record.getMessage()]
    assert len(jumps) == 1, [record.getMessage() for record in jumps]


async def test_a_camera_whose_media_cannot_be_decoded_is_given_up_saying_so():
    with rtsp_camera(video="junk", audio="none") as camera:
        source = RtspSource(camera.url, SETTINGS, read_timeout_s=2.0, max_attempts=1, **FAST_RETRY)
        with pytest.raises(SourceUnreachable, match=r"media cannot be decoded: .*video: Invalid data"):
            async with asyncio.timeout(TIMEOUT_S):
                await source.check()
                async for _ in source.chunks():
                    pass


async def test_a_camera_with_basic_auth_refuses_a_url_without_its_password():
    with rtsp_camera(auth="viewer:secret") as camera, pytest.raises(SourceUnreachable, match="401"):
        async with asyncio.timeout(TIMEOUT_S):
            await RtspSource(camera.url.replace("viewer:secret", "viewer:wrong"), SETTINGS).check()


async def test_a_closed_port_is_refused_at_once_with_the_url_and_no_credentials():
    url = f"rtsp://admin:hunter2@127.0.0.1:{closed_port()}/cam"
    with pytest.raises(SourceUnreachable) as raised:
        async with asyncio.timeout(TIMEOUT_S):
            await RtspSource(url, SETTINGS, open_timeout_s=2.0).check()
    message = str(raised.value)
    assert url.replace("admin:hunter2@", "") in message and "Connection refused" in message
    assert "hunter2" not in message and "admin" not in message


async def test_a_path_the_camera_does_not_serve_is_refused(camera):
    with pytest.raises(SourceUnreachable, match="404"):
        async with asyncio.timeout(TIMEOUT_S):
            await RtspSource(camera.url.replace("/cam", "/nothing"), SETTINGS).check()


async def test_a_camera_that_never_answers_is_given_up_after_max_attempts():
    states = []
    source = RtspSource(
        f"rtsp://127.0.0.1:{closed_port()}/cam",
        SETTINGS,
        max_attempts=3,
        on_state=lambda state, reason: states.append(state),
        **FAST_RETRY,
    )
    with pytest.raises(SourceUnreachable, match=r"after 3 failed attempts.*Connection refused"):
        async with asyncio.timeout(TIMEOUT_S):
            async for _ in source.chunks():
                pass
    assert states == ["reconnecting"]
    await no_source_threads()


async def test_a_camera_that_drops_every_connection_at_once_is_retried_with_backoff_and_given_up():
    states = []
    with rtsp_camera(frames=8) as camera:  # each connection opens, plays half a second and ends
        source = RtspSource(
            camera.url,
            SETTINGS,
            max_attempts=3,
            on_state=lambda state, reason: states.append(state),
            **FAST_RETRY,
        )
        # connections that open but deliver no chunk count as failed attempts: the backoff grows
        with pytest.raises(SourceUnreachable, match="after 3 failed attempts: the camera ended the stream"):
            async with asyncio.timeout(TIMEOUT_S):
                async for _ in source.chunks():
                    pass
    assert states == ["reconnecting"] and source.reconnects == 0  # never live: no chunk came


async def test_chunks_the_consumer_leaves_unread_are_dropped_oldest_first_and_counted(camera):
    source = RtspSource(camera.url, SETTINGS, max_pending_chunks=1)
    async with asyncio.timeout(TIMEOUT_S), contextlib.aclosing(source.chunks()) as stream:
        first = await anext(stream)
        await eventually(lambda: source.chunks_dropped >= 1, "a chunk dropped while nobody reads")
        after = await anext(stream)  # the newest: the ones between were dropped
        assert source.chunks_dropped == after.index - first.index - 1 >= 1
    await no_source_threads()


async def test_closing_the_source_does_not_wait_for_a_camera_that_never_answers(own_camera: RtspCamera):
    own_camera.freeze()  # it takes the TCP connection but answers nothing: the open blocks for a minute
    source = RtspSource(own_camera.url, SETTINGS, open_timeout_s=60.0, read_timeout_s=60.0)
    stream = source.chunks()
    reading = asyncio.create_task(anext(stream))
    await eventually(source_threads, "the connection thread")
    reading.cancel()  # what deleting the stream does
    async with asyncio.timeout(TIMEOUT_S / 4):  # far less than the open's minute
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await stream.aclose()
    assert source_threads()  # still in the open: nobody waited for it
    own_camera.thaw()
    await no_source_threads()  # it ends once the camera answers


async def test_check_is_not_held_up_by_a_busy_default_executor(camera):
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    busy = loop.run_in_executor(None, release.wait)  # the executor's one thread is taken
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await RtspSource(camera.url, SETTINGS, open_timeout_s=2.0).check()
    finally:
        release.set()
        await busy
    await no_source_threads()


async def test_a_killed_camera_is_reconnected_and_the_timeline_runs_on(own_camera: RtspCamera):
    events: list[tuple[str, str | None, float]] = []
    source = RtspSource(
        own_camera.url,
        SETTINGS,
        on_state=lambda state, reason: events.append((state, reason, time.monotonic())),
        **FAST_RETRY,
    )

    async def kill_and_restart() -> tuple[float, float]:
        killed = time.monotonic()
        await asyncio.to_thread(own_camera.kill)
        while not any(state == "reconnecting" for state, _, _ in events):
            await asyncio.sleep(0.05)
        await asyncio.to_thread(own_camera.start)
        return killed, time.monotonic()

    chunks, outage, after = [], None, []
    async with asyncio.timeout(2 * TIMEOUT_S), contextlib.aclosing(source.chunks()) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 2:
                outage = asyncio.create_task(kill_and_restart())
            elif outage is not None and outage.done() and source.reconnects:
                after.append((chunk, time.monotonic()))
                if len(after) == 2:
                    break
    assert outage is not None
    killed, restarted = outage.result()

    assert [state for state, _, _ in events] == ["live", "reconnecting", "live"]
    assert events[1][1] == "the camera ended the stream"
    assert source.reconnects == 1
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))  # no repeats, no reordering
    last, _ = after[-1]
    assert len(last.frames) == SETTINGS.frames_per_chunk and np.abs(last.audio).max() > 0.05
    print(
        f"\nrtsp reconnect: kill → reconnecting {events[1][2] - killed:.2f} s; "
        f"restart → live {events[2][2] - restarted:.2f} s; "
        f"restart → first chunk after it {after[0][1] - restarted:.2f} s; "
        f"chunks across the outage {[c.index for c in chunks]}"
    )


async def test_after_a_long_outage_the_camera_is_live_with_its_first_chunk_and_the_timeline_keeps_to_the_clock(
    own_camera: RtspCamera,
):
    # An outage longer than the chunker's max_gap (10 s): the new media is placed right after
    # the old instead of after an hour of gaps, and the source must say `live` with the first
    # chunk that holds it, not once the timeline has caught up with the outage.
    live_at: list[float] = []
    source = RtspSource(
        own_camera.url,
        SETTINGS,
        on_state=lambda state, _: live_at.append(time.monotonic()) if state == "live" else None,
        **FAST_RETRY,
    )
    outage_s = 12.0
    began, restarted, first_new = time.monotonic(), None, None
    chunks = []
    async with asyncio.timeout(3 * TIMEOUT_S), contextlib.aclosing(source.chunks()) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 2:
                await asyncio.to_thread(own_camera.kill)
                await asyncio.sleep(outage_s)
                await asyncio.to_thread(own_camera.start)
                restarted = time.monotonic()
            elif restarted is not None and first_new is None and not chunk.video_missing:
                first_new = time.monotonic()
            if source.reconnects or (
                first_new is not None and time.monotonic() - first_new > 3 * SETTINGS.seconds
            ):
                break
    assert restarted is not None and first_new is not None
    assert source.reconnects == 1 and len(live_at) == 2
    print(
        f"\noutage {outage_s:g} s: restart → first new chunk {first_new - restarted:.2f} s, "
        f"→ live {live_at[1] - restarted:.2f} s; timeline {chunks[-1].start + SETTINGS.seconds:.1f} s "
        f"after {time.monotonic() - began:.1f} s"
    )
    assert live_at[1] - first_new < SETTINGS.seconds  # live with (about) the first chunk of new media
    # never ahead of the time the stream has run (the outage may be skipped: behind is fine)
    assert chunks[-1].start + SETTINGS.seconds <= time.monotonic() - began + SETTINGS.seconds


async def test_a_camera_that_stops_sending_fails_the_read_and_is_reconnected(own_camera: RtspCamera):
    events: list[tuple[str, str | None, float]] = []

    def on_state(state: str, reason: str | None) -> None:
        events.append((state, reason, time.monotonic()))
        if state == "reconnecting":  # the read gave up on the silent camera
            own_camera.thaw()

    source = RtspSource(
        own_camera.url, SETTINGS, open_timeout_s=2.0, read_timeout_s=1.0, on_state=on_state, **FAST_RETRY
    )
    frozen = None
    async with asyncio.timeout(2 * TIMEOUT_S), contextlib.aclosing(source.chunks()) as stream:
        async for _ in stream:
            if frozen is None:
                own_camera.freeze()
                frozen = time.monotonic()
            elif source.reconnects:
                break
    assert [state for state, _, _ in events] == ["live", "reconnecting", "live"]
    assert events[1][1] == "reading failed: no data in time"
    print(f"\nrtsp silent camera: freeze → reconnecting {events[1][2] - frozen:.2f} s (read_timeout_s=1)")


# -- through the service ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(checkpoint):
    with serve(create_app(tiny_settings(checkpoint))) as live:
        yield live


def test_an_rtsp_stream_answers_questions_and_survives_a_camera_restart(service, own_camera):
    response = service.http.post("/v1/streams", json={"source": "rtsp", "url": own_camera.url})
    assert response.status_code == 201, response.text
    created = response.json()
    stream_id = created["id"]
    assert created["kind"] == "rtsp" and created["source"] == own_camera.url

    wait_until(lambda: service.stream(stream_id)["stats"]["chunks_processed"] >= 2, "processed chunks")
    with service.ws(f"/v1/streams/{stream_id}/ws") as ws:
        ws.send(json.dumps({"type": "question.ask", "id": "q1", "text": "What moves?", "max_tokens": 6}))
        events = receive_until(ws, lambda event: event["type"] in ("answer.done", "error"))
    assert events[-1]["type"] == "answer.done", events[-1]
    assert [event["type"] for event in events[:-1]] == ["answer.delta"] * (len(events) - 1) and events[:-1]

    killed = time.monotonic()
    own_camera.kill()
    down = wait_until(
        lambda: (stream := service.stream(stream_id))["state"] == "reconnecting" and stream,
        "the stream to say it is reconnecting",
    )
    noticed = time.monotonic()
    assert down["error"] == "the camera ended the stream"
    received = down["stats"]["chunks_received"]
    own_camera.start()
    restarted = time.monotonic()
    back = wait_until(
        lambda: (stream := service.stream(stream_id))["state"] == "live" and stream, "the stream to be live"
    )
    live = time.monotonic()
    assert back["stats"]["reconnects"] == 1 and back["error"] is None
    wait_until(
        lambda: service.stream(stream_id)["stats"]["chunks_received"] >= received + 2,
        "chunks after the restart",
    )
    metrics = service.http.get("/metrics").text
    assert f'streamguard_source_reconnects_total{{stream="{stream_id}"}} 1.0' in metrics
    print(
        f"\nservice rtsp: kill → state reconnecting seen {noticed - killed:.2f} s; "
        f"restart → state live seen {live - restarted:.2f} s"
    )
    final = service.http.delete(f"/v1/streams/{stream_id}").json()
    assert final["state"] == "ended" and final["stats"]["chunks_shed"] == 0
    wait_until(lambda: not source_threads(), "the camera's connection thread to end")


def test_a_1_fps_camera_gives_its_first_chunk_within_two_chunk_periods_of_the_post(service):
    with rtsp_camera(fps=1) as camera:
        posted = time.monotonic()
        response = service.http.post("/v1/streams", json={"source": "rtsp", "url": camera.url})
        assert response.status_code == 201, response.text
        answered = time.monotonic() - posted
        stream_id = response.json()["id"]
        wait_until(lambda: service.stream(stream_id)["stats"]["chunks_received"] >= 1, "the first chunk")
        first = time.monotonic() - posted
        service.http.delete(f"/v1/streams/{stream_id}")
    print(f"\n1 fps camera: POST answered after {answered:.2f} s, first chunk after {first:.2f} s")
    # the camera is opened once (the check's connection is read), and the chunk leaves once a
    # frame passed its last sampling instant
    assert first <= 2 * SETTINGS.seconds


@pytest.mark.parametrize("server", ["none", "http"])
def test_an_unreachable_camera_is_refused_with_source_unreachable(service, server):
    # nothing listening, or an HTTP server (the service itself) where a camera should be
    port = closed_port() if server == "none" else urlsplit(service.url).port
    url = f"rtsp://viewer:secret@127.0.0.1:{port}/cam"
    response = service.http.post("/v1/streams", json={"source": "rtsp", "url": url})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "source_unreachable"
    assert ("Connection refused" if server == "none" else "not an RTSP server") in error["message"]
    redacted = url.replace("viewer:secret@", "")
    assert redacted in error["message"] and "secret" not in error["message"]
    assert redacted not in [stream["source"] for stream in service.http.get("/v1/streams").json()["streams"]]


def test_a_url_with_another_scheme_is_refused_before_any_connection(service):
    response = service.http.post("/v1/streams", json={"source": "rtsp", "url": "http://127.0.0.1/cam"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert (
        error["code"] == "unsupported_scheme"
        and "rtsp://" in error["message"]
        and "'http'" in error["message"]
    )
    assert not source_threads()  # no connection was tried
