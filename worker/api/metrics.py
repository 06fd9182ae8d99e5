"""Prometheus metrics of one worker app, on its own registry (so tests can build several apps).

Exposed at ``GET /metrics``: requests by endpoint and status, request latency, time to first audio
chunk, real-time factor of synthesis (processing seconds per audio second), the synthesis queue depth,
streams in flight and streams the client abandoned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_FIRST_CHUNK_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_RTF_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class WorkerMetrics:
    """All metrics of one app; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "voxclone_worker_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "voxclone_worker_request_duration_seconds",
            "Time from request to the end of the response (whole stream for /v1/speech)",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_chunk = Histogram(
            "voxclone_worker_time_to_first_chunk_seconds",
            "Time from a /v1/speech request to its first PCM chunk",
            buckets=_FIRST_CHUNK_BUCKETS,
            registry=self.registry,
        )
        self.realtime_factor = Histogram(
            "voxclone_worker_realtime_factor",
            "Synthesis processing seconds per second of audio produced (below 1 is faster than real time)",
            buckets=_RTF_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "voxclone_worker_synthesized_audio_seconds",
            "Seconds of speech streamed to clients",
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "voxclone_worker_active_streams",
            "/v1/speech streams in flight",
            registry=self.registry,
        )
        self.abandoned_streams = Counter(
            "voxclone_worker_abandoned_streams",
            "/v1/speech streams closed by the client (or failed) before the end",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "voxclone_worker_queue_depth",
            "Synthesis requests waiting for the model",
            registry=self.registry,
        )

    def track_queue_depth(self, read: Callable[[], float]) -> None:
        """Read the queue depth from the service at every scrape."""
        self.queue_depth.set_function(read)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, code=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_stream(self, audio_s: float, processing_s: float, completed: bool) -> None:
        """One /v1/speech stream has finished (or was abandoned)."""
        self.audio_seconds.inc(audio_s)
        if completed and audio_s > 0:
            self.realtime_factor.observe(processing_s / audio_s)
        if not completed:
            self.abandoned_streams.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
