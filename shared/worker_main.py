"""The ``python -m services.<worker>`` entry every queue worker shares: settings, logging, clean stop on
SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute
from uvloop import new_event_loop

from shared.broker import EventPublisher
from shared.health import Details, serve_health
from shared.logs import configure_logging
from shared.settings import CommonSettings, load_settings

SettingsT = TypeVar("SettingsT", bound=CommonSettings)


class Worker(Protocol):
    def run(self) -> Awaitable[None]: ...


def run_worker(settings_class: type[SettingsT], service: str, build: Callable[[SettingsT], Worker]) -> None:
    async def main() -> None:
        settings = load_settings(settings_class)
        configure_logging(settings, service)
        task = asyncio.create_task(build(settings).run())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # libuv's loop: most of a queue worker's own time is socket frames and task switches, and a voting drain
    # runs 1.5x faster on it than on asyncio's (benchmarks/voting_drain.py)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


async def run_service(
    tasks: list[Awaitable[Any]],
    *,
    publisher: EventPublisher,
    engine: AsyncEngine,
    health_port: int = 0,
    health_details: Details = lambda: {},
    ops_routes: Sequence[BaseRoute] = (),
    broker: Any = None,
) -> None:
    """The life of a queue worker: connect the publisher (and start the FastStream ``broker``, if any), run
    ``tasks`` and the health endpoint until one fails or all are cancelled, then close everything in reverse.

    A failing task cancels the others (a TaskGroup), so a worker never limps on with half of its loops. Stopped
    at any point, even while connecting, it closes what it opened."""
    broker_starting = False
    try:
        try:
            await publisher.connect_with_retry()
            if broker is not None:
                broker_starting = True
                await broker.start()
        except BaseException:
            # stopped while connecting (SIGTERM before the broker answered): the tasks never start
            for task in tasks:
                if inspect.iscoroutine(task):
                    task.close()
            raise
        if health_port:
            tasks = [*tasks, serve_health(health_port, publisher, engine, health_details, ops_routes)]
        async with asyncio.TaskGroup() as group:
            for task in tasks:
                group.create_task(task)
    finally:
        if broker_starting:
            await broker.stop()
        await publisher.close()
        await engine.dispose()
