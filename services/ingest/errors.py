"""How ingest's own failures are answered: one place for the FastAPI exception handlers and the fast path.

Each function turns an exception into ``(status, body, headers)``; the wire contract fixes the shapes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from services.ingest.domain import ImageRejected
from services.ingest.handlers import ServiceUnavailable
from services.ingest.metrics import UNAVAILABLE
from services.ingest.ratelimit import QuotaExceeded
from services.ingest.readmodels import ReadModelUnavailable

RETRY_AFTER_SECONDS = 5
Answer = tuple[int, dict, dict[str, str]]


def _json_compliant(value: Any) -> Any:
    """``value`` with every infinite float as a string: Python's JSON parser takes ``Infinity``, JSON cannot
    answer it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_compliant(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_compliant(item) for key, item in value.items()}
    return value


def invalid_request(problem: RequestValidationError) -> Answer:
    """FastAPI's 422 naming the field, also for a body it parsed with ``Infinity`` in it (else a 500)."""
    return 422, {"detail": _json_compliant(jsonable_encoder(problem.errors()))}, {}


def bad_image(problem: ImageRejected, field: str) -> Answer:
    return 400, {"detail": [{"loc": ["body", field], "msg": str(problem), "type": problem.code}]}, {}


def over_quota(exceeded: QuotaExceeded, now: datetime) -> Answer:
    """429 until the quota day ends (UTC midnight), which is what ``Retry-After`` says."""
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return (
        429,
        {"detail": str(exceeded), "scope": exceeded.scope, "limit": exceeded.limit},
        {"Retry-After": str(int((midnight - now).total_seconds()) + 1)},
    )


def unavailable(problem: ServiceUnavailable) -> Answer:
    UNAVAILABLE.labels(problem.dependency).inc()
    return (
        503,
        {"detail": f"{problem.dependency} unavailable, nothing was recorded; retry later"},
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def read_unavailable(_problem: ReadModelUnavailable) -> Answer:
    UNAVAILABLE.labels("database").inc()
    return 503, {"detail": "database unavailable; retry later"}, {"Retry-After": str(RETRY_AFTER_SECONDS)}


ContributionProblem = ImageRejected | QuotaExceeded | ServiceUnavailable
CONTRIBUTION_PROBLEMS = (ImageRejected, QuotaExceeded, ServiceUnavailable)


def contribution_problem(problem: ContributionProblem, image_field: str, now: datetime) -> Answer:
    """The answer to an exception a contribution request may raise (catch ``CONTRIBUTION_PROBLEMS``)."""
    if isinstance(problem, ImageRejected):
        return bad_image(problem, image_field)
    if isinstance(problem, QuotaExceeded):
        return over_quota(problem, now)
    return unavailable(problem)
