"""Entry of the trainer: ``python -m services.trainer`` (wiring in ``bootstrap.py``)."""

from services.trainer.bootstrap import bootstrap
from services.trainer.settings import TrainerSettings
from shared.worker_main import run_worker


def main() -> None:
    run_worker(TrainerSettings, "trainer", bootstrap)
