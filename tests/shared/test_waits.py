"""The loops' wait: for an event or a poll interval, and a cancel always stops it."""

import asyncio

import pytest

from shared.waits import woken


async def test_an_event_set_wakes_it_and_otherwise_the_interval_ends_it():
    event = asyncio.Event()
    assert not await woken(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await woken(event, 5)
    assert event.is_set()  # left as it is: the loop clears it


async def test_a_cancel_stops_it_even_when_the_event_is_set_in_the_same_moment():
    for _ in range(50):
        event = asyncio.Event()
        waiting = asyncio.create_task(woken(event, 5))
        await asyncio.sleep(0)
        event.set()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
