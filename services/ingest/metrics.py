"""Prometheus metrics of the ingest service. With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR
(scripts/run.sh does) so /metrics adds up every worker."""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

ACCEPTED = Counter("warp_ingest_accepted_total", "Contributions accepted (broker-confirmed)", ["kind"])
REJECTED = Counter("warp_ingest_rejected_total", "Contributions rejected", ["kind", "reason"])
RATE_LIMITED = Counter("warp_ingest_rate_limited_total", "Requests refused by a daily quota", ["scope"])
UNAVAILABLE = Counter("warp_ingest_unavailable_total", "Requests answered 503", ["dependency"])
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
PUBLISH_SECONDS = Histogram(
    "warp_ingest_publish_seconds",
    "Time from publish to broker confirm, per request",
    buckets=_LATENCY_BUCKETS,
)
QUOTA_SECONDS = Histogram(
    "warp_ingest_quota_seconds", "Time to take a request's quota in Postgres", buckets=_LATENCY_BUCKETS
)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
