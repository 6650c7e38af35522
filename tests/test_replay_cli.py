"""`streamguard replay` end to end on the tiny config and generated clips."""

from __future__ import annotations

import json

import pytest

from streamguard.cli import main
from streamguard.ingest.synthetic import write_clip


@pytest.fixture(scope="module")
def tiny_model(checkpoint):
    return str(checkpoint)


def replay(tiny_model, *args):
    return main(["replay", *args, "--config", "tiny", "--model", tiny_model])


def test_replay_prints_chunks_compression_and_an_answer(tiny_model, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", 6, motion="moving")
    report = tmp_path / "report.json"
    assert replay(tiny_model, str(clip), "-q", "What is happening?", "--at", "4", "--json", str(report)) == 0
    printed = capsys.readouterr().out
    assert "compression:" in printed and "Q (at 4 s): What is happening?" in printed and "A: " in printed
    assert "semantic reference: the mean audio embedding" in printed  # no predictor configured
    data = json.loads(report.read_text())
    assert [c["index"] for c in data["chunks"]] == [0, 1, 2]
    assert all(c["audio_tokens"] == 50 and c["video_tokens_in"] > 0 for c in data["chunks"])
    assert set(data["chunks"][0]["timings_ms"]) == {
        "prefilter",
        "preprocess",
        "vision_encode",
        "audio_encode",
        "select",
        "prefill",
    }


def test_contextguard_prunes_over_55_percent_of_a_static_clip(tiny_model, tmp_path, monkeypatch):
    # Qwen2.5-Omni's own per-frame pixel bounds, so video outweighs audio as it does in real use.
    monkeypatch.setenv("STREAMGUARD_MODEL__MIN_PIXELS", str(128 * 28 * 28))
    monkeypatch.setenv("STREAMGUARD_MODEL__MAX_PIXELS", str(768 * 28 * 28))
    clip = write_clip(tmp_path / "static.mp4", 10, width=320, height=240, motion="static")
    report = tmp_path / "static.json"
    assert replay(tiny_model, str(clip), "--pruning", "contextguard", "--json", str(report)) == 0
    summary = json.loads(report.read_text())["summary"]
    assert summary["input_tokens_pruned_pct"] >= 55.0
    full = tmp_path / "full.json"
    assert replay(tiny_model, str(clip), "--pruning", "none", "--json", str(full)) == 0
    assert json.loads(full.read_text())["summary"]["input_tokens_pruned_pct"] == 0.0


def test_bad_inputs_are_one_clear_line(tiny_model, tmp_path, capsys):
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 500)
    assert replay(tiny_model, str(garbage)) == 2
    assert "broken.mp4" in capsys.readouterr().err
    clip = write_clip(tmp_path / "clip.mp4", 2)
    assert replay(tiny_model, str(clip), "-q", "x" * 3000) == 2
    assert "limit is 2000" in capsys.readouterr().err
    assert replay(tiny_model, str(tmp_path / "missing.mp4")) == 2


def test_a_truncated_file_prints_what_was_streamed_then_fails(tiny_model, tmp_path, capsys):
    whole = write_clip(tmp_path / "whole.mp4", 7, motion="moving")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: round(whole.stat().st_size * 0.6)])
    report = tmp_path / "cut.json"
    assert replay(tiny_model, str(cut), "--json", str(report)) == 2
    captured = capsys.readouterr()
    assert "compression:" in captured.out
    assert "cut.mp4" in captured.err and "stopped after" in captured.err
    data = json.loads(report.read_text())
    assert data["chunks"] and "cut.mp4" in data["error"]


def test_a_static_camera_skips_the_vision_encoder_and_an_object_entering_keeps_its_video(
    tiny_model, tmp_path, monkeypatch
):
    """The issue's bar, per chunk in `replay --json`: on a static 640x360 noisy H.264 camera at
    Qwen2.5-Omni's real pixel bounds at least 90% of the chunks after the first skip the vision
    encoder; where an object of 2% of the frame appears (and stays) the chunk keeps its video."""
    monkeypatch.setenv("STREAMGUARD_MODEL__MIN_PIXELS", str(128 * 28 * 28))
    monkeypatch.setenv("STREAMGUARD_MODEL__MAX_PIXELS", str(768 * 28 * 28))
    camera = {"width": 640, "height": 360, "fps": 8, "noise": 3.0, "keyframe_s": 2.0}
    static = write_clip(tmp_path / "static.mp4", 20, motion="static", **camera)
    assert replay(tiny_model, str(static), "--json", str(tmp_path / "static.json")) == 0
    chunks = json.loads((tmp_path / "static.json").read_text())["chunks"]
    assert not chunks[0]["encoder_skipped"] and chunks[0]["video_tokens_kept"] > 0
    skipped = [c for c in chunks[1:] if c["encoder_skipped"]]
    assert len(skipped) >= 0.9 * len(chunks[1:])
    assert all(c["video_dropped"] and c["video_tokens_kept"] == 0 for c in skipped)
    assert all("vision_encode" not in c["timings_ms"] and c["audio_tokens"] == 50 for c in skipped)
    assert all(c["video_tokens_in"] == chunks[0]["video_tokens_in"] for c in chunks)

    enter = write_clip(tmp_path / "enter.mp4", 20, motion="enter", event_at=9.0, **camera)
    assert replay(tiny_model, str(enter), "--json", str(tmp_path / "enter.json")) == 0
    chunks = json.loads((tmp_path / "enter.json").read_text())["chunks"]
    event = chunks[4]  # 8-10 s
    assert (event["encoder_skipped"], event["video_dropped"], event["prefilter"]) == (
        False,
        False,
        "local_change",
    )
    assert event["video_tokens_kept"] > 0
    assert all(c["encoder_skipped"] for c in chunks[1:4] + chunks[5:])
