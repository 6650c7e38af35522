"""Every message the service speaks: REST bodies, websocket events both ways, error codes.

The websocket protocol is versioned (`PROTOCOL_VERSION`) and served as JSON Schema at
`/v1/protocol.json`, generated from these models (`protocol_schema`), so the two cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from streamguard.cluster.store import AnswerRecord
from streamguard.config import DropPolicy, PruningMethod, ReferenceMode, Role
from streamguard.ingest.urls import InvalidCameraUrl, UnsupportedScheme, parse_camera_url
from streamguard.memory.spec import InvalidRecallError, RecalledSpan, RecallSpec, parse_recall
from streamguard.vocabulary import StreamKind, StreamState, StreamSummary

# Additions (a new event, a new optional field) raise the minor version; anything a client
# written for an older one would trip on raises the major one.
PROTOCOL_VERSION = "1.3"

ErrorCode = Literal[
    # websocket messages
    "bad_json",
    "unknown_type",
    "invalid_message",
    "message_too_large",
    "question_too_long",
    "empty_question",
    "unknown_question",
    "duplicate_question",
    "too_many_questions",
    "invalid_recall",
    "memory_disabled",
    "recall_too_large",
    "stream_ended",
    "stream_lost",  # the worker holding the stream (another than the socket's) went away
    "internal_error",
    # REST and auth
    "invalid_request",
    "unknown_stream",
    "missing_token",
    "invalid_token",
    "admin_only",  # an operation for an admin token
    "too_many_streams",
    "service_full",
    "worker_unavailable",  # the worker holding the stream did not answer in time
    "worker_draining",  # this worker is shutting down and takes no new stream
    "file_sources_disabled",
    "invalid_source",
    "unsupported_scheme",
    "source_unreachable",
    "invalid_sdp",
    "request_too_large",
    "destination_not_allowed",
    "origin_not_allowed",
]

# Request validation failures with a code of their own: a validator raises
# `PydanticCustomError(code, message)` and the error response carries that code.
VALIDATION_CODES: frozenset[ErrorCode] = frozenset({"unsupported_scheme", "invalid_recall"})


class _Message(BaseModel):
    """What a client sends: no unknown fields, and every string proper Unicode (JSON's `\\ud800`
    escape makes a lone surrogate, which no tokenizer or UTF-8 encoder takes)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _proper_unicode(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                surrogate = f"\\u{ord(value[exc.start]):04x} at character {exc.start}"
                raise PydanticCustomError(
                    "invalid_unicode", f"holds a lone surrogate ({surrogate}); send proper UTF-8 text"
                ) from None
        return value


# -- REST ------------------------------------------------------------------------------------


class FileStreamRequest(_Message):
    source: Literal["file"]
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="a media file on the server's disk, inside its service.file_root",
    )
    realtime: bool = Field(
        True, description="pace the file at real time like a camera; false: as fast as it decodes"
    )

    @field_validator("path")
    @classmethod
    def _printable(cls, path: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            raise ValueError("the path holds a NUL or another control character")
        return path


class RtspStreamRequest(_Message):
    source: Literal["rtsp"]
    url: str = Field(description="rtsp:// or rtsps:// URL of the camera")

    @field_validator("url")
    @classmethod
    def _camera_url(cls, url: str) -> str:
        try:
            parse_camera_url(url)
        except UnsupportedScheme as exc:
            raise PydanticCustomError("unsupported_scheme", str(exc)) from None
        except InvalidCameraUrl as exc:  # its message never quotes the URL
            raise PydanticCustomError("invalid_request", str(exc)) from None
        return url


CreateStreamRequest = Annotated[FileStreamRequest | RtspStreamRequest, Field(discriminator="source")]


class ApiErrorBody(BaseModel):
    code: ErrorCode
    message: str
    # `service_full` to a client that follows placement itself: the same request goes here
    worker_url: str | None = None


class ApiError(BaseModel):
    """The body of every REST error: `{"error": {"code": ..., "message": ...}}`."""

    error: ApiErrorBody


class LatencySummary(BaseModel):
    count: int
    p50_ms: float | None
    p95_ms: float | None


class ChunkOverlay(BaseModel):
    """The latest chunk's retention, for the browser's overlay."""

    index: int
    start: float
    grid: tuple[int, int, int] | None  # (F, H, W) merged token grid
    resized_hw: tuple[int, int] | None
    semantic: list[int]  # kept flat indices (f*H*W + h*W + w) by branch
    spatial: list[int]
    video_dropped: bool
    encoder_skipped: bool  # the pre-filter found it unchanged: dropped before the vision encoder
    previous_video_evicted: bool
    audio_missing: bool  # part of the chunk's audio was silence put in for missing sound
    video_tokens_in: int
    video_tokens_kept: int
    audio_tokens: int
    similarity: float | None


class MemoryStatsBody(BaseModel):
    """Long memory (`memory:` settings): where a stream's KV lives, and its recalls."""

    enabled: bool
    device_bytes: int  # the live cache (prefix and window)
    host_bytes: int  # evicted chunks in host memory
    disk_bytes: int  # evicted chunks in files
    chunks_offloaded: int  # evicted from the device cache into memory, ever
    chunks_held: int  # offloaded and still recallable
    chunks_forgotten: int  # past retention_s or a disk limit
    recalls: int  # answers that loaded chunks back ("auto" or a span)
    recall_latency: LatencySummary  # choosing and loading chunks, per recall


class StreamStatsBody(BaseModel):
    chunks_received: int
    chunks_processed: int
    chunks_dropped_redundant: int  # video dropped (or the previous video evicted) as redundant
    # Of those, chunks the pixel pre-filter found unchanged: their vision encoder never ran.
    chunks_encoder_skipped: int
    # Never processed because the pipeline fell behind real time: the oldest pending chunk shed
    # by the worker's queue, or a chunk the source cut but dropped before the stream took it.
    chunks_shed: int
    # Received but neither processed nor shed when the stream was deleted: pending, or in the
    # worker (its late result is ignored). received = processed + shed + queue_depth + this,
    # but for the one chunk the worker may be prefilling.
    chunks_discarded: int
    tokens_in: int
    tokens_kept: int
    compression: float  # 1 - kept / in
    real_time_factor: float | None  # processing seconds per chunk second, recent chunks
    queue_depth: int
    kv_tokens: int
    kv_bytes: int
    questions_answered: int
    reconnects: int  # times the source lost its camera and got it back
    answer_latency: LatencySummary  # time to the first delta
    memory: MemoryStatsBody
    last_chunk: ChunkOverlay | None


class ServiceStats(BaseModel):
    """`GET /v1/stats`: this worker's totals. The counts cover every stream it has run since it
    started, deleted ones included; queue depth and KV cache figures are the streams it holds now."""

    streams: dict[StreamState, int]  # held now, by state
    chunks_received: int
    chunks_processed: int
    chunks_dropped_redundant: int
    chunks_encoder_skipped: int
    chunks_shed: int
    chunks_discarded: int  # streams deleted with chunks pending or prefilling
    tokens_in: int
    tokens_kept: int
    compression: float  # 1 - kept / in, over all of them
    queue_depth: int
    kv_tokens: int
    kv_bytes: int
    questions_answered: int
    reconnects: int
    answer_latency: LatencySummary  # time to the first delta, the latest answers of every stream
    memory: MemoryStatsBody  # every stream held now (recall latency: the latest recalls of all)


class ChunkTiming(BaseModel):
    """How the stream is cut: a chunk's length and its pictures per second."""

    seconds: float
    fps: float


class PruningInfo(BaseModel):
    """How the stream's chunks are pruned: the `pruning:` settings it was opened with, or the
    ones a `stream.update` gave it since."""

    method: str
    rho_sem: float  # the share of video tokens the semantic branch keeps
    rho_spa: float  # the spatial branch's grid, as a share of the token map
    drop_policy: str  # "off" for method "none"
    # What semantic scores are measured against: "a2v" (the predictor's ĥ_t), "mean_audio" (no
    # predictor configured: the paper's weaker fallback, or the mean_audio baseline), or "none".
    semantic_reference: ReferenceMode


class ModelInfo(BaseModel):
    """The model that encodes the stream and answers its questions."""

    path: str  # model.path: a hub id, a folder, tiny:<backbone> or random:<model>
    # A tiny or random: build: the answers are noise; only its costs are real.
    random_weights: bool


class SamplingInfo(BaseModel):
    """How the stream's questions are answered unless a question says otherwise."""

    max_tokens: int
    temperature: float
    top_p: float


class StreamInfo(BaseModel):
    id: str
    kind: StreamKind
    source: str
    state: StreamState
    error: str | None
    created: float  # unix seconds
    chunk: ChunkTiming
    pruning: PruningInfo
    model: ModelInfo
    sampling: SamplingInfo
    stats: StreamStatsBody


class WebRtcOffer(_Message):
    """A browser's session description (`RTCPeerConnection.localDescription`), sent once ICE
    gathering is complete: trickle ICE is not supported."""

    sdp: str = Field(description="the offer SDP, with its ICE candidates")
    type: str = Field(description='"offer"')


class WebRtcAnswer(BaseModel):
    stream_id: str
    sdp: str = Field(description="the answer SDP, with the server's ICE candidates")
    type: Literal["answer"] = "answer"
    stream: StreamInfo


class Viewer(BaseModel):
    """Who asked: a user token sees only the streams it opened, an admin token every stream."""

    name: str
    role: Role
    sees_all_streams: bool


class StreamList(BaseModel):
    streams: list[StreamInfo]
    viewer: Viewer


class AnswerLog(BaseModel):
    """A stream's record and its latest answers, kept after the stream is deleted."""

    stream: StreamSummary  # a StreamRecord shows only these fields
    answers: list[AnswerRecord]


# -- websocket: client to server -------------------------------------------------------------


class _ClientEvent(_Message):
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="the client's id of this event; an error it causes echoes it",
    )


class QuestionAsk(_ClientEvent):
    type: Literal["question.ask"]
    id: str = Field(min_length=1, max_length=128)
    text: str  # its length is the session's to judge (`question_too_long`)
    max_tokens: int | None = Field(None, gt=0)
    # "auto", "recent" or {"from": T0, "to": T1} (`memory.spec`); None: "auto" on a stream with
    # memory, "recent" without
    recall: Any = None

    @field_validator("recall")
    @classmethod
    def _recall(cls, value: Any) -> RecallSpec | None:
        if value is None:
            return None
        try:
            return parse_recall(value)
        except InvalidRecallError as exc:
            raise PydanticCustomError("invalid_recall", "{message}", {"message": str(exc)}) from None


class QuestionCancel(_ClientEvent):
    type: Literal["question.cancel"]
    id: str = Field(min_length=1, max_length=128)


class StatsSubscribe(_ClientEvent):
    type: Literal["stats.subscribe"]
    interval_s: float | None = Field(None, ge=0.05, le=3600)


class StatsUnsubscribe(_ClientEvent):
    type: Literal["stats.unsubscribe"]


class PruningUpdate(_Message):
    """The pruning settings to change; those left out stay."""

    method: PruningMethod | None = None
    rho_sem: float | None = Field(None, ge=0.0, le=1.0)
    rho_spa: float | None = Field(None, ge=0.0, le=1.0)
    drop_policy: DropPolicy | None = None


class SamplingUpdate(_Message):
    """The stream's default sampling to change; those left out stay. `max_tokens` may not exceed
    the service's `session.max_new_tokens`."""

    max_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)


class StreamUpdate(_ClientEvent):
    """Change how the stream's next chunks are pruned and its next questions sampled, while it
    runs; answered by `stream.updated` (or an `error` echoing `event_id`)."""

    type: Literal["stream.update"]
    pruning: PruningUpdate | None = None
    sampling: SamplingUpdate | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> StreamUpdate:
        changes = [part for part in (self.pruning, self.sampling) if part is not None]
        if not any(part.model_dump(exclude_none=True) for part in changes):
            raise ValueError("a stream.update changes pruning or sampling: name at least one setting")
        return self


ClientMessage = Annotated[
    QuestionAsk | QuestionCancel | StatsSubscribe | StatsUnsubscribe | StreamUpdate,
    Field(discriminator="type"),
]
_client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_TYPES = ("question.ask", "question.cancel", "stats.subscribe", "stats.unsubscribe", "stream.update")


class ServiceError(Exception):
    """Anything the service refuses: a REST error body with `status`, or a websocket `error` event."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        status: int = 400,
        id: str | None = None,
        event_id: str | None = None,
    ):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.status = status
        self.id = id
        self.event_id = event_id  # the client event that caused it, echoed in the error event

    def body(self, worker_url: str | None = None) -> dict[str, Any]:
        error = ApiErrorBody(code=self.code, message=self.message, worker_url=worker_url)
        return ApiError(error=error).model_dump(exclude_none=True)

    def event(self) -> ErrorEvent:
        return ErrorEvent(code=self.code, message=self.message, id=self.id, event_id=self.event_id)


def parse_client_message(raw: str | bytes, max_bytes: int) -> ClientMessage:
    """Size, then JSON, then type, then fields: each failure with its own error code."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > max_bytes:
        raise ServiceError("message_too_large", f"the message has {size} bytes; the limit is {max_bytes}")
    if isinstance(raw, bytes):
        raise ServiceError("bad_json", "send messages as JSON text frames, not binary")
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ServiceError("bad_json", f"the message is not JSON: {exc}") from None
    except RecursionError:  # the parser's own bound on nesting, well within the process's stack
        raise ServiceError("bad_json", "the message is nested too deeply to be read") from None
    if not isinstance(data, dict):
        raise ServiceError("invalid_message", "a message is a JSON object with a 'type'")
    kind = data.get("type")
    question_id = data.get("id") if isinstance(data.get("id"), str) else None
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if kind not in CLIENT_TYPES:
        raise ServiceError(
            "unknown_type",
            f"unknown message type {kind!r}; known: {', '.join(CLIENT_TYPES)}",
            event_id=event_id,
        )
    try:
        return _client_message.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        code = validation_code(errors)
        raise ServiceError(
            "invalid_message" if code == "invalid_request" else code,
            describe_errors(errors),
            id=question_id,
            event_id=event_id,
        ) from None


# Location items that name a union's tag or the request body, not a field.
_NOT_FIELDS = {"body", "file", "rtsp", *CLIENT_TYPES}


def validation_code(errors: Sequence[Mapping[str, Any]]) -> ErrorCode:
    """The code of a request that failed validation: a specific one (`VALIDATION_CODES`) when
    a validator gave it, else `invalid_request`."""
    return next((error["type"] for error in errors if error["type"] in VALIDATION_CODES), "invalid_request")


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one readable line: `field: problem; field: problem`."""
    parts = []
    for error in errors:
        location = ".".join(str(item) for item in error["loc"] if item not in _NOT_FIELDS)
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


# -- websocket: server to client -------------------------------------------------------------


class AnswerDelta(BaseModel):
    type: Literal["answer.delta"] = "answer.delta"
    id: str
    text: str


class AnswerDoneStats(BaseModel):
    generated_tokens: int
    time_to_first_delta_ms: float | None
    total_ms: float
    finish_reason: Literal["stop", "length", "cancelled"]
    context_tokens: int


class RecallSummary(BaseModel):
    mode: Literal["auto", "recent", "span"]
    spans: list[RecalledSpan]  # in stream order; empty for "recent" or nothing offloaded
    tokens: int
    latency_ms: float  # choosing and loading the chunks


class Usage(BaseModel):
    """The tokens an answer took: its prompt (the question's turn), the stream context it read,
    and what it generated."""

    prompt_tokens: int
    context_tokens: int
    generated_tokens: int


class AnswerDone(BaseModel):
    type: Literal["answer.done"] = "answer.done"
    id: str
    text: str
    stats: AnswerDoneStats
    usage: Usage
    recall: RecallSummary | None = None  # None: the stream has no memory


class StreamStatsEvent(BaseModel):
    type: Literal["stream.stats"] = "stream.stats"
    stream: StreamInfo


class StreamUpdated(BaseModel):
    """A `stream.update` took effect: the next chunk is pruned, and the next question sampled,
    as `stream` now says."""

    type: Literal["stream.updated"] = "stream.updated"
    event_id: str | None = None
    stream: StreamInfo


class StreamMoved(BaseModel):
    """The worker holding the stream is draining and handed it to `worker`, which runs it on
    under the same id with a fresh cache; the socket then closes (4307): reconnect, through any
    worker, to go on asking."""

    type: Literal["stream.moved"] = "stream.moved"
    stream: str
    worker: str


class StreamEnding(BaseModel):
    """The stream ends now and cannot move (a WebRTC peer, a file). `worker_draining`: its
    worker is shutting down; the socket then closes (4410) and a browser offers again through
    the load balancer. `media_timeout`: the WebRTC peer sent no media for
    `service.webrtc_media_timeout_s` (it vanished without hanging up); the stream is `ended`
    and, like any ended stream, still answers questions, so the socket stays open."""

    type: Literal["stream.ending"] = "stream.ending"
    stream: str
    reason: Literal["worker_draining", "media_timeout"]


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    id: str | None = None  # the question it concerns
    event_id: str | None = None  # the client event that caused it


ServerMessage = Annotated[
    AnswerDelta | AnswerDone | StreamStatsEvent | StreamUpdated | StreamMoved | StreamEnding | ErrorEvent,
    Field(discriminator="type"),
]


def protocol_schema() -> dict[str, Any]:
    """The websocket protocol as JSON Schema (`GET /v1/protocol.json`): the events each side
    sends, one `oneOf` per direction keyed by `type`, and the error codes."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "StreamGuard websocket protocol",
        "version": PROTOCOL_VERSION,
        "client_events": TypeAdapter(ClientMessage).json_schema(),
        "server_events": TypeAdapter(ServerMessage).json_schema(),
        "error_codes": list(get_args(ErrorCode)),
    }
