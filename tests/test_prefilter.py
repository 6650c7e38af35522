"""The pixel pre-filter on what fixed cameras send: generated 640x360 scenes with σ=3 sensor
noise, H.264-encoded with a keyframe every 2 s (its quality pulses with them), decoded and cut
into chunks by the file source as a stream would be. Each case of the issue: a static scene,
auto-exposure drift, a clock overlay, an object entering at a known time (also in a chunk's last
frame only), a slow pan and an IR night-mode switch; and the `max_skip_run` valve.

A chunk the pre-filter encodes is taken as kept here (the drop rule's own verdict is exercised
through the pipeline in test_drop_policies.py and test_replay_cli.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from streamguard.config import ChunkSettings, PrefilterSettings
from streamguard.ingest.files import iter_chunks
from streamguard.ingest.synthetic import enter_box, generate_frames, write_clip
from streamguard.pruning.prefilter import Prefilter, Screening

SECONDS = 24.0
EVENT_AT = 13.0  # in chunk 6 (12-14 s), its second sampled frame on
EVENT_CHUNK = 6


def camera_clip(folder, motion: str, event_at: float = EVENT_AT):
    return write_clip(
        folder / f"{motion}-{event_at}.mp4",
        SECONDS,
        width=640,
        height=360,
        fps=4,
        motion=motion,
        audio="none",
        noise=3.0,
        event_at=event_at,
        keyframe_s=2.0,
    )


def screen(path, settings: PrefilterSettings | None = None) -> list[Screening]:
    prefilter = Prefilter(settings or PrefilterSettings())
    verdicts = []
    for chunk in iter_chunks(path, ChunkSettings()):
        verdict = prefilter.screen(chunk.frames)
        prefilter.record(verdict, chunk.index, video_kept=not verdict.skip)
        verdicts.append(verdict)
    assert len(verdicts) == SECONDS / 2
    return verdicts


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cameras")
    return {
        motion: camera_clip(folder, motion) for motion in ("static", "drift", "clock", "enter", "pan", "ir")
    }


def test_a_static_noisy_compressed_scene_skips_every_chunk_after_the_first(clips):
    verdicts = screen(clips["static"])
    assert verdicts[0].reason == "no_reference"
    assert [v.reason for v in verdicts[1:]] == ["unchanged"] * (len(verdicts) - 1)


def test_slow_exposure_drift_is_no_change(clips):
    verdicts = screen(clips["drift"])  # the gain climbs ~17% over the clip
    assert all(v.skip for v in verdicts[1:])


def test_a_clock_overlay_is_masked_and_the_scene_still_skips(clips):
    verdicts = screen(clips["clock"])
    # its seconds digit changes every chunk: masked from the third change on; the tens digit
    # changes every fifth chunk and may cost a kept chunk until it is masked too
    assert all(v.masked_cells > 0 for v in verdicts[3:])
    assert sum(v.skip for v in verdicts[3:]) >= len(verdicts[3:]) - 1


@pytest.mark.parametrize("event_at", [EVENT_AT, 13.4])  # 13.4: in the chunk's last sampled frame only
def test_an_object_entering_is_never_skipped(clips, tmp_path, event_at):
    path = clips["enter"] if event_at == EVENT_AT else camera_clip(tmp_path, "enter", event_at)
    verdicts = screen(path)
    event = verdicts[EVENT_CHUNK]
    assert (event.action, event.reason) == ("keep", "local_change")
    assert 0 < event.changed_cells <= 6  # 2% of the frame: a few of the 144 cells
    # before it and once it was kept, the scene (with the object standing still) skips again
    assert all(v.skip for i, v in enumerate(verdicts[1:], 1) if i != EVENT_CHUNK)


def test_a_slow_pan_is_encoded_for_the_embedding_rule(clips):
    verdicts = screen(clips["pan"])
    assert [v.reason for v in verdicts[1:]] == ["global_change"] * (len(verdicts) - 1)


def test_an_ir_switch_keeps_its_chunk_then_the_grey_scene_skips(clips):
    verdicts = screen(clips["ir"])
    assert (verdicts[EVENT_CHUNK].action, verdicts[EVENT_CHUNK].reason) == ("keep", "colour_mode")
    assert all(v.skip for i, v in enumerate(verdicts[1:], 1) if i != EVENT_CHUNK)


def test_max_skip_run_forces_one_encode(clips):
    verdicts = screen(clips["static"], PrefilterSettings(max_skip_run=3))
    assert [v.action for v in verdicts] == ["encode", "skip", "skip", "skip"] * 3
    assert {v.reason for v in verdicts[4::4]} == {"max_skip_run"}


def test_reset_forgets_the_reference(clips):
    prefilter = Prefilter(PrefilterSettings())
    chunk = next(iter(iter_chunks(clips["static"], ChunkSettings())))
    prefilter.record(prefilter.screen(chunk.frames), chunk.index, video_kept=True)
    assert prefilter.reference_chunk == 0 and prefilter.screen(chunk.frames).skip
    prefilter.reset()
    assert prefilter.reference_chunk is None
    assert prefilter.screen(chunk.frames).reason == "no_reference"


def test_frames_smaller_than_the_thumbnail_are_screened_too():
    """A 32x32 WebRTC frame (smaller than the 64x36 thumbnail grid) is compared, not refused."""
    rng = np.random.default_rng(0)
    still = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)] * 4
    prefilter = Prefilter(PrefilterSettings())
    prefilter.record(prefilter.screen(still), 0, video_kept=True)
    assert prefilter.screen(still).skip
    changed = [frame.copy() for frame in still]
    changed[-1][:8, :8] = 255 - changed[-1][:8, :8]
    assert not prefilter.screen(changed).skip


def test_a_chunk_whose_frames_change_size_is_screened_not_refused(clips):
    """A camera renegotiating its resolution mid-chunk: the processor resizes the chunk to its
    first frame's size, and the pre-filter compares it (a new size is no skip) instead of failing."""
    frames = next(iter(iter_chunks(clips["static"], ChunkSettings()))).frames
    prefilter = Prefilter(PrefilterSettings())
    prefilter.record(prefilter.screen(frames), 0, video_kept=True)
    mixed = [*frames[:2], *(frame[::2, ::2] for frame in frames[2:])]
    verdict = prefilter.screen(mixed)
    assert verdict.signature.frame_shape == frames[0].shape[:2]
    assert verdict.skip  # the same picture at half size is still the same scene
    halved = prefilter.screen([frame[::2, ::2] for frame in frames])
    assert halved.reason == "frame_size"


@pytest.mark.parametrize("shift", [0, 10, 20, 30])  # where the object falls across the 40-px cells
def test_a_faint_object_is_never_skipped_wherever_it_falls_on_the_cells(shift):
    """The hardest 2% object: the background's own texture, only 20 levels brighter (a third of the
    enter clip's contrast), placed across cell boundaries, with fresh σ=3 noise in every frame."""
    frames = generate_frames(4, width=640, height=360, fps=2, noise=3.0)
    before, after = [next(frames) for _ in range(4)], [next(frames) for _ in range(4)]
    top, left, bottom, right = enter_box(640, 360)
    for frame in after[2:]:  # it enters in the chunk's third frame
        box = frame[top + shift : bottom + shift, left + shift : right + shift].astype(np.int16)
        frame[top + shift : bottom + shift, left + shift : right + shift] = np.clip(box + 20, 0, 255)
    prefilter = Prefilter(PrefilterSettings())
    prefilter.record(prefilter.screen(before), 0, video_kept=True)
    verdict = prefilter.screen(after)
    assert (verdict.action, verdict.reason) == ("keep", "local_change")
