"""Prometheus metrics of one service instance, on its own registry (tests build several apps).

Per stream (label `stream`, removed when the stream is deleted) and, for the counters, a
`streamguard_service_*` twin without the label that keeps counting across stream lifetimes.
The gauges' service-wide figures (`streamguard_service_compression_ratio`, `_queue_depth`,
`_kv_cache_tokens`, `_kv_cache_bytes`) are read from the registry's totals at scrape time.
Operators watch `streamguard_chunks_dropped_total{stream, reason="redundant"|"shed"|"discarded"}`:
`redundant` chunks lost their video to the temporal rule (their audio stayed), `shed` chunks
never reached the model because the pipeline fell behind real time (the worker's queue shed
them, or the source dropped them before the stream could take them), `discarded` chunks were
pending or prefilling when their stream was deleted (only the service total keeps those). Of the
redundant ones, `streamguard_encoder_skipped_total{stream}` counts those the pixel pre-filter
caught before the vision encoder ran: the encoder time saved.

Long memory: a stream's device KV is `streamguard_kv_cache_bytes`; what it evicted lives on in
`streamguard_memory_host_bytes` and `streamguard_memory_disk_bytes`
(`streamguard_service_memory_*_bytes` for all streams); `streamguard_memory_chunks_offloaded_total`
counts evictions kept, `streamguard_recalls_total{mode="auto"|"span"}` the answers that loaded
chunks back and `streamguard_recall_seconds` how long choosing and loading took.

A user token's scrape shows the per-stream series of its own streams only (stream ids leak
nothing, as on the REST API); an admin token's shows every stream. The service-wide series are
for every token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamguard.cluster.store import StoreHealth
from streamguard.service.protocol import ServiceStats, StreamState

DROP_REASONS = ("redundant", "shed", "discarded")
RECALL_MODES = ("auto", "span")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StreamCounter:
    """A counter per stream plus its all-streams total."""

    def __init__(self, registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = ()):
        self.labels = labels
        self.per_stream = Counter(f"streamguard_{name}", doc, ["stream", *labels], registry=registry)
        self.total = Counter(
            f"streamguard_service_{name}", f"{doc}, all streams", list(labels), registry=registry
        )

    def inc(self, stream: str, amount: float = 1, **labels: str) -> None:
        values = [labels[name] for name in self.labels]
        self.per_stream.labels(stream, *values).inc(amount)
        if values:
            self.total.labels(*values).inc(amount)
        else:
            self.total.inc(amount)


class _StreamStates(Collector):
    """`streamguard_streams{state}`, counted from the stream registry at scrape time."""

    def __init__(self, count: Callable[[], Mapping[StreamState, int]]):
        self._count = count

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("streamguard_streams", "Streams held, by state", labels=["state"])
        counts = self._count()
        for state in StreamState:
            family.add_metric([state.value], counts.get(state, 0))
        yield family


class _ServiceGauges(Collector):
    """The service-wide gauges, from the registry's totals at scrape time."""

    def __init__(self, totals: Callable[[], ServiceStats]):
        self._totals = totals

    def collect(self) -> Iterable[Metric]:
        totals = self._totals()
        for name, doc, value in (
            ("compression_ratio", "1 - kept/in tokens, every stream", totals.compression),
            ("queue_depth", "Chunks waiting for the model, all streams", totals.queue_depth),
            ("kv_cache_tokens", "Tokens in the KV caches of all streams", totals.kv_tokens),
            ("kv_cache_bytes", "Bytes of the KV caches of all streams", totals.kv_bytes),
            ("memory_host_bytes", "Evicted KV in host memory, all streams", totals.memory.host_bytes),
            ("memory_disk_bytes", "Evicted KV in files, all streams", totals.memory.disk_bytes),
        ):
            yield GaugeMetricFamily(f"streamguard_service_{name}", doc, value=value)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.chunks_received = _StreamCounter(r, "chunks_received", "Chunks cut from the source")
        self.chunks_processed = _StreamCounter(r, "chunks_processed", "Chunks prefilled into the cache")
        self.chunks_dropped = _StreamCounter(
            r,
            "chunks_dropped",
            "Chunks dropped: video redundant (audio kept) or shed under load",
            ("reason",),
        )
        self.encoder_skipped = _StreamCounter(
            r,
            "encoder_skipped",
            "Chunks the pre-filter found unchanged: vision encoder skipped (also dropped as redundant)",
        )
        self.tokens_in = _StreamCounter(r, "tokens_in", "Tokens of processed chunks before pruning")
        self.tokens_kept = _StreamCounter(r, "tokens_kept", "Tokens processed chunks appended to the cache")
        self.questions = _StreamCounter(r, "questions", "Questions answered")
        self.source_reconnects = _StreamCounter(
            r, "source_reconnects", "Times a source (an RTSP camera) came back after a drop"
        )
        self.compression = Gauge(
            "streamguard_compression_ratio", "1 - kept/in tokens", ["stream"], registry=r
        )
        self.real_time_factor = Gauge(
            "streamguard_real_time_factor",
            "Processing seconds per chunk second, recent chunks",
            ["stream"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "streamguard_queue_depth", "Chunks waiting for the model", ["stream"], registry=r
        )
        self.kv_tokens = Gauge(
            "streamguard_kv_cache_tokens", "Tokens in the stream's KV cache", ["stream"], registry=r
        )
        self.kv_bytes = Gauge(
            "streamguard_kv_cache_bytes", "Bytes of the stream's KV cache", ["stream"], registry=r
        )
        self.memory_host_bytes = Gauge(
            "streamguard_memory_host_bytes", "The stream's evicted KV in host memory", ["stream"], registry=r
        )
        self.memory_disk_bytes = Gauge(
            "streamguard_memory_disk_bytes", "The stream's evicted KV in files", ["stream"], registry=r
        )
        self.chunks_offloaded = _StreamCounter(
            r, "memory_chunks_offloaded", "Chunks evicted from the device cache into long memory"
        )
        self.recalls = _StreamCounter(r, "recalls", "Answers that loaded offloaded chunks back", ("mode",))
        self.recall_seconds = Histogram(
            "streamguard_recall_seconds",
            "Choosing and loading a question's recalled chunks",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.streams_taken_over = Counter(
            "streamguard_streams_taken_over",
            "RTSP streams this worker continued after their worker died (their lease lapsed)",
            registry=r,
        )
        self.slow_readers = Counter(
            "streamguard_websocket_slow_readers",
            "Websocket clients closed (4429) for not reading their events",
            registry=r,
        )
        self.first_delta = Histogram(
            "streamguard_answer_time_to_first_delta_seconds",
            "From a question's arrival to its first answer delta",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._per_stream = [
            self.chunks_received.per_stream,
            self.chunks_processed.per_stream,
            self.encoder_skipped.per_stream,
            self.tokens_in.per_stream,
            self.tokens_kept.per_stream,
            self.questions.per_stream,
            self.source_reconnects.per_stream,
            self.compression,
            self.real_time_factor,
            self.queue_depth,
            self.kv_tokens,
            self.kv_bytes,
            self.memory_host_bytes,
            self.memory_disk_bytes,
            self.chunks_offloaded.per_stream,
        ]

    def watch_streams(
        self, count: Callable[[], Mapping[StreamState, int]], totals: Callable[[], ServiceStats]
    ) -> None:
        """Read the streams held (by state) and the service's totals at every scrape."""
        self.registry.register(_StreamStates(count))
        self.registry.register(_ServiceGauges(totals))

    def watch_store(self, health: Callable[[], StoreHealth]) -> None:
        """`streamguard_store_up` and the answers waiting for it, read at scrape time."""
        up = Gauge(
            "streamguard_store_up",
            "1 while the shared store answers; 0 while Redis is away and the service runs from memory",
            registry=self.registry,
        )
        up.set_function(lambda: float(health().up))
        buffered = Gauge(
            "streamguard_store_buffered_answers",
            "Answers held in memory until Redis is back",
            registry=self.registry,
        )
        buffered.set_function(lambda: float(health().buffered_answers))

    def add_stream(self, stream: str) -> None:
        """Write a new stream's counters at zero, so a dashboard sees them before the first event."""
        for counter in (
            self.chunks_received,
            self.chunks_processed,
            self.encoder_skipped,
            self.tokens_in,
            self.tokens_kept,
            self.questions,
            self.source_reconnects,
        ):
            counter.per_stream.labels(stream)
        for reason in DROP_REASONS:
            self.chunks_dropped.per_stream.labels(stream, reason)
            self.chunks_dropped.total.labels(reason)

    def forget(self, stream: str) -> None:
        """Remove a deleted stream's series (the `service` totals keep its counts)."""
        for family in self._per_stream:
            _remove(family, stream)
        for reason in DROP_REASONS:
            _remove(self.chunks_dropped.per_stream, stream, reason)
        for mode in RECALL_MODES:
            _remove(self.recalls.per_stream, stream, mode)

    def exposition(self, shows_stream: Callable[[str], bool] | None = None) -> bytes:
        """The text exposition; with `shows_stream`, only the per-stream series it accepts."""
        if shows_stream is None:
            return generate_latest(self.registry)
        return generate_latest(_StreamsShown(self.registry, shows_stream))


class _StreamsShown:
    """The registry's families less the series of streams `shows` does not accept: what
    `generate_latest` needs of a registry is `collect()`."""

    def __init__(self, registry: CollectorRegistry, shows: Callable[[str], bool]):
        self.registry = registry
        self.shows = shows

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            shown = Metric(family.name, family.documentation, family.type, family.unit)
            shown.samples = [
                sample
                for sample in family.samples
                if "stream" not in sample.labels or self.shows(sample.labels["stream"])
            ]
            yield shown


def _remove(family: Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # the series was never written
        family.remove(*labels)
