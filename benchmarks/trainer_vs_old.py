"""Icon training: warp-loop's recipe against the old backend's, on icons where generalising is hard.

    .venv/bin/python benchmarks/trainer_vs_old.py --minutes 10            # the full table (about 55 minutes)
    .venv/bin/python benchmarks/trainer_vs_old.py --minutes 1 --classes 40   # a quick look

Data: `tools/simulator/hard_icons.py` — 3 training crops per item on some rarity backgrounds; the held-out crop
shows the item on another background with a degradation (JPEG, blur, resolution loss) it never had in training.
Every score is top-1 on held-out crops through the client's own path (OpenCV resizes 64 -> 224, BGR, /255).
Each case runs in its own process, so peak memory (max RSS) is its own.

Cases: from scratch (old recipe, ours) with --classes items; continual (ours): three successive runs, each
fine-tuning the previous model after 25 new items and new crops arrived; peak memory at 3,000 classes (ours).
Old recipe (WIRE_CONTRACT §4): EfficientNet-B0 at 224 px from the 64 px crops, batch 16, RGB with ImageNet
mean/std, AdamW 3e-4, cosine, focal loss gamma 2, colour jitter / flip / affine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.trainer.domain.budget import Deadline  # noqa: E402
from services.trainer.domain.client_path import icon_crop_64, icon_input  # noqa: E402
from services.trainer.domain.data import stratified_split  # noqa: E402
from services.trainer.models import ICON_HEAD, carry_over, icon_model  # noqa: E402
from services.trainer.training import TrainConfig, fit, focal_loss  # noqa: E402
from shared.torchvision_compat import import_torchvision  # noqa: E402
from tools.simulator.hard_icons import hard_dataset  # noqa: E402

tv = import_torchvision()
from torchvision.transforms import v2  # noqa: E402


@torch.no_grad()
def client_top1(model, crops_64: list[np.ndarray], labels: list[int]) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(crops_64), 32):
        batch = torch.from_numpy(np.stack([icon_input(c) for c in crops_64[start : start + 32]]))
        correct += int((model(batch).argmax(1) == torch.tensor(labels[start : start + 32])).sum())
    return correct / len(labels)


def crops_of(pairs) -> tuple[list[np.ndarray], list[int]]:
    return [icon_crop_64(png) for png, _ in pairs], [item for _, item in pairs]


def ours(train_pairs, items: list[int], minutes: float, previous=None):
    crops, labels = crops_of(train_pairs)
    classes = sorted(set(items))
    index = {item: i for i, item in enumerate(classes)}
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor([index[item] for item in labels])
    model = icon_model(len(classes))
    if previous is not None:
        carry_over(model, previous["state"], previous["classes"], classes, ICON_HEAD)
    # as the service does it: one crop per class is kept for model selection and the quality gate
    split = stratified_split([str(t) for t in targets.tolist()], seed=0)
    result = fit(
        model,
        images,
        targets,
        split.train,
        split.validation,
        TrainConfig(),
        Deadline(minutes * 60),
        fine_tuning=previous is not None,
    )
    model.load_state_dict(result.best_state)
    speeds = [r.images_per_second for r in result.history if r.size == 64] or [0.0]
    return model, classes, float(np.median(speeds))


def old_recipe(train_pairs, items: list[int], minutes: float):
    classes = sorted(set(items))
    index = {item: i for i, item in enumerate(classes)}
    rgb = [cv2.cvtColor(icon_crop_64(png), cv2.COLOR_BGR2RGB) for png, _ in train_pairs]
    images = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor([index[item] for _, item in train_pairs])
    augment = v2.Compose(
        [
            v2.ColorJitter(0.3, 0.3, 0.3),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        ]
    )
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    model = tv.models.efficientnet_b0(weights=None, num_classes=len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    deadline = Deadline(minutes * 60)
    planned_steps = 30 * max(1, len(targets) // 16)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, planned_steps)
    seen, started = 0, time.monotonic()
    while not deadline.expired:
        order = torch.randperm(len(targets))
        for start in range(0, len(order), 16):
            if deadline.expired:
                break
            batch = order[start : start + 16]
            if len(batch) < 2:
                continue
            x = torch.stack([augment(images[i]) for i in batch]).float() / 255
            x = (F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False) - mean) / std
            model.train()
            loss = focal_loss(model(x), targets[batch], 2.0, None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler.last_epoch < planned_steps - 1:
                scheduler.step()
            seen += len(batch)
    return model, classes, seen / (time.monotonic() - started)


def run_case(args) -> dict:
    torch.set_num_threads(2)
    if args.case == "memory":
        train, _ = hard_dataset(range(3000), seed=args.seed)
        items = [item for _, item in train]
        started = time.monotonic()
        _, _, speed = ours(train, items, args.memory_minutes)
        return {
            "case": "memory",
            "recipe": "ours",
            "classes": 3000,
            "images_per_second": speed,
            "seconds": time.monotonic() - started,
        }
    if args.case in ("scratch-old", "scratch-ours"):
        train, held = hard_dataset(range(args.classes), seed=args.seed)
        items = [item for _, item in train]
        trainer = old_recipe if args.case == "scratch-old" else ours
        model, classes, speed = trainer(train, items, args.minutes)
        crops, labels = crops_of(held)
        index = {item: i for i, item in enumerate(classes)}
        return {
            "case": "from scratch",
            "recipe": args.case.split("-")[1],
            "classes": args.classes,
            "images_per_second": speed,
            "top1": client_top1(model, crops, [index[i] for i in labels]),
        }
    # continual: three successive runs, each with 25 new items and a new crop for old ones
    results, previous = [], None
    first = args.classes - 50
    for step in range(3):
        count = first + 25 * step
        train, held = hard_dataset(range(count), train_per_item=3, seed=args.seed)
        if step:
            extra, _ = hard_dataset(range(first + 25 * (step - 1)), train_per_item=4, seed=args.seed + step)
            train += extra[3::4]
        items = [item for _, item in train]
        model, classes, speed = ours(train, items, args.minutes, previous)
        crops, labels = crops_of(held)
        index = {item: i for i, item in enumerate(classes)}
        top1 = client_top1(model, crops, [index[i] for i in labels])
        results.append({"run": step + 1, "classes": count, "top1": top1, "images_per_second": speed})
        previous = {"state": model.state_dict(), "classes": classes}
    return {"case": "continual", "recipe": "ours", "runs": results}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--memory-minutes", type=float, default=1)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--case", choices=["scratch-old", "scratch-ours", "continual", "memory"])
    parser.add_argument("--only", nargs="*", default=["scratch-old", "scratch-ours", "continual", "memory"])
    args = parser.parse_args()
    if args.case:
        result = run_case(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result), flush=True)
        return 0
    rows = []
    for case in args.only:
        command = [
            sys.executable,
            __file__,
            "--case",
            case,
            "--minutes",
            str(args.minutes),
            "--classes",
            str(args.classes),
            "--seed",
            str(args.seed),
            "--memory-minutes",
            str(args.memory_minutes),
        ]
        output = (
            subprocess.run(command, capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append(json.loads(output))
        print(output, flush=True)
    print("\n| case | recipe | classes | images/s | held-out top-1 (client path) | peak memory |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if row["case"] == "continual":
            for run in row["runs"]:
                print(
                    f"| continual run {run['run']} | ours | {run['classes']} | {run['images_per_second']:.0f} | {100 * run['top1']:.1f} % | {row['peak_rss_mb']:.0f} MB |"
                )
        else:
            top1 = f"{100 * row['top1']:.1f} %" if "top1" in row else "-"
            print(
                f"| {row['case']} | {row['recipe']} | {row['classes']} | {row['images_per_second']:.0f} | {top1} | {row['peak_rss_mb']:.0f} MB |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
