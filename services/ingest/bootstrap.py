"""Composition root of ingest: ``bootstrap(settings, **overrides)`` wires the real adapters into a ``Runtime``.

Each adapter can be replaced by an in-memory fake (``tests/ingest/fakes.py``): the publisher, the rate limiter,
the read store, the clocks; the engine (readiness, the real read store) is only connected when used. What bootstrap builds it also closes; what it is given
belongs to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.admission import BytesInFlight, RejectBudget
from services.ingest.dependencies import Runtime
from services.ingest.handlers import ContributionService
from services.ingest.imagepool import ImagePool
from services.ingest.ratelimit import GroupedRateLimiter, RateLimiter
from services.ingest.readmodels import ReadModels, ReadStore
from services.ingest.settings import IngestSettings
from services.ingest.store import PostgresQuotaCounters, PostgresReads, create_quota_pool
from shared.broker import EventPublisher
from shared.clock import Clock, utc_now
from shared.db import create_engine

CONNECT_WAIT_SECONDS = 5  # start answering (and report not-ready) if RabbitMQ takes longer
log = logging.getLogger(__name__)


def origin_secret(settings: IngestSettings) -> bytes:
    """The key of origin hashes: ``WARP_ORIGIN_SECRET``, or a random one for this process (``serve.py`` sets
    one for all its workers), with which per-origin counts restart on every start."""
    if settings.origin_secret is not None:
        return settings.origin_secret.get_secret_value().encode()
    log.warning(
        "WARP_ORIGIN_SECRET is unset: per-origin quotas are keyed with a random key, so they restart with "
        "this process and are not shared with other replicas; set it in production"
    )
    return secrets.token_bytes(32)


@contextlib.asynccontextmanager
async def bootstrap(
    settings: IngestSettings,
    *,
    publisher: EventPublisher | None = None,
    engine: AsyncEngine | None = None,
    limiter: RateLimiter | None = None,
    read_store: ReadStore | None = None,
    images: dict[str, ImagePool] | None = None,
    clock: Clock = utc_now,
    monotonic: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Runtime]:
    """The ``Runtime`` for one process, open for the ``async with`` block."""
    async with contextlib.AsyncExitStack() as owned:
        if publisher is None:
            publisher = EventPublisher(
                settings.broker_url, settings.topology(), confirm_timeout=settings.publish_timeout_seconds
            )
            connecting = asyncio.create_task(publisher.connect_with_retry())
            owned.push_async_callback(publisher.close)
            owned.callback(connecting.cancel)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(connecting), timeout=CONNECT_WAIT_SECONDS)
        if engine is None:
            engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
            owned.push_async_callback(engine.dispose)
        if limiter is None:
            pool = await create_quota_pool(settings.database_url, settings.database_pool_size)
            owned.push_async_callback(pool.close)
            grouped = GroupedRateLimiter(PostgresQuotaCounters(pool), settings.quota())
            owned.push_async_callback(grouped.close)
            limiter = grouped
        if images is None:
            images = {
                "crops": ImagePool(
                    "crops",
                    settings.image_check_threads,
                    settings.image_check_queue,
                    inline_up_to=settings.inline_crop_checks,
                ),
                "screens": ImagePool(
                    "screens",
                    settings.screenshot_check_threads,
                    settings.screenshot_check_queue,
                    nice=settings.screenshot_check_nice,
                ),
            }
            for pool in images.values():
                owned.callback(pool.close)
        yield Runtime(
            settings=settings,
            topology=settings.topology(),
            publisher=publisher,
            service=ContributionService(publisher, limiter, clock),
            read_models=ReadModels(
                read_store or PostgresReads(engine), settings.read_cache_seconds, monotonic
            ),
            engine=engine,
            origin_secret=origin_secret(settings),
            images=images,
            rejects=RejectBudget(settings.reject_budget, settings.reject_window_seconds, monotonic),
            in_flight=BytesInFlight(settings.max_bytes_in_flight),
            monotonic=monotonic,
        )
