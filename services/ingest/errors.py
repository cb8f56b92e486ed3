"""How ingest's own failures are answered: one place for the FastAPI exception handlers and the fast path.

Each function turns an exception into ``(status, body, headers)``; the wire contract fixes the shapes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from services.ingest.admission import BudgetSpent, Overloaded
from services.ingest.domain import ImageRejected
from services.ingest.handlers import ServiceUnavailable
from services.ingest.metrics import RATE_LIMITED, UNAVAILABLE
from services.ingest.ratelimit import QuotaExceeded
from services.ingest.readmodels import ReadModelUnavailable

RETRY_AFTER_SECONDS = 5
Answer = tuple[int, dict, dict[str, str]]


def _printable_loc(part: str | int) -> str | int:
    """A ``loc`` part as JSON can carry it: a dict key (a slot name) may hold a lone surrogate."""
    return part.encode("utf-8", "backslashreplace").decode() if isinstance(part, str) else part


def _limits(context: dict[str, Any] | None) -> dict[str, int | float | str]:
    """The limits an error names (``max_length``, ``ge``, ``pattern``...), never the value that broke them."""
    return {
        key: value
        for key, value in (context or {}).items()
        if key == "pattern" or (type(value) in (int, float) and math.isfinite(value))
    }


def invalid_request(problem: RequestValidationError | ValidationError) -> Answer:
    """422 naming each field, its rule and its limit: ``loc``, ``msg``, ``type`` and ``ctx`` (the limit), but
    never the ``input``, which FastAPI's default echoes back (a 100 MiB body answered with itself)."""
    detail = []
    for error in problem.errors():
        entry = {
            "type": error["type"],
            "loc": [_printable_loc(part) for part in error["loc"]],
            "msg": _printable_loc(error["msg"]),
        }
        if limits := _limits(error.get("ctx")):
            entry["ctx"] = limits
        detail.append(entry)
    return 422, {"detail": detail}, {}


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


def overloaded(problem: Overloaded) -> Answer:
    """503: this worker is at one of its bounds (``services.ingest.admission``); nothing was taken."""
    UNAVAILABLE.labels(problem.resource).inc()
    return (
        503,
        {"detail": str(problem), "resource": problem.resource},
        {"Retry-After": str(problem.retry_after)},
    )


def budget_spent(problem: BudgetSpent) -> Answer:
    """429 for an origin whose reject budget is spent (``admission.RejectBudget``)."""
    RATE_LIMITED.labels("rejects").inc()
    return (
        429,
        {"detail": str(problem), "scope": "rejects", "limit": problem.limit},
        {"Retry-After": str(problem.retry_after)},
    )


def read_unavailable(_problem: ReadModelUnavailable) -> Answer:
    UNAVAILABLE.labels("database").inc()
    return 503, {"detail": "database unavailable; retry later"}, {"Retry-After": str(RETRY_AFTER_SECONDS)}


ContributionProblem = ImageRejected | QuotaExceeded | ServiceUnavailable | Overloaded | BudgetSpent
CONTRIBUTION_PROBLEMS = (ImageRejected, QuotaExceeded, ServiceUnavailable, Overloaded, BudgetSpent)


def contribution_problem(problem: ContributionProblem, image_field: str, now: datetime) -> Answer:
    """The answer to an exception a contribution request may raise (catch ``CONTRIBUTION_PROBLEMS``)."""
    if isinstance(problem, ImageRejected):
        return bad_image(problem, image_field)
    if isinstance(problem, QuotaExceeded):
        return over_quota(problem, now)
    if isinstance(problem, Overloaded):
        return overloaded(problem)
    if isinstance(problem, BudgetSpent):
        return budget_spent(problem)
    return unavailable(problem)
