from services.trainer.settings import TrainerSettings
from services.trainer.worker import TrainerWorker
from shared.worker_main import run_worker

run_worker(TrainerSettings, "trainer", TrainerWorker)
