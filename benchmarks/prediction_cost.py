"""CPU cost of the trainer's predictor: the published icon model (EfficientNet-B0 at 224 px) and screen model
(MobileNetV3-Small) through the client path on generated crops, as ``handlers.Predictor`` runs them.

    .venv/bin/python benchmarks/prediction_cost.py                 # 200 crops, 1 and 2 torch threads
    .venv/bin/python benchmarks/prediction_cost.py --crops 400 --classes 1000

The weights are random (the cost does not depend on them); the class count sets the head's size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.trainer.training import PublishedModel, network, predict_images  # noqa: E402
from tools.simulator.workload import draw_icon  # noqa: E402


def measure(kind: str, classes: int, images: list[bytes], threads: int) -> float:
    torch.set_num_threads(threads)
    labels = [f"Item {i}" for i in range(classes)]
    model = PublishedModel(network(kind, labels).state_dict(), labels)
    predict_images(kind, model, images[:4])  # warm-up
    began = time.perf_counter()
    predict_images(kind, model, images)
    return len(images) / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crops", type=int, default=200)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    images = [draw_icon(i % 50, i // 50) for i in range(args.crops)]
    for kind in ("icon", "screen"):
        for threads in args.threads:
            rate = measure(kind, args.classes, images, threads)
            print(
                f"{kind} model, {threads} torch thread(s): {rate:.1f} items/s ({1000 / rate:.1f} ms an item)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
