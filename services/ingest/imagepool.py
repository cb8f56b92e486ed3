"""Image checks off the event loop, in a bounded pool.

Decoding a PNG holds the thread for milliseconds (a 4K screenshot: over a hundred); on the event loop that
stalls every other request of the worker. Here the checks run on ``threads`` threads (Pillow and zlib release
the GIL while decoding), at most ``queue`` more wait for one, and a request beyond that is refused at once with
``Overloaded`` (503 with ``Retry-After``) instead of queueing without bound. One origin has at most
``per_origin`` requests in the pool: its reject budget is charged once a request's checks are done, so without
this an origin opening many connections would have that many requests decoded before the first was charged.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from services.ingest.admission import Overloaded

Result = TypeVar("Result")


class ImagePool:
    def __init__(self, threads: int, queue: int, per_origin: int) -> None:
        self.capacity = threads + queue
        self.per_origin = per_origin
        self.pending = 0
        self._pending_of: Counter[str] = Counter()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-check")

    async def run(self, origin: str, check: Callable[..., Result], *args: object) -> Result:
        if self.pending >= self.capacity:
            raise Overloaded(
                "image_checks",
                f"all {self.capacity} image-check places of this worker are taken: retry shortly",
            )
        if self._pending_of[origin] >= self.per_origin:
            raise Overloaded(
                "image_checks_per_origin",
                f"this address already has {self.per_origin} requests being checked: send them one after another",
            )
        self.pending += 1
        self._pending_of[origin] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, check, *args)
        finally:
            self.pending -= 1
            self._pending_of[origin] -= 1
            if not self._pending_of[origin]:
                del self._pending_of[origin]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
