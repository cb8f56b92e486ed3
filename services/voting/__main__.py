import asyncio
import contextlib
import signal
import sys

from services.voting.settings import VotingSettings
from services.voting.worker import VotingWorker
from shared.logs import configure_logging
from shared.settings import load_settings


async def main() -> None:
    settings = load_settings(VotingSettings)
    configure_logging(settings, "voting")
    task = asyncio.create_task(VotingWorker(settings).run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
