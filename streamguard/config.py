"""Settings: one typed tree, loaded from a YAML file under `configs/` and overridden by env vars.

Environment variables use the prefix ``STREAMGUARD_`` and ``__`` between levels, e.g.
``STREAMGUARD_MODEL__DEVICE=cuda`` or ``STREAMGUARD_SERVICE__TOKENS='["secret"]'``.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# configs/ ships inside the package (streamguard/configs links to it), so `--config NAME` works
# from an installed wheel as from a checkout.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ModelSettings(BaseModel):
    backbone: Literal["qwen2.5-omni", "qwen3-omni", "video-salmonn2+"] = "qwen2.5-omni"
    # A hub id, a local checkpoint folder, `tiny:<backbone>` for the tiny random test model, or
    # `random:<model>[?layers=T,V,A]` for a released architecture with random weights (cost
    # measurement without weights: streamguard.backbones.random_build).
    path: str = "Qwen/Qwen2.5-Omni-7B"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # The encoder towers' windowed attention. "auto": flash-attn's varlen kernel (one call a layer
    # over all windows) on CUDA in fp16/bf16 with the flash-attn package installed, else
    # "packed_sdpa": the windows gathered into one torch SDPA call a layer, also for the Qwen-Omni
    # audio tower's chunks when attn_implementation is sdpa (streamguard.backbones.packed_attention).
    # "sdpa": transformers' loop of one call per window. "flash_attention_2" where it cannot run
    # falls back to packed_sdpa and says so in the log.
    vision_attn_implementation: Literal["auto", "packed_sdpa", "sdpa", "flash_attention_2"] = "auto"
    # The processor's per-frame pixel bounds (smart_resize); None keeps the checkpoint's own.
    min_pixels: int | None = 128 * 28 * 28
    max_pixels: int | None = 768 * 28 * 28
    system_prompt: str = (
        "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
        "perceiving auditory and visual inputs, as well as generating text and speech."
    )

    @model_validator(mode="after")
    def _random_build_fits_the_backbone(self) -> ModelSettings:
        if self.path.startswith("random:"):
            from streamguard.backbones.random_build import random_backbone  # torch: only when asked

            family = random_backbone(self.path)  # an unknown build or option is refused here
            if family != self.backbone:
                raise ValueError(
                    f"{self.path} loads as model.backbone {family}; this config sets {self.backbone}"
                )
        return self


class ChunkSettings(BaseModel):
    seconds: float = 2.0
    fps: float = 2.0
    sample_rate: int = 16000

    @property
    def frames_per_chunk(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def samples_per_chunk(self) -> int:
        return round(self.seconds * self.sample_rate)


# What a chunk's semantic scores are measured against: the A2V predictor's ĥ_t, the mean audio
# embedding (no predictor configured, or the "mean_audio" baseline), or nothing (method "none").
ReferenceMode = Literal["a2v", "mean_audio", "none"]
PruningMethod = Literal["none", "contextguard", "random", "high", "mean_audio"]
DropPolicy = Literal["current", "previous", "off"]


class PrefilterSettings(BaseModel):
    """The pixel pre-filter (pruning/prefilter.py) that skips the vision encoder on a chunk that
    repeats the kept scene. The defaults were calibrated by `streamguard bench` (section
    `prefilter`) on 640x360 H.264 clips with σ=3 sensor noise; levels are of 0..255."""

    # Off, or with the drop rule off (`drop_policy: off`, method `none`), every chunk is encoded.
    enabled: bool = True
    # Cells per frame: 16x9, one cell 40x40 px at 640x360, so a 2% object fills most of one.
    rows: int = Field(9, gt=0)
    cols: int = Field(16, gt=0)
    # Thumbnail pixels per cell side: 4 gives a 64x36 thumbnail, each pixel the mean of 100
    # sensor pixels at 640x360 (σ=3 noise becomes 0.3 levels).
    cell_pixels: int = Field(4, gt=0)
    # A cell changed: its mean |difference| over its thumbnail values (after the exposure fit)
    # is over this. Noise and H.264 keyframes stay under ~2 levels; an object of 2% of the frame
    # moves its cells by about its contrast with the background (tens of levels).
    change_threshold: float = Field(6.0, gt=0)
    # A cell that changed against the previous chunk in `mask_after` of the last `mask_window`
    # chunks always changes (a clock overlay) and is ignored, while at most
    # `max_masked_fraction` of the cells are so (a 20%x5% clock spans up to 8 cells of 144).
    mask_after: int = Field(3, gt=0)
    mask_window: int = Field(15, gt=0)
    max_masked_fraction: float = Field(0.08, ge=0.0, le=1.0)
    # Up to this share of cells changed is something entering (the video is kept whatever the
    # embedding rule says); more is a global change (a pan, lights), for the embedding rule.
    max_local_fraction: float = Field(0.15, ge=0.0, le=1.0)
    # Global gain moved more than this since the previous chunk: encode. Auto-exposure drifts
    # ~1-3% per chunk; an IR switch or a light jumps by tens of percent.
    max_exposure_step: float = Field(0.1, gt=0)
    # Channels differing by under this on average: a grey (IR) picture; colour <-> grey keeps
    # the video. A colour scene differs by tens of levels, a grey one by H.264's rounding.
    grey_below: float = Field(2.0, ge=0)
    # After this many chunks skipped in a row one is encoded (the embedding rule checks the
    # scene): 30 chunks of 2 s keep the pixel test's blind spots under a minute, for <4% of
    # the encoder time of a static camera.
    max_skip_run: int = Field(30, gt=0)


class PruningSettings(BaseModel):
    method: PruningMethod = "contextguard"
    rho_sem: float = Field(0.5, ge=0.0, le=1.0)
    rho_spa: float = Field(0.1, ge=0.0, le=1.0)
    tau_drop: float = 0.99
    drop_policy: DropPolicy = "current"
    tau_merge: float = 0.98
    depth_threshold: float = 0.5
    predictor_path: str | None = None
    seed: int = 0
    prefilter: PrefilterSettings = Field(default_factory=PrefilterSettings)


class SessionSettings(BaseModel):
    # Tokens of chunk context held per stream (the prefix is not counted); the oldest whole
    # chunks are evicted beyond it.
    token_budget: int = Field(16384, gt=0)
    max_question_chars: int = Field(2000, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # Positions kept free at the top of the model's range for a question and its answer;
    # chunk positions are re-based before they would eat into it.
    position_headroom: int = Field(4096, gt=0)
    # The highest position a chunk may reach; None takes the model's max_position_embeddings.
    position_limit: int | None = Field(None, gt=0)


class MemorySettings(BaseModel):
    """Long memory: chunks the token budget evicts keep their KV in host memory, then on disk,
    and a question can recall them (`streamguard/memory/`)."""

    enabled: bool = False
    # Per stream: chunks older than this (stream seconds behind the newest) are forgotten.
    retention_s: float = Field(3600.0, gt=0)
    host_bytes: int = Field(4 * 2**30, ge=0)  # evicted KV kept in RAM; older chunks go to disk
    disk_bytes: int = Field(64 * 2**30, ge=0)  # past it the oldest files are deleted
    # Every stream of this worker together; past it the oldest file of any stream goes.
    service_disk_bytes: int = Field(256 * 2**30, ge=0)
    # Where chunk files go, one folder per stream; None: <STREAMGUARD_CACHE>/memory.
    root: str | None = None
    # Tokens an "auto" recall loads back beside the window (the best-matching chunks).
    recall_tokens: int = Field(8192, gt=0)
    # The most a span recall may load; a longer span is refused (recall_too_large).
    span_tokens: int = Field(32768, gt=0)
    # Decoder layers whose queries score chunks ("auto"); None: three spread over the depth.
    score_layers: list[int] | None = None


class Role(StrEnum):
    """What a token may see: a user only the streams it opened, an admin every stream."""

    USER = "user"
    ADMIN = "admin"


class TokenEntry(BaseModel):
    """A token with its holder's name and role; a plain string in `service.tokens` is a user
    token named after the start of its digest."""

    token: str = Field(min_length=1)
    name: str | None = None
    role: Role = Role.USER


class ServiceSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    tokens: list[str | TokenEntry] = Field(default_factory=lambda: ["streamguard-dev-token"])
    max_streams_per_token: int = 8
    # Streams this worker holds, all tokens together: each one holds a KV cache on the GPU.
    max_streams: int = Field(16, gt=0)
    max_message_bytes: int = 64 * 1024
    max_pending_chunks: int = 4
    # Questions waiting or answering on one stream, all its websocket clients together.
    max_questions_per_stream: int = Field(16, gt=0)
    # An ended stream (its source stopped or failed) still answers questions; once no websocket
    # client has been on it for this long it is deleted (its answer log stays in the store).
    # None keeps ended streams until they are DELETEd.
    ended_stream_ttl_s: float | None = Field(600.0, gt=0)
    allow_file_sources: bool = False
    # File sources: only regular files inside this folder (None: the working directory).
    file_root: str | None = None
    file_probe_timeout_s: float = Field(10.0, gt=0)
    # A stream whose source has delivered no chunk this long after it opened ends in `error`
    # (a WebRTC peer that never sends media stops holding its token's quota).
    first_media_timeout_s: float = Field(20.0, gt=0)
    # A WebRTC stream whose peer has sent no media this long since its last chunk ends (reason
    # `media_timeout`): a browser that vanished without a BYE (crashed tab, lost network) is
    # otherwise only noticed by ICE consent freshness some 30 s later, holding its token's quota
    # meanwhile. A live browser never goes this quiet: Chrome sends camera frames continuously
    # for a static picture, black frames for a disabled track, and silence packets for a muted
    # microphone; Chromium's fake camera moves at 30 fps. Measured per chunk (every
    # `chunk.seconds`, 2 s), so it must exceed that; 10 s also rides out a short network stall.
    webrtc_media_timeout_s: float = Field(10.0, gt=0)
    # The largest REST request body (413 `request_too_large`).
    max_body_bytes: int = Field(2**20, gt=0)
    # Where RTSP streams may connect: host names, addresses and CIDRs ("10.0.0.0/8"); a name
    # not listed must resolve only to listed addresses. None: anywhere (see README, Security).
    rtsp_allow: list[str] | None = None
    # Websocket Origins allowed ("https://ops.example.com"); None: any. Clients that send no
    # Origin (not browsers) are not affected.
    ws_origins: list[str] | None = None
    # Origins of pages allowed to call the API from another origin (CORS: a page served by one
    # worker, or the load balancer, sends an offer to the worker placement chose). Credentials
    # travel as the bearer header, never cookies. None: the origins the cluster's workers
    # advertise (cluster.public_url); add the load balancer's origin when pages load through one.
    cors_origins: list[str] | None = None
    stats_interval_s: float = 1.0

    @field_validator("rtsp_allow")
    @classmethod
    def _hosts_and_networks(cls, allow: list[str] | None) -> list[str] | None:
        for entry in allow or ():
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", entry):
                    raise ValueError(
                        f"rtsp_allow: {entry!r} is neither a host name nor an address or CIDR"
                    ) from None
        return allow


class EngineSettings(BaseModel):
    """How the one worker runs the model (`engine/scheduler.py` says the whole policy)."""

    # True: chunks preprocessed off the worker, encoded several streams per tower call, answers
    # decoded across streams in one forward. False: the serial engine (one item per model call).
    batching: bool = True
    # Threads preprocessing chunks (video processor, log-mel); None: the CPU count less one, 1..4.
    preprocess_workers: int | None = Field(None, gt=0)
    # Chunks (one per stream) encoded together in one round.
    max_chunks_per_round: int = Field(16, gt=0)
    # Tokens each open answer decodes in one round before the round's chunks run.
    decode_steps_per_round: int = Field(8, gt=0)
    # Chunks a stream may hold beyond service.max_pending_chunks while it answers (and until it
    # has caught up again): they are buffered, not shed.
    answer_buffer_chunks: int = Field(8, ge=0)
    # Per-stage chunk timings (ChunkReport.timings_ms), synchronising the device after each stage.
    profile_stages: bool = False


class ClusterSettings(BaseModel):
    # Unset: one worker, state in memory. Set (redis://[:password@]host:port/db): shared state.
    redis_url: str | None = None
    key_prefix: str = "streamguard:"
    # A worker heartbeats its leases every third of this; a stream whose lease lapses may be claimed.
    lease_ttl_s: float = Field(10.0, gt=0)
    # The limit on every Redis call; past it the service runs from memory until Redis answers again.
    timeout_s: float = Field(1.0, gt=0)
    retry_interval_s: float = Field(1.0, gt=0)  # how often an outage is probed
    answer_log_max: int = Field(1000, gt=0)  # answers kept per stream
    outage_buffer_max: int = Field(10000, gt=0)  # answers held for Redis while it is down
    finished_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)  # an ended stream's keys then expire
    # SIGTERM or POST /v1/admin/drain: cameras handed over, clients told, then exit; at most this long.
    drain_timeout_s: float = Field(10.0, gt=0)
    # This worker's URL as clients reach it, advertised in Redis so a full worker can redirect
    # new streams here (307). Unset: `streamguard serve` uses http://HOST:PORT unless HOST is a
    # wildcard (0.0.0.0, ::), and then nothing is redirected to this worker.
    public_url: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMGUARD_", env_nested_delimiter="__", extra="forbid")

    model: ModelSettings = Field(default_factory=ModelSettings)
    chunk: ChunkSettings = Field(default_factory=ChunkSettings)
    pruning: PruningSettings = Field(default_factory=PruningSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @field_validator("chunk")
    @classmethod
    def _chunk_is_whole(cls, chunk: ChunkSettings) -> ChunkSettings:
        if abs(chunk.seconds * chunk.fps - chunk.frames_per_chunk) > 1e-9:
            raise ValueError("chunk.seconds * chunk.fps must be a whole number of frames")
        return chunk

    @model_validator(mode="after")
    def _media_timeout_spans_chunks(self) -> Settings:
        # the timeout is measured between chunks: one no longer than a chunk ends live peers
        if self.service.webrtc_media_timeout_s <= self.chunk.seconds:
            raise ValueError(
                f"service.webrtc_media_timeout_s ({self.service.webrtc_media_timeout_s:g} s) must exceed "
                f"chunk.seconds ({self.chunk.seconds:g} s): a sending peer's chunks come that far apart"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the YAML file, which arrives as init kwargs.
        return env_settings, init_settings


def resolve_config_path(name_or_path: str | Path) -> Path:
    """`configs/tiny.yaml`, a bare name such as `tiny`, or any path to a YAML file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    # a bare name keeps its dots (`qwen2.5-omni-3b`); `configs/tiny.yaml` is found by its file name
    name = path.name.removesuffix(".yaml")
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"config not found: {name_or_path} (looked in the working directory and {CONFIG_DIR})"
    )


def load_settings(name_or_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load a YAML config (default: `configs/default.yaml`), then env vars, then `overrides`."""
    data: dict[str, Any] = {}
    path = resolve_config_path(name_or_path or "default")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a config file must hold a mapping at the top level")
    data.update(loaded)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return Settings(**data)
