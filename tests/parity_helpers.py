"""The offline-forward parity oracle shared by the session tests (Qwen2.5-Omni and Qwen3-Omni):
transformers' own processor and `get_rope_index(use_audio_in_video=True)` lay out a whole clip,
the pruned tokens are dropped from that sequence, and one forward of the thinker gives the logits
a streamed session must match.
"""

from __future__ import annotations

import numpy as np
import torch

from streamguard.backbones.base import EncodedChunk

SYSTEM = "You are a helpful assistant."
QUESTION = "What happens in the clip?"


def official_inputs(backbone, frames, audio):
    """The official processor's prompt for the whole clip, video with its audio."""
    processor = backbone.processor
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    video = np.stack([f for chunk in frames for f in chunk])
    return processor(
        text=text,
        videos=[video],
        audio=[np.concatenate(audio)],
        audio_from_video_indices=[0],
        load_audio_from_video=True,
        return_tensors="pt",
        videos_kwargs={"fps": 2.0, **backbone._video_kwargs},
    )


def official_positions(backbone, inputs) -> torch.Tensor:
    """(3, 1, N) positions of the official prompt by the thinker's own get_rope_index."""
    positions, _ = backbone.model.model.get_rope_index(
        inputs["input_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
        use_audio_in_video=True,
        audio_seqlens=inputs["feature_attention_mask"].sum(-1),
        second_per_grids=inputs["video_second_per_grid"],
    )
    return positions


def offline_sequence(backbone, inputs, encoded: list[EncodedChunk], keeps, drops):
    """The official sequence restricted to the kept tokens: (embeds (N, d), positions (3, 1, N),
    segments (N,), deepstack), a token's segment being -1 before the stream, its chunk's number, or
    len(encoded) after the stream (the question); `deepstack` the language model's arguments for
    the kept video tokens' deepstack features (Qwen3-Omni; empty for a model without)."""
    thinker = backbone.model
    config = thinker.config
    ids = inputs["input_ids"]
    positions = official_positions(backbone, inputs)
    embeds = thinker.get_input_embeddings()(ids)[0].clone()
    keep_mask = torch.ones(ids.shape[1], dtype=torch.bool)
    segments = torch.full((ids.shape[1],), -1, dtype=torch.long)
    video_mask = ids[0] == config.video_token_id
    video_slots = video_mask.nonzero().flatten()
    audio_slots = (ids[0] == config.audio_token_id).nonzero().flatten()
    features = []
    v = a = 0
    for index, (chunk, keep, drop) in enumerate(zip(encoded, keeps, drops, strict=True)):
        flat = chunk.video_flat
        slots = video_slots[v : v + flat.shape[0]]
        embeds[slots] = flat
        segments[slots] = index
        kept = torch.zeros(flat.shape[0], dtype=torch.bool)
        if not drop:
            kept[keep if keep is not None else slice(None)] = True
        keep_mask[slots] = kept
        if chunk.deepstack is not None:
            features.append(chunk.deepstack_flat[:, kept])
        v += flat.shape[0]
        n_audio = chunk.audio.shape[0]
        embeds[audio_slots[a : a + n_audio]] = chunk.audio
        segments[audio_slots[a : a + n_audio]] = index
        a += n_audio
    assert v == video_slots.numel() and a == audio_slots.numel()
    segments[int(audio_slots[-1]) + 1 :] = len(encoded)
    deepstack = {}
    if features:
        deepstack = {
            "visual_pos_masks": video_mask[keep_mask][None],
            "deepstack_visual_embeds": list(torch.cat(features, dim=1)),
        }
    return embeds[keep_mask], positions[:, :, keep_mask], segments[keep_mask], deepstack


def offline_logits(backbone, inputs, encoded: list[EncodedChunk], keeps, drops, attention_mask=None):
    """One forward of the thinker over the official sequence restricted to the kept tokens, the
    kept video tokens' deepstack features (Qwen3-Omni) added as the thinker's forward adds them;
    `attention_mask` (1, 1, N, N) bool, True where a token may attend, replaces the causal mask."""
    thinker = backbone.model
    embeds, positions, _, deepstack = offline_sequence(backbone, inputs, encoded, keeps, drops)
    with torch.inference_mode():
        out = thinker.model.language_model(
            inputs_embeds=embeds[None], position_ids=positions, attention_mask=attention_mask, **deepstack
        )
        return thinker.lm_head(out.last_hidden_state[0])


def put_one_video_token_off(monkeypatch, backbone, axis: int) -> None:
    """A deliberate break: the 6th video token of the stream's second chunk one step off on `axis`."""
    original = backbone.chunk_positions

    def off_by_one(chunk, slot, base):
        video, audio = original(chunk, slot, base)
        if slot == 1:
            video = video.clone()
            video[axis, 5] += 1
        return video, audio

    monkeypatch.setattr(backbone, "chunk_positions", off_by_one)


def load_tiny_backbone(folder, config: str = "tiny"):
    """The tiny checkpoint in `folder` through the same loading path a real checkpoint takes, as
    the tiny `config` (configs/tiny.yaml: Qwen2.5-Omni) sets it up."""
    from streamguard.backbones import load_backbone
    from streamguard.config import load_settings

    settings = load_settings(config, model={"path": str(folder)})
    return load_backbone(settings.model, settings.chunk)


def stream_layout(backbone, encoded: list[EncodedChunk]) -> tuple[list[int], torch.Tensor]:
    """The token ids and positions a session lays for unpruned chunks and the question: built from
    the backbone's own layout calls, for comparison with the official processor's."""
    config = backbone.model.config
    layout = backbone.prompt_layout(SYSTEM)
    prefix_positions, base = backbone.prefix_positions(len(layout.prefix))
    ids, positions = list(layout.prefix), [prefix_positions]
    for slot, chunk in enumerate(encoded):
        video_pos, audio_pos = backbone.chunk_positions(chunk, slot, base)
        video_rank, audio_rank = backbone.chunk_order(chunk)
        order = torch.argsort(torch.cat([video_rank, audio_rank]))
        kinds = torch.tensor(
            [config.video_token_id] * chunk.num_video_tokens + [config.audio_token_id] * chunk.audio.shape[0]
        )
        ids += kinds[order].tolist()
        positions.append(torch.cat([video_pos, audio_pos], dim=1)[:, order])
    question = layout.close + backbone.tokenize(QUESTION) + layout.suffix
    ids += question
    positions.append(
        backbone.question_positions(base + backbone.chunk_period() * len(encoded), len(question))
    )
    return ids, torch.cat(positions, dim=1)
