"""One chunk's preprocessing against the official `Qwen2_5OmniProcessor`, element for element."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.audio_utils import load_audio

from streamguard.backbones.qwen_omni import QwenOmniBackbone
from streamguard.config import ChunkSettings, load_settings
from streamguard.ingest.chunker import Chunker


@pytest.fixture(scope="module")
def backbone(checkpoint):
    settings = load_settings("tiny")
    return QwenOmniBackbone.from_settings(
        settings.model.model_copy(update={"path": str(checkpoint)}), settings.chunk
    )


def official(backbone, frames, audio):
    processor = backbone.processor
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = processor(
        text=text,
        videos=[np.stack(frames)],
        audio=[audio],
        audio_from_video_indices=[0],
        load_audio_from_video=True,
        return_tensors="pt",
        videos_kwargs={"fps": 2.0, **backbone._video_kwargs},
    )
    valid = int(out["feature_attention_mask"][0].sum())
    return out["pixel_values_videos"], out["video_grid_thw"], out["input_features"][0, :, :valid]


def frames_of(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(4)]


def tone(samples=32000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(samples)).astype(np.float32)


@pytest.mark.parametrize(
    ("height", "width"),
    [(84, 112), (97, 131), (480, 640), (20, 30), (56, 1000)],
    ids=["multiple-of-28", "odd", "above-max-pixels", "below-min-pixels", "wide"],
)
def test_chunk_equals_the_official_processor(backbone, height, width):
    frames, audio = frames_of((height, width, 3)), tone()
    ours = backbone.preprocess(frames, audio)
    pixels, grid, features = official(backbone, frames, audio)
    assert torch.equal(ours.video_grid_thw, grid)
    assert torch.equal(ours.pixel_values_videos, pixels)
    assert ours.input_features.shape == (128, 200)
    assert torch.equal(ours.input_features, features)
    patch = backbone.processor.video_processor.patch_size
    assert ours.resized_hw == (int(grid[0, 1]) * patch, int(grid[0, 2]) * patch)
    pixels_per_frame = ours.resized_hw[0] * ours.resized_hw[1]
    settings = backbone.settings
    assert ours.resized_hw[0] % 28 == 0 and ours.resized_hw[1] % 28 == 0
    assert settings.min_pixels <= pixels_per_frame <= settings.max_pixels


def test_the_encoders_give_2x_grid_video_and_50_audio_tokens(backbone):
    encoded = backbone.encode(backbone.preprocess(frames_of((84, 112, 3)), tone()))
    assert encoded.video.shape == (2, 3, 4, backbone.hidden_size)
    assert encoded.audio.shape == (50, backbone.hidden_size)


def test_short_audio_is_padded_with_silence(backbone):
    short = tone(10000)
    padded = np.concatenate([short, np.zeros(22000, dtype=np.float32)])
    assert torch.equal(
        backbone.preprocess(frames_of((84, 112, 3)), short).input_features,
        official(backbone, frames_of((84, 112, 3)), padded)[2],
    )


def test_missing_audio_is_silence_and_long_audio_is_cut(backbone):
    frames = frames_of((84, 112, 3))
    silent = official(backbone, frames, np.zeros(32000, dtype=np.float32))[2]
    assert torch.equal(backbone.preprocess(frames, None).input_features, silent)
    long = tone(40000)
    assert torch.equal(
        backbone.preprocess(frames, long).input_features, official(backbone, frames, long[:32000])[2]
    )


def test_int16_and_stereo_audio_become_float_mono(backbone):
    frames = frames_of((84, 112, 3))
    mono = tone()
    as_int16 = np.round(mono * 32767).astype(np.int16)
    stereo = np.stack([as_int16, as_int16])
    expected = official(backbone, frames, as_int16.astype(np.float32) / 32768)[2]
    assert torch.equal(backbone.preprocess(frames, as_int16).input_features, expected)
    assert torch.equal(backbone.preprocess(frames, stereo).input_features, expected)
    assert torch.equal(backbone.preprocess(frames, stereo.T.copy()).input_features, expected)


def test_stereo_is_downmixed_as_the_official_audio_loading_does(backbone, tmp_path):
    # transformers' load_audio averages a file's channels before the processor sees them; a
    # stereo chunk, given as is or cut by the chunker, must give the same features.
    soundfile = pytest.importorskip("soundfile")
    frames = frames_of((84, 112, 3))
    stereo = np.stack([tone(seed=1), 0.5 * tone(seed=2)])
    soundfile.write(tmp_path / "stereo.wav", stereo.T, 16000, subtype="FLOAT")
    loaded = load_audio(str(tmp_path / "stereo.wav"), sampling_rate=16000, backend="soundfile")
    expected = official(backbone, frames, loaded)[2]
    assert torch.equal(backbone.preprocess(frames, stereo).input_features, expected)
    chunker = Chunker(ChunkSettings())
    chunker.push_audio(stereo, 0.0, sample_rate=16000)
    (chunk,) = chunker.flush()
    assert torch.equal(backbone.preprocess(frames, chunk.audio).input_features, expected)


def test_grey_and_rgba_frames_are_converted_to_rgb(backbone):
    grey = [f[..., 0] for f in frames_of((84, 112, 3))]
    as_rgb = [np.repeat(f[..., None], 3, axis=-1) for f in grey]
    assert torch.equal(
        backbone.preprocess(grey, tone()).pixel_values_videos, official(backbone, as_rgb, tone())[0]
    )
    rgb = frames_of((84, 112, 3), seed=3)
    rgba = [np.concatenate([f, np.full((84, 112, 1), 7, np.uint8)], axis=-1) for f in rgb]
    assert torch.equal(
        backbone.preprocess(rgba, tone()).pixel_values_videos, official(backbone, rgb, tone())[0]
    )


def test_fewer_frames_repeat_the_last_and_no_frames_mean_no_video(backbone):
    frames = frames_of((84, 112, 3))
    three = backbone.preprocess(frames[:3], tone())
    assert torch.equal(three.pixel_values_videos, official(backbone, [*frames[:3], frames[2]], tone())[0])
    audio_only = backbone.preprocess([], tone())
    assert audio_only.pixel_values_videos is None and audio_only.video_grid_thw is None
    assert backbone.encode(audio_only).video is None


def test_a_frame_of_the_wrong_shape_is_a_clear_error(backbone):
    with pytest.raises(ValueError, match="video frame must be"):
        backbone.preprocess([np.zeros((8, 8, 2), np.uint8)] * 4, tone())
