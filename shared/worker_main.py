"""The ``python -m services.<worker>`` entry every queue worker shares: settings, logging, clean stop on
SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

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

    asyncio.run(main())
