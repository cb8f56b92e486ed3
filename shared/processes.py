"""Child processes that must not outlive their parent.

A process started with ``multiprocessing`` keeps running when its parent is killed with SIGKILL (or by the OOM
killer): nothing tells it. Seen here: ingest's HTTP workers kept serving on their port, and voting's consensus
workers stayed idle in memory, after the system tests killed their parents. ``exit_with_parent`` has the
child watch its parent and stop itself when it is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)


def exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """From a child process: SIGTERM this process once ``parent`` (the pid the parent passed down, so a parent
    that died before this call is noticed too) is no longer its parent. The default SIGTERM action ends the
    process; a server that handles SIGTERM (uvicorn) shuts down gracefully."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        log.warning("parent process %d is gone; process %d stopping", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
