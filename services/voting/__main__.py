from services.voting.settings import VotingSettings
from services.voting.worker import VotingWorker
from shared.worker_main import run_worker

run_worker(VotingSettings, "voting", VotingWorker)
