"""Waiting in a service loop: for an event, or until a poll interval passes.

Python 3.11's ``asyncio.wait_for`` can swallow the cancellation that stops a loop when its inner wait completes
at the same moment; the loop then runs on and its stopper waits forever (the trainer's imprint lane hung one test
run in four). ``asyncio.timeout`` does not: loops wait through here."""

from __future__ import annotations

import asyncio


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; whether it was set. Leaves the event as it is."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
