"""The wall-clock budget of a run and the quality gate: pure decisions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class Deadline:
    """An absolute deadline on ``clock`` (seconds; monotonic unless given), checked between batches so a run ends
    within seconds of it."""

    def __init__(self, seconds_left: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at = clock() + max(0.0, seconds_left)

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def remaining(self) -> float:
        return max(0.0, self._at - self._clock())

    @property
    def expired(self) -> bool:
        return self._clock() >= self._at

    def share(self, fraction: float) -> Deadline:
        """A deadline ``fraction`` of the remaining time away (for a phase of the run)."""
        return Deadline(self.remaining * fraction, self._clock)


@dataclass(frozen=True)
class GateDecision:
    publish: bool
    reason: str
    candidate: float
    current: float | None


def quality_gate(
    candidate_accuracy: float,
    current_accuracy: float | None,
    *,
    margin: float,
    trained_epochs: int,
    classes: int,
) -> GateDecision:
    """Publish only a model that learnt something and is not worse than the published one (minus ``margin``)."""
    chance = 1.0 / max(classes, 1)
    if trained_epochs == 0:
        return GateDecision(
            False,
            "no complete epoch before the deadline: the head is untrained",
            candidate_accuracy,
            current_accuracy,
        )
    if candidate_accuracy <= chance:
        return GateDecision(
            False,
            f"held-out accuracy {candidate_accuracy:.3f} is not above chance ({chance:.3f})",
            candidate_accuracy,
            current_accuracy,
        )
    if current_accuracy is not None and candidate_accuracy + margin < current_accuracy:
        return GateDecision(
            False,
            f"held-out accuracy {candidate_accuracy:.3f} is below the published model's {current_accuracy:.3f} (margin {margin})",
            candidate_accuracy,
            current_accuracy,
        )
    return GateDecision(
        True,
        "not worse than the published model" if current_accuracy is not None else "first model",
        candidate_accuracy,
        current_accuracy,
    )
