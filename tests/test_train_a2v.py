"""`streamguard train-a2v` end to end on the tiny real model and generated videos: features cached
and reused, the loss falls, exact resume after an interruption, the predictor drives the pruner,
and every bad input gets its own clear error."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import streamguard.train.trainer as trainer_module
from streamguard.cli import main
from streamguard.config import load_settings
from streamguard.engine.pipeline import create_pipeline
from streamguard.ingest.files import iter_chunks
from streamguard.ingest.synthetic import write_clip
from streamguard.pruning.a2v import PredictorMismatchError, load_predictor
from streamguard.pruning.select import select_semantic, semantic_scores
from streamguard.train.features import (
    MANIFEST_FILE,
    FeatureCacheMismatchError,
    NoUsableVideosError,
    NoVideosError,
    VideoFeatures,
)
from streamguard.train.job import train_a2v
from streamguard.train.options import TrainOptions
from streamguard.train.retrieval import retrieval_metrics
from streamguard.train.trainer import STATE_FILE, TrainingStateError, train_predictor

# Four scenes, each with its own pair of tone pitches (a clip's pitches rotate by its seed, two
# seeds apart gives disjoint pairs), each shown still and with moving squares: 8 videos of 2 chunks.
SEEDS = (0, 2, 4, 6)
MOTIONS = ("static", "moving")
SMALL = TrainOptions(epochs=6, batch_size=6, lr=1e-3, val_fraction=0.25, num_queries=8, num_heads=4)
SMALL_FLAGS = [
    "--batch-size",
    "6",
    "--lr",
    "1e-3",
    "--val-fraction",
    "0.25",
    "--queries",
    "8",
    "--heads",
    "4",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def settings(checkpoint):
    return load_settings("tiny", model={"path": str(checkpoint)})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for seed in SEEDS:
        (folder / f"scene{seed}").mkdir()
        for motion in MOTIONS:
            write_clip(
                folder / f"scene{seed}" / f"{motion}.mp4", 4, width=112, height=84, motion=motion, seed=seed
            )
    return folder


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, videos, checkpoint):
    """One `streamguard train-a2v` run; its feature cache is shared by the other tests."""
    out = tmp_path_factory.mktemp("cli") / "a2v"
    assert cli(videos, checkpoint, out, "--epochs", "6", *SMALL_FLAGS) == 0
    return out


def train(videos, settings, backbone, out, options=SMALL, **kwargs):
    return train_a2v(videos, settings, out, options, backbone=backbone, **kwargs)


def test_the_cli_extracts_trains_and_reports(cli_run):
    report = json.loads((cli_run / "report.json").read_text())
    assert report["features"]["videos"] == 8 and report["features"]["chunks"] == 16
    assert len(report["features"]["extracted"]) == 8 and report["features"]["skipped"] == {}
    assert len(report["split"]["val"]) == 2 and report["split"]["train_chunks"] == 12
    losses = [epoch["train_loss"] for epoch in report["epochs"]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    for reference in ("predictor", "mean_audio"):
        metrics = report["retrieval"][reference]
        assert metrics["candidates"] == 2 and 0 <= metrics["r1"] <= metrics["r5"] <= 100
        assert 1 <= metrics["medr"] <= 2
    assert (cli_run / "model.safetensors").is_file() and (cli_run / "a2v_config.json").is_file()
    assert report["backbone"]["hidden_size"] == 64


def test_a_second_run_reuses_the_cached_features(cli_run, videos, checkpoint, tmp_path, capsys):
    cache = cli_run / "features"
    before = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    again = tmp_path / "again"
    assert cli(videos, checkpoint, again, "--cache", str(cache), "--epochs", "1", *SMALL_FLAGS) == 0
    printed = one_line(capsys.readouterr().out)
    assert "features: 0 video(s) extracted, 8 from the cache, 0 skipped" in printed
    assert "A2V training" in printed and "validation audio→video retrieval" in printed
    features = json.loads((again / "report.json").read_text())["features"]
    assert features["extracted"] == [] and features["chunks_extracted"] == 0 and len(features["reused"]) == 8
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == before
    assert not (again / "features").exists()


def test_the_trained_predictor_drives_the_pruner(cli_run, videos, checkpoint, backbone):
    settings = load_settings(
        "tiny", model={"path": str(checkpoint)}, pruning={"predictor_path": str(cli_run)}
    )
    pipeline = create_pipeline(backbone, settings)
    chunk = next(iter_chunks(videos / "scene2" / "moving.mp4", settings.chunk))
    report = pipeline.process(chunk)
    assert report.reference_mode == "a2v"
    predictor = load_predictor(cli_run, backbone.model_id, backbone.hidden_size)
    with torch.inference_mode():
        encoded = backbone.encode(backbone.preprocess(chunk.frames, chunk.audio))
        reference = predictor.predict(encoded.audio)
    expected = select_semantic(semantic_scores(encoded.video, reference), 0.5)
    assert report.semantic == expected.tolist()


def test_resume_continues_exactly_where_the_run_stopped(
    cli_run, videos, settings, backbone, tmp_path, monkeypatch
):
    cache = cli_run / "features"
    options = replace(SMALL, epochs=3, checkpoint_steps=1)
    straight = train(videos, settings, backbone, tmp_path / "straight", options, cache_dir=cache)

    # Interrupted in its 4th training step, the second batch of epoch 2 (the loss's 3rd call is
    # epoch 1's validation): the last checkpoint is the one after step 3.
    real_loss, calls = trainer_module.a2v_loss, []

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "a2v_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(videos, settings, backbone, tmp_path / "resumed", options, cache_dir=cache)
    monkeypatch.undo()
    resumed = train(videos, settings, backbone, tmp_path / "resumed", options, cache_dir=cache, resume=True)

    assert resumed.result.resumed_from == {"epoch": 1, "batch": 1}
    assert resumed.result.history == straight.result.history
    for name, tensor in load_file(tmp_path / "straight" / "model.safetensors").items():
        assert torch.equal(tensor, load_file(tmp_path / "resumed" / "model.safetensors")[name])

    # training longer from the finished run: the first three epochs are kept as they were
    longer = train(
        videos,
        settings,
        backbone,
        tmp_path / "resumed",
        replace(options, epochs=4),
        cache_dir=cache,
        resume=True,
    )
    assert longer.result.history[:3] == straight.result.history and len(longer.result.history) == 4


def test_the_predictor_beats_the_mean_audio_reference_when_audio_predicts_the_scene(tmp_path):
    """Hand-built features where a video's sound names its scene in a pattern unrelated to the
    picture: the mean audio cannot find the picture, the trained predictor can."""
    generator = torch.Generator().manual_seed(0)
    width, scenes = 16, 6
    sounds = torch.randn(scenes, 10, width, generator=generator)
    pictures = torch.randn(scenes, width, generator=generator)
    videos = [
        VideoFeatures(
            f"v{index:02d}",
            audio=sounds[index % scenes] + 0.1 * torch.randn(2, 10, width, generator=generator),
            video=pictures[index % scenes] + 0.1 * torch.randn(2, width, generator=generator),
        )
        for index in range(3 * scenes)
    ]
    options = TrainOptions(epochs=15, batch_size=12, lr=3e-3, val_fraction=0.25, num_queries=4, num_heads=4)
    result = train_predictor(videos, "synthetic", width, options, tmp_path)
    assert result.predictor.candidates == result.mean_audio.candidates == 4
    assert result.predictor.r1 > result.mean_audio.r1 and result.predictor.medr < result.mean_audio.medr
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_retrieval_ranks_count_ties_against_the_match():
    candidates = torch.eye(6)
    assert retrieval_metrics(candidates, candidates).as_dict() == {
        "r1": 100.0,
        "r5": 100.0,
        "medr": 1.0,
        "candidates": 6,
    }
    # every query is nearer the next candidate than its own: the match ranks 2nd
    shifted = retrieval_metrics(0.5 * candidates + candidates.roll(1, dims=1), candidates)
    assert (shifted.r1, shifted.r5, shifted.medr) == (0.0, 100.0, 2.0)
    # one vector for every query ties all candidates: the match ranks last
    constant = retrieval_metrics(torch.ones(6, 6), candidates)
    assert (constant.r1, constant.r5, constant.medr) == (0.0, 0.0, 6.0)


# -- bad input ---------------------------------------------------------------------------------


def cli(videos, checkpoint, out, *extra) -> int:
    return main(
        [
            "train-a2v",
            str(videos),
            "--config",
            "tiny",
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            *extra,
        ]
    )


def one_line(text: str) -> str:
    """Printed text with rich's line wrapping undone."""
    return " ".join(text.split())


def test_an_empty_folder_or_one_without_videos_is_refused(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(empty, checkpoint, tmp_path / "out") == 2
    assert f"no video files under {empty}" in one_line(capsys.readouterr().err)
    (empty / "notes.txt").write_text("not a video")
    with pytest.raises(NoVideosError, match="no video files under"):
        train(empty, load_settings("tiny", model={"path": str(checkpoint)}), None, tmp_path / "out")
    assert cli(tmp_path / "missing", checkpoint, tmp_path / "out") == 2
    assert f"video folder {tmp_path / 'missing'} does not exist" in one_line(capsys.readouterr().err)
    assert cli(empty / "notes.txt", checkpoint, tmp_path / "out") == 2
    assert "notes.txt is a file; train-a2v takes a folder of videos" in one_line(capsys.readouterr().err)


def test_files_without_audio_and_corrupt_files_are_skipped_by_name(
    cli_run, videos, settings, backbone, tmp_path, caplog
):
    folder = tmp_path / "mixed"
    for seed in (0, 2):
        (folder / f"scene{seed}").mkdir(parents=True)
        shutil.copy(videos / f"scene{seed}" / "static.mp4", folder / f"scene{seed}" / "static.mp4")
    write_clip(folder / "silent.mp4", 2, width=112, height=84, audio="none")
    (folder / "broken.mkv").write_bytes(b"\x00\x01not a video" * 500)
    shutil.copy(videos / "scene0" / "static.mp4", folder / "copy.mp4")
    with caplog.at_level("WARNING", logger="streamguard.train"):
        run = train(
            folder,
            settings,
            backbone,
            tmp_path / "out",
            replace(SMALL, epochs=1),
            cache_dir=cli_run / "features",
        )
    skipped = run.features.skipped
    assert set(skipped) == {"silent.mp4", "broken.mkv", "scene0/static.mp4"}
    assert "no audio track" in skipped["silent.mp4"]
    assert "cannot be opened" in skipped["broken.mkv"]
    assert "same content as copy.mp4" in skipped["scene0/static.mp4"]
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert all(f"skipping {name}" in warned for name in skipped)
    assert sorted(run.features.reused) == ["copy.mp4", "scene2/static.mp4"]


def test_only_files_without_audio_is_an_error_naming_them(settings, backbone, tmp_path):
    folder = tmp_path / "silent"
    folder.mkdir()
    write_clip(folder / "a.mp4", 2, width=112, height=84, audio="none")
    with pytest.raises(NoUsableVideosError, match=r"a\.mp4: no audio track"):
        train(folder, settings, backbone, tmp_path / "out")


def test_one_usable_video_is_too_few_to_hold_one_out(videos, settings, backbone, cli_run, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(videos / "scene4" / "moving.mp4", folder / "only.mp4")
    with pytest.raises(ValueError, match="at least 2 usable videos"):
        train(folder, settings, backbone, tmp_path / "out", cache_dir=cli_run / "features")


def test_a_feature_cache_of_another_backbone_is_refused(cli_run, videos, settings, backbone, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = json.loads((cli_run / "features" / MANIFEST_FILE).read_text())
    manifest.update(backbone_id="Qwen/Qwen2.5-Omni-7B", hidden_size=3584)
    (cache / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(
        FeatureCacheMismatchError, match=r"'Qwen/Qwen2.5-Omni-7B' \(hidden size 3584\).*hidden size 64"
    ):
        train(videos, settings, backbone, tmp_path / "out", cache_dir=cache)


def test_an_existing_run_is_neither_overwritten_nor_resumed_on_another_backbone_or_settings(
    cli_run, videos, checkpoint, settings, backbone, tmp_path, capsys
):
    assert cli(videos, checkpoint, cli_run, "--epochs", "6", *SMALL_FLAGS) == 2
    assert f"{cli_run} already holds a training run" in one_line(capsys.readouterr().err)
    with pytest.raises(TrainingStateError, match="nothing to resume"):
        train(videos, settings, backbone, tmp_path / "fresh", resume=True)
    with pytest.raises(TrainingStateError, match=r"batch_size 6 \(checkpoint\) vs 4"):
        train(videos, settings, backbone, cli_run, replace(SMALL, batch_size=4), resume=True)

    other = tmp_path / "other"
    shutil.copytree(cli_run, other, ignore=shutil.ignore_patterns("features"))
    state = torch.load(other / STATE_FILE, weights_only=True)
    state.update(backbone_id="Qwen/Qwen2.5-Omni-7B", hidden_size=3584)
    torch.save(state, other / STATE_FILE)
    with pytest.raises(PredictorMismatchError, match=r"'Qwen/Qwen2.5-Omni-7B' \(hidden size 3584\)"):
        train(videos, settings, backbone, other, resume=True)
