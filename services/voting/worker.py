"""Entry of the voting worker: ``python -m services.voting``."""

from services.voting.bootstrap import bootstrap
from services.voting.settings import VotingSettings
from shared.worker_main import run_worker


def main() -> None:
    run_worker(VotingSettings, "voting", bootstrap)
