"""``python -m services.ingest.serve``: the production entry of ingest.

Starts ``WARP_HTTP_WORKERS`` uvicorn processes, each with its own listening socket bound with SO_REUSEPORT, so
the kernel spreads connections across them by a hash of the addresses. (``uvicorn --workers`` shares one socket,
and which worker accepts a connection is a race: measured with the 32 keep-alive connections of
``benchmarks/ingest_load.py``, splits from 35/1 to 18/19 over four runs, the worker holding most of them the
bottleneck. The hash split them 13/24 in the one run counted: not even either, but a binomial spread, rarely
lopsided.) A closed worker socket refuses new connections at once, so shutdown does not leave clients
waiting on a listening port. Workers that die are restarted; SIGTERM/SIGINT stop them gracefully.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess

import uvicorn

from services.ingest.settings import IngestSettings
from shared.logs import configure_logging
from shared.processes import exit_with_parent
from shared.settings import load_settings

log = logging.getLogger("services.ingest.serve")
GRACEFUL_SECONDS = 20


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(host: str, port: int, parent: int) -> None:
    exit_with_parent(
        parent
    )  # a worker whose launcher was killed shuts down instead of serving on, unsupervised
    config = uvicorn.Config(
        "services.ingest.app:create_app",
        factory=True,
        loop="uvloop",
        http="httptools",
        proxy_headers=False,  # client addresses are resolved by ingest itself, for trusted proxies only
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        log_config=None,
    )
    uvicorn.Server(config).run(sockets=[_listening_socket(host, port)])


def main() -> int:
    settings = load_settings(IngestSettings)
    configure_logging(settings, "ingest")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="warp-ingest-metrics-"))
    if settings.origin_secret is None:
        # one random key for all workers, so a client's requests count under one origin whichever worker
        # takes them (still a new key, so new per-origin counts, on every start)
        log.warning(
            "WARP_ORIGIN_SECRET is unset: per-origin quotas restart with ingest; set it in production"
        )
        os.environ["WARP_ORIGIN_SECRET"] = secrets.token_hex(32)
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(
            target=_serve, args=(settings.host, settings.port, os.getpid()), daemon=False
        )
        process.start()
        return process

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _listening_socket(settings.host, settings.port).close()  # fail fast, in the parent, if the port is taken
    workers = [start() for _ in range(settings.http_workers)]
    log.info("ingest listening on http://%s:%d with %d workers", settings.host, settings.port, len(workers))
    while not stopping:
        time.sleep(0.5)
        for index, process in enumerate(workers):
            if not process.is_alive() and not stopping:
                log.error("ingest worker %s exited with %s; restarting it", process.pid, process.exitcode)
                workers[index] = start()
    for process in workers:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACEFUL_SECONDS + 5
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
