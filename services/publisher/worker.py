"""Entry of the publisher: ``python -m services.publisher`` (wiring in ``bootstrap.py``)."""

from services.publisher.bootstrap import bootstrap
from services.publisher.settings import PublisherSettings
from shared.worker_main import run_worker


def main() -> None:
    run_worker(PublisherSettings, "publisher", bootstrap)
