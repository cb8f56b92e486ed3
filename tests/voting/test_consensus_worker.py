"""The consensus worker process does not outlive a voting process killed with SIGKILL."""

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os, time
from services.voting.bootstrap import consensus_pool
print(consensus_pool().submit(os.getpid).result(), flush=True)
time.sleep(120)
"""


@pytest.mark.integration  # spawns processes
def test_the_consensus_worker_stops_when_voting_is_killed():
    voting = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        worker = psutil.Process(int(voting.stdout.readline()))
        assert worker.ppid() == voting.pid
    finally:
        voting.kill()
        voting.wait()
    _, alive = psutil.wait_procs([worker], timeout=15)
    assert not alive, "the consensus worker outlived its voting process"
