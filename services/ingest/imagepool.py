"""Image checks off the event loop, in bounded pools (one per lane: crops, screenshots).

Decoding a PNG holds the thread for milliseconds (a 4K screenshot: over a hundred); on the event loop that
stalls every other request of the worker. Here the checks run on ``threads`` threads (Pillow and zlib release
the GIL while decoding), at most ``queue`` more wait for one, and a request beyond that is refused at once with
``Overloaded`` (503 with ``Retry-After``) instead of queueing without bound.

Screenshots have their own lane, so that a request of twenty 4K screenshots (seconds of decoding) never holds
the threads that check crops.

A request with at most ``inline_up_to`` images is checked on the event loop instead: a crop is at most 256x256
pixels, well under a millisecond to decode, and the hop to a thread and back cost more than that (a single-crop
request: 12 % of ingest's throughput in benchmarks/ingest_load.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from services.ingest.admission import Overloaded

Result = TypeVar("Result")


class ImagePool:
    def __init__(self, lane: str, threads: int, queue: int, inline_up_to: int = 0, nice: int = 0) -> None:
        self.lane = lane
        self.inline_up_to = inline_up_to
        self.capacity = threads + queue
        self.pending = 0
        self._executor = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix=f"{lane}-check",
            initializer=_lower_priority,
            initargs=(nice,),
        )

    async def run(self, check: Callable[..., Result], *args: object) -> Result:
        if self.pending >= self.capacity:
            raise Overloaded(
                f"{self.lane}_checks",
                f"all {self.capacity} {self.lane} check places of this worker are taken: retry shortly",
            )

        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, check, *args)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Run this check thread ``nice`` steps below the event loop (Linux schedules threads one by one): seconds of
    screenshot decoding, honest or not, then take only the CPU the contribution requests leave over."""
    if nice:
        with contextlib.suppress(AttributeError, OSError):  # no per-thread priority on this platform
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
