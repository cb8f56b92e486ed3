"""A steady stream of contributions for the fault tests, with an exact record of what each one got back."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter

import httpx

from shared.imagekeys import keys_of_png
from tools.simulator.workload import draw_icon


class ContributionLoad:
    """Posts icon contributions, each a new (install, crop) pair so each is exactly one vote, ``concurrency``
    at a time, round-robin over the ingest URLs, until ``stop()`` or ``limit`` sent.

    ``sent`` holds every pair posted, ``accepted`` those answered 2xx with ``accepted == 1``; ``statuses``
    counts answers by status code ("error" for no answer at all, e.g. a connection refused); ``timeline``
    is (seconds since start, status) per answer."""

    def __init__(self, urls: list[str], *, crops: int = 40, concurrency: int = 8, tag: str = "load") -> None:
        self.urls, self.concurrency, self.tag = urls, concurrency, tag
        pngs = [draw_icon(i, 0) for i in range(crops)]
        # each crop as voting keys it: by its pixels as the client's model sees them
        self.crops = [
            (f"Item {i:04d}", base64.b64encode(p).decode(), keys_of_png(p).pixels_sha256)
            for i, p in enumerate(pngs)
        ]
        self.sent: set[tuple[str, str]] = set()
        self.accepted: set[tuple[str, str]] = set()
        self.statuses: Counter[str] = Counter()
        self.timeline: list[tuple[float, str]] = []
        self._next = 0
        self._stopped = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self, limit: int | None = None) -> ContributionLoad:
        self._task = asyncio.create_task(self._run(limit))
        return self

    def stop(self) -> None:
        self._stopped.set()

    async def finish(self) -> None:
        """Wait until the load has ended (after ``stop()`` or its limit)."""
        assert self._task is not None
        await self._task

    async def _run(self, limit: int | None) -> None:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=15) as client:

            async def worker() -> None:
                while not self._stopped.is_set() and (limit is None or self._next < limit):
                    number = self._next
                    self._next += 1
                    label, b64, sha = self.crops[number % len(self.crops)]
                    install = f"{self.tag}-{number // len(self.crops):05d}"
                    body = {
                        "install_id": install,
                        "items": [{"slot": "Fore Weapon", "name": label, "crop_png_b64": b64}],
                    }
                    self.sent.add((install, sha))
                    try:
                        response = await client.post(
                            f"{self.urls[number % len(self.urls)]}/contribute/bulk-crops", json=body
                        )
                        status = str(response.status_code)
                        if response.status_code == 200 and response.json()["accepted"] == 1:
                            self.accepted.add((install, sha))
                    except httpx.HTTPError:
                        status = "error"
                        await asyncio.sleep(0.05)  # a server that is down refuses at once: do not spin
                    self.statuses[status] += 1
                    self.timeline.append((time.monotonic() - started, status))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def statuses_between(self, start: float, end: float) -> Counter[str]:
        return Counter(status for at, status in self.timeline if start <= at < end)

    def account(self, counted: set[tuple[str, str]]) -> str:
        """One line: what was sent, answered and counted."""
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        return (
            f"sent {len(self.sent)} ({answers}); accepted {len(self.accepted)}; counted {len(counted)} "
            f"(accepted and counted {len(self.accepted & counted)}, accepted not counted "
            f"{len(self.accepted - counted)}, counted but answered otherwise {len(counted - self.accepted)})"
        )
