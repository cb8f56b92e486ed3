"""What a training epoch and a validation cost at each of the icon recipe's sizes on this machine, in CPU seconds:
the training step (augmentation included) per crop, and one BatchNorm recalibration plus one validation, as
``training.fit`` runs them. How fast a machine trains decides how far a timed run gets (services/trainer/README.md,
"Validation within the budget").

    .venv/bin/python benchmarks/training_costs.py                      # 200 items, 400 training crops, 1 thread
    .venv/bin/python benchmarks/training_costs.py --threads 2 --classes 3000

Random crops and weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.trainer.models import icon_model  # noqa: E402
from services.trainer.training import (  # noqa: E402
    ICON_CONFIG,
    augment,
    evaluate,
    focal_loss,
    network_input,
    recalibrate_batch_norm,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--train-crops", type=int, default=400, help="an epoch's crops (200 items: 400)")
    parser.add_argument("--validation-crops", type=int, default=200, help="one per item")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=6, help="timed training batches per size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = icon_model(args.classes).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    crops = (torch.rand(max(args.train_crops, args.validation_crops), 3, 64, 64) * 255).to(torch.uint8)
    labels = torch.randint(0, args.classes, (len(crops),))
    config = ICON_CONFIG
    print(f"{args.threads} thread(s), {args.classes} classes; CPU seconds")
    print(
        "| size | training, images/s | epoch of training | recalibration + validation | share of the epoch |"
    )
    print("| --- | --- | --- | --- | --- |")
    for phase in config.phases:
        seconds = 0.0
        for step in range(args.batches + 1):  # the first batch warms up
            batch = torch.randint(0, args.train_crops, (phase.batch_size,), generator=generator)
            began = time.process_time()
            model.train()
            x = network_input(augment(crops[batch].float() / 255.0, generator), phase.size, None)
            loss = focal_loss(model(x), labels[batch], config.focal_gamma, None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:
                seconds += time.process_time() - began
        per_image = seconds / (args.batches * phase.batch_size)
        began = time.process_time()
        recalibrate_batch_norm(model, crops[: args.train_crops], phase.size, config)
        evaluate(model, crops[: args.validation_crops], labels[: args.validation_crops], phase.size, config)
        validation = time.process_time() - began
        epoch = per_image * args.train_crops
        print(
            f"| {phase.size} px | {1 / per_image:.1f} | {epoch:.1f} s | {validation:.1f} s | "
            f"{validation / epoch:.0%} |"
        )


if __name__ == "__main__":
    main()
