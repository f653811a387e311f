"""Prometheus metrics, one registry per app. Labels are route templates, never raw paths or values."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, pending: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "secretsd_http_requests_total", "HTTP requests by route template and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "secretsd_http_request_duration_seconds", "HTTP request latency by route template.",
            ["method", "route"], buckets=_BUCKETS, registry=self.registry,
        )
        self.writethrough = Histogram(
            "secretsd_writethrough_seconds", "Time to write a workspace folder durably.",
            buckets=_BUCKETS, registry=self.registry,
        )
        self.write_batch = Histogram(
            "secretsd_write_batch_folders", "Workspace folders written together in one batch (group commit, global change).",
            buckets=(2, 4, 8, 16, 32, 64, 128), registry=self.registry,
        )
        self.writethrough_failures = Counter(
            "secretsd_writethrough_failures_total", "Folder writes that failed (left pending).",
            registry=self.registry,
        )
        self.pending = Gauge(
            "secretsd_pending_writes", "Workspace keys stored but not yet written to their folder.",
            registry=self.registry,
        )
        self.pending.set_function(pending)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
