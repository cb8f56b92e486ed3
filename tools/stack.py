"""warp-loop's four services as local processes, for the end-to-end and fault tests, the whole-pipe benchmark
and anything else that needs the real system in a sandbox of its own.

    stack = LocalStack(base_env, workdir)          # base_env: WARP_DATABASE_URL, WARP_BROKER_URL, namespace...
    ingest = stack.start("ingest")                 # python -m services.ingest.serve on a free port
    voting = [stack.start("voting") for _ in range(3)]
    await stack.wait_ready(ingest, *voting)        # ingest /ready, workers /health answer 200
    voting[0].kill()                               # SIGKILL, as a crash would
    stack.restart(voting[0])                       # same service, same port, same settings
    stack.stop_all()                               # SIGTERM, then SIGKILL after a grace period

Every process runs the production entry point (``python -m services.<name>``, ``services.ingest.serve``) with
settings given only through ``WARP_*`` environment variables, exactly as compose and ``scripts/run.sh`` run
them. Each gets its own free HTTP port (ingest's API, or a worker's /health), its own Prometheus multiprocess
directory and its own log file in ``workdir``, so a failed test can show what each process said.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {
    "ingest": "services.ingest.serve",
    "voting": "services.voting",
    "trainer": "services.trainer",
    "publisher": "services.publisher",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServiceProcess:
    service: str
    index: int
    port: int
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def probe_path(self) -> str:
        return "/ready" if self.service == "ingest" else "/health"

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when a machine or the OOM killer takes the process."""
        if self.popen is None:
            return
        if self.service == "ingest":  # the launcher's worker processes die with it, as in a crash of the host
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        else:
            self.popen.kill()
        self.exit_codes.append(self.popen.wait())

    def stop(self, grace: float = 30) -> None:
        """SIGTERM, as compose and honcho stop a service; SIGKILL after ``grace`` seconds."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.exit_codes.append(self.popen.wait(timeout=grace))
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""


class LocalStack:
    """Starts and stops service processes sharing one environment (database, broker, namespace, Hub)."""

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        self.env = dict(env)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.processes: list[ServiceProcess] = []

    def start(self, service: str, **settings: str) -> ServiceProcess:
        """Start one more process of ``service``; ``settings`` are extra WARP_* variables for it alone."""
        index = sum(1 for p in self.processes if p.service == service)
        port = free_port()
        name = f"{service}-{index}"
        env = {**self.env, **settings}
        if service == "ingest":
            env |= {"WARP_HOST": "127.0.0.1", "WARP_PORT": str(port)}
            env.setdefault("WARP_HTTP_WORKERS", "1")
        else:
            env["WARP_HEALTH_PORT"] = str(port)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.workdir / f"metrics-{name}")
        process = ServiceProcess(service, index, port, env, self.workdir / f"{name}.log")
        self.processes.append(process)
        self._spawn(process)
        return process

    def _spawn(self, process: ServiceProcess) -> None:
        metrics = Path(process.env["PROMETHEUS_MULTIPROC_DIR"])
        metrics.mkdir(exist_ok=True)
        for stale in metrics.glob("*.db"):  # a killed predecessor's figures
            stale.unlink()
        log = process.log_path.open("ab")
        process.popen = subprocess.Popen(
            [sys.executable, "-m", ENTRY_POINTS[process.service]],
            cwd=ROOT,
            env={**os.environ, **process.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches ingest's worker processes too
        )
        log.close()

    def restart(self, process: ServiceProcess) -> ServiceProcess:
        """Start ``process`` again (after a kill or stop) with the same settings and port."""
        if process.alive:
            raise RuntimeError(f"{process.name} is still running")
        self._spawn(process)
        return process

    def of(self, service: str) -> list[ServiceProcess]:
        return [p for p in self.processes if p.service == service]

    async def wait_ready(self, *processes: ServiceProcess, timeout: float = 90) -> None:
        """Until every given process (default: all) answers its readiness probe with 200."""
        pending = list(processes or self.processes)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=3) as client:
            while pending:
                for process in list(pending):
                    if not process.alive:
                        raise RuntimeError(f"{process.name} exited:\n{process.log()}")
                    with contextlib.suppress(httpx.HTTPError):
                        response = await client.get(process.url + process.probe_path)
                        if response.status_code == 200:
                            pending.remove(process)
                if pending and time.monotonic() > deadline:
                    names = ", ".join(p.name for p in pending)
                    raise TimeoutError(f"not ready after {timeout}s: {names}\n{pending[0].log()}")
                if pending:
                    await asyncio.sleep(0.3)

    def stop_all(self, grace: float = 30) -> None:
        for process in self.processes:
            if process.alive:
                process.popen.terminate()
        for process in self.processes:
            process.stop(grace)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()}" for p in self.processes)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
