"""The one run/shutdown shell of the queue workers (shared/worker_main.run_service), with small fakes."""

import asyncio
import inspect

import pytest

from shared.worker_main import run_service


class Recorder:
    """The publisher, engine and FastStream broker a worker holds, writing what happened to them to one log."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def connect_with_retry(self) -> None:
        self.log.append("publisher connected")

    async def close(self) -> None:
        self.log.append("publisher closed")

    async def dispose(self) -> None:
        self.log.append("engine disposed")

    async def start(self) -> None:
        self.log.append("broker started")

    async def stop(self) -> None:
        self.log.append("broker stopped")


async def runs_until_cancelled(log: list[str], name: str) -> None:
    log.append(f"{name} running")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        log.append(f"{name} cancelled")
        raise


async def fails(log: list[str]) -> None:
    await asyncio.sleep(0)  # the other tasks start first
    log.append("failing")
    raise RuntimeError("the loop broke")


async def test_a_failing_task_stops_the_others_and_everything_closes_in_reverse():
    fakes = Recorder()
    with pytest.raises(ExceptionGroup) as raised:
        await run_service(
            [runs_until_cancelled(fakes.log, "relay"), fails(fakes.log)],
            publisher=fakes,
            engine=fakes,
            broker=fakes,
        )
    assert [str(error) for error in raised.value.exceptions] == ["the loop broke"]
    assert fakes.log == [
        "publisher connected",
        "broker started",
        "relay running",
        "failing",
        "relay cancelled",
        "broker stopped",
        "publisher closed",
        "engine disposed",
    ]


async def test_cancelling_the_worker_closes_the_publisher_and_the_engine():
    fakes = Recorder()
    worker = asyncio.create_task(
        run_service([runs_until_cancelled(fakes.log, "consumer")], publisher=fakes, engine=fakes)
    )
    while "consumer running" not in fakes.log:
        await asyncio.sleep(0)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert fakes.log == [
        "publisher connected",
        "consumer running",
        "consumer cancelled",
        "publisher closed",
        "engine disposed",
    ]


async def test_tasks_that_finish_end_the_worker_cleanly():
    fakes = Recorder()

    async def once() -> None:
        fakes.log.append("done")

    await run_service([once(), once()], publisher=fakes, engine=fakes)
    assert fakes.log == ["publisher connected", "done", "done", "publisher closed", "engine disposed"]


class UnansweredPublisher(Recorder):
    async def connect_with_retry(self) -> None:
        self.log.append("connecting")
        await asyncio.Event().wait()  # RabbitMQ never answers


async def stop_once(fakes: Recorder, when_logged: str) -> None:
    """Start a worker with one task, cancel it once ``when_logged`` was logged; its task must never start."""
    task = runs_until_cancelled(fakes.log, "consumer")
    worker = asyncio.create_task(run_service([task], publisher=fakes, engine=fakes, broker=fakes))
    while when_logged not in fakes.log:
        await asyncio.sleep(0)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert inspect.getcoroutinestate(task) == inspect.CORO_CLOSED  # no "never awaited" warning


async def test_a_worker_stopped_while_connecting_never_starts_its_tasks_and_closes_what_it_opened():
    fakes = UnansweredPublisher()
    await stop_once(fakes, "connecting")
    assert fakes.log == ["connecting", "publisher closed", "engine disposed"]


class UnansweredBroker(Recorder):
    async def start(self) -> None:
        self.log.append("broker starting")
        await asyncio.Event().wait()  # the FastStream broker never connects


async def test_a_worker_stopped_while_its_broker_starts_stops_the_broker_too():
    fakes = UnansweredBroker()
    await stop_once(fakes, "broker starting")
    assert fakes.log == [
        "publisher connected",
        "broker starting",
        "broker stopped",
        "publisher closed",
        "engine disposed",
    ]
