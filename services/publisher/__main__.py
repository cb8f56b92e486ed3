from services.publisher.settings import PublisherSettings
from services.publisher.worker import PublisherWorker
from shared.worker_main import run_worker

run_worker(PublisherSettings, "publisher", PublisherWorker)
