"""The service layer: checked requests (``services.ingest.intake``) have quota taken and are published.

Order matters and is the contract: schema (FastAPI, 422) -> image and item checks (400 / per-item rejection)
-> quota (429) -> publish and await the broker's confirm (503 on failure, quota given back) -> 2xx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import date

from services.ingest import metrics
from services.ingest.intake import Intake
from services.ingest.ratelimit import Charge, QuotaExceeded, RateLimiter
from shared.broker import EventPublisher, PublishFailed
from shared.clock import Clock, utc_now
from shared.events import Contribution

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} unavailable: {detail}")
        self.dependency = dependency


class ContributionService:
    def __init__(
        self,
        publisher: EventPublisher,
        limiter: RateLimiter,
        clock: Clock = utc_now,
    ) -> None:
        self._publisher = publisher
        self._limiter = limiter
        self.clock = clock

    def today(self) -> date:
        return self.clock().date()

    async def submit(self, intake: Intake, install_id: str, origin: str, voice: str | None = None) -> None:
        """Take quota for the accepted items and publish them, each carrying the origin's ``voice`` (its
        network's keyed hash, for consensus); return only when the broker confirmed all.

        Raises ``QuotaExceeded`` (nothing taken, nothing published) or ``ServiceUnavailable`` (quota given
        back; some items may have been confirmed, and a resend carries the same ids, so they count once).
        """
        for rejection in intake.rejections:
            metrics.REJECTED.labels(intake.kind, rejection.code).inc()
        if not intake.events:
            return
        # the bytes of what is published (and stored), counted against the daily byte quotas
        image_bytes = sum(len(getattr(event, "png", b"")) for _, event in intake.events)
        charge = Charge(install_id, origin, len(intake.events), image_bytes, self.today())
        started = time.perf_counter()
        try:
            await self._limiter.consume(charge)
        except QuotaExceeded as exceeded:
            metrics.RATE_LIMITED.labels(exceeded.scope).inc()
            raise
        except Exception as error:
            raise ServiceUnavailable("database", repr(error)) from error
        metrics.QUOTA_SECONDS.observe(time.perf_counter() - started)
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(self._publisher.publish(with_voice(event, voice)) for _, event in intake.events),
            return_exceptions=True,
        )
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            log.warning(
                "publish failed; answering 503",
                extra={"install_id": install_id, "reason": repr(failures[0])},
            )
            try:
                await self._limiter.refund(charge)
            except Exception:
                log.exception("could not give quota back", extra={"install_id": install_id})
            if not all(isinstance(failure, PublishFailed) for failure in failures):
                log.error("unexpected publish error", exc_info=failures[0])
            raise ServiceUnavailable("broker", repr(failures[0]))
        for _, event in intake.events:
            metrics.ACCEPTED.labels(event.event_type.removeprefix("contribution.")).inc()


def with_voice(event: Contribution, voice: str | None) -> Contribution:
    return event if voice is None else event.model_copy(update={"origin": voice})
