"""Icon training: warp-loop's recipe against the old backend's, on icons where generalising is hard.

    .venv/bin/python benchmarks/trainer_vs_old.py --minutes 10 --seeds 3   # the issue's table (about 2 hours)
    .venv/bin/python benchmarks/trainer_vs_old.py --minutes 2 --classes 40 --only scratch-ours imprint  # a look

Data: `tools/simulator/hard_icons.py` — 3 training crops per item on some rarity backgrounds; the held-out crop
shows the item on another background with one or two degradations it never had in training (JPEG, blur,
resolution loss, sub-pixel shift, noise, gain/offset; `--data easy`: one of JPEG, blur, resolution loss, the
data of the first table). Every score is top-1 on held-out crops through the client's own path (OpenCV resizes
64 -> 224, BGR, /255). Each case runs in its own process, so peak memory (max RSS) is its own.

Cases: from scratch (old recipe, ours) with --classes items (ours: --seeds seeds, with the published model's
validation through the client path against the best validation any phase reached, at any size); continual
(ours): three successive runs, each fine-tuning the previous model after 25 new items and new crops arrived;
imprint (ours): a model trained on all but 20 items, then a quick imprint release of the 20 from 3 crops each
(seconds taken, top-1 on their held-out crops, the other items' held-out top-1 before and after); peak memory
at 3,000 classes (ours).
Old recipe (WIRE_CONTRACT §4): EfficientNet-B0 at 224 px from the 64 px crops, batch 16, RGB with ImageNet
mean/std, AdamW 3e-4, cosine, focal loss gamma 2, colour jitter / flip / affine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.publisher.hub import LocalHub  # noqa: E402
from services.trainer import release  # noqa: E402
from services.trainer.domain.budget import Deadline  # noqa: E402
from services.trainer.domain.client_path import icon_crop_64, icon_input  # noqa: E402
from services.trainer.domain.data import rendering_variants, variant_split  # noqa: E402
from services.trainer.domain.gold import GoldRule, gold_gate  # noqa: E402
from services.trainer.evaluation import client_predictions  # noqa: E402
from services.trainer.imprint import PROTECT_KNOWN, VIEWS, imprint  # noqa: E402
from services.trainer.models import ICON_HEAD, carry_over, icon_model  # noqa: E402
from services.trainer.settings import TrainerSettings  # noqa: E402
from services.trainer.training import (  # noqa: E402
    ICON_CONFIG,
    Dataset,
    ModelOutcome,
    Phase,
    PublishedModel,
    fit,
    focal_loss,
    gold_counts,
    network,
)
from shared.clock import utc_now  # noqa: E402
from shared.events import format_trained_at  # noqa: E402
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
    # as the service does it: whole rendering variants are kept for model selection and the quality gate
    split = variant_split([str(t) for t in targets.tolist()], rendering_variants(np.stack(crops)))
    result = fit(
        model,
        images,
        targets,
        split.train,
        split.validation,
        ICON_CONFIG,
        Deadline(minutes * 60, CLOCK),
        fine_tuning=previous is not None,
    )
    model.load_state_dict(result.best_state)
    speeds = [r.images_per_second for r in result.history if r.size == 64 and r.phase == 0] or [0.0]
    validation = {
        # what the service publishes as val_acc: the kept model on the validation crops, through the client path
        "val_acc": client_top1(
            model, [crops[i] for i in split.validation], targets[split.validation].tolist()
        ),
        "best_val_any_size": max((r.val_accuracy or 0.0 for r in result.history), default=0.0),
        "curve": [(r.phase, r.size, round(r.elapsed), r.val_accuracy) for r in result.history],
    }
    return model, classes, float(np.median(speeds)), validation


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
    deadline = Deadline(minutes * 60, CLOCK)
    planned_steps = 30 * max(1, len(targets) // 16)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, planned_steps)
    seen, started = 0, CLOCK()
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
    return model, classes, seen / (CLOCK() - started)


# The budget's clock: wall time, or (--clock cpu) the CPU time the case's process used, divided by its threads, so
# that recipes compared on a machine other work is loading get the same compute
CLOCK = time.monotonic


def parse_phases(text: str) -> tuple[Phase, ...]:
    phases = []
    for part in text.split(","):
        size, share, batch, *rest = part.split(":")
        scale, at_least, longest = (rest + ["1", "0", "1"][len(rest) :])[:3]
        phases.append(
            Phase(
                int(size),
                float(share),
                int(batch),
                learning_rate_scale=float(scale),
                at_least_images=int(at_least),
                longest=float(longest),
            )
        )
    return tuple(phases)


def phases_text(phases: tuple[Phase, ...]) -> str:
    return ",".join(
        f"{p.size}:{p.share}:{p.batch_size}"
        + (f":{p.learning_rate_scale}" if p.learning_rate_scale != 1 or p.at_least_images else "")
        + (f":{p.at_least_images}:{p.longest}" if p.at_least_images else "")
        for p in phases
    )


def run_case(args) -> dict:
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = lambda: time.process_time() / args.threads  # noqa: E731
    global ICON_CONFIG
    if args.phases:
        ICON_CONFIG = dataclasses.replace(ICON_CONFIG, phases=args.phases)
    if args.fine_tune_phases:
        ICON_CONFIG = dataclasses.replace(ICON_CONFIG, fine_tune_phases=args.fine_tune_phases)
    if args.learning_rate:
        ICON_CONFIG = dataclasses.replace(ICON_CONFIG, learning_rate=args.learning_rate)
    if args.distil is not None:
        ICON_CONFIG = dataclasses.replace(
            ICON_CONFIG, distil_weight=args.distil[0], distil_temperature=args.distil[1]
        )
    if args.case == "memory":
        train, _ = hard_dataset(range(3000), seed=args.seed)
        items = [item for _, item in train]
        started = time.monotonic()
        _, _, speed, _ = ours(train, items, args.memory_minutes)
        return {
            "case": "memory",
            "recipe": "ours",
            "classes": 3000,
            "images_per_second": speed,
            "seconds": time.monotonic() - started,
        }
    harder = args.data == "harder"
    if args.case in ("scratch-old", "scratch-ours"):
        train, held = hard_dataset(range(args.classes), seed=args.seed, harder=harder)
        items = [item for _, item in train]
        trainer = old_recipe if args.case == "scratch-old" else ours
        model, classes, speed, *validation = trainer(train, items, args.minutes)
        crops, labels = crops_of(held)
        index = {item: i for i, item in enumerate(classes)}
        return {
            "case": "from scratch",
            "recipe": args.case.split("-")[1],
            "classes": args.classes,
            "seed": args.seed,
            "images_per_second": speed,
            "top1": client_top1(model, crops, [index[i] for i in labels]),
        } | (validation[0] if validation else {})
    if args.case == "imprint":
        return imprint_case(args, harder)
    # continual: three successive runs, each with 25 new items and a new crop for old ones
    results, previous = [], None
    first = args.classes - 50
    for step in range(3):
        count = first + 25 * step
        train, held = hard_dataset(range(count), train_per_item=3, seed=args.seed, harder=harder)
        if step:
            extra, _ = hard_dataset(range(first + 25 * (step - 1)), train_per_item=4, seed=args.seed + step)
            train += extra[3::4]
        items = [item for _, item in train]
        crops, labels = crops_of(held)
        cached = args.first_run and step == 0 and Path(args.first_run).exists()
        if (
            cached
        ):  # the first run (from scratch, the same for every fine-tuning recipe) as an earlier case left it
            saved = torch.load(args.first_run, weights_only=True)
            previous = {"state": saved["state"], "classes": saved["classes"]}
            results.append(json.loads(saved["result"]) | {"reused_from": args.first_run})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            continue
        model, classes, speed, validation = ours(train, items, args.minutes, previous)
        index = {item: i for i, item in enumerate(classes)}
        top1 = client_top1(model, crops, [index[i] for i in labels])
        results.append(
            {"run": step + 1, "classes": count, "top1": top1, "images_per_second": speed} | validation
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        previous = {"state": model.state_dict(), "classes": classes}
        if args.first_run and step == 0:
            torch.save(previous | {"result": json.dumps(results[-1])}, args.first_run)
    return {"case": "continual", "recipe": "ours", "runs": results}


def imprint_case(args, harder: bool) -> dict:
    """All but 20 items trained from scratch; then the 20 arrive with 3 crops each (a held-out crop each too)."""
    known = range(args.classes - 20)
    train, held = hard_dataset(range(args.classes), seed=args.seed, harder=harder)
    base_train = [pair for pair in train if pair[1] in known]
    if args.first_run and Path(args.first_run).exists():  # the base model an earlier case trained and left
        saved = torch.load(args.first_run, weights_only=True)
        classes = saved["classes"]
        model = icon_model(len(classes))
        model.load_state_dict(saved["state"])
    else:
        model, classes, _, _ = ours(base_train, [item for _, item in base_train], args.minutes)
        if args.first_run:
            torch.save({"state": model.state_dict(), "classes": classes}, args.first_run)
    crops, labels = crops_of(train)
    data = Dataset(
        [str(i) for i in range(len(crops))],
        [f"{item:05d}" for item in labels],
        torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(),
    )
    published = PublishedModel(model.state_dict(), [f"{item:05d}" for item in classes])
    held_crops, held_labels = crops_of(held)
    new = [k for k, item in enumerate(held_labels) if item not in known]
    old = [k for k, item in enumerate(held_labels) if item in known]

    def answers(net, names: list[str], chosen: list[int]) -> list[bool]:
        index = {name: i for i, name in enumerate(names)}
        truth = [index.get(f"{held_labels[k]:05d}", -1) for k in chosen]
        predicted = client_predictions("icon", net, held_images, chosen)
        return [p == t for p, t in zip(predicted, truth, strict=True)]

    held_images = torch.from_numpy(np.stack(held_crops)).permute(0, 3, 1, 2).contiguous()
    before = answers(model, published.classes, old)
    results = []
    ways = [(views, protect) for views in args.imprint_views for protect in args.imprint_protect]
    for views, protect in ways:  # the same base model, imprinted each way
        started = time.monotonic()
        imprinted = imprint(
            published, data, views=views, protect_known=protect, centred=not args.imprint_uncentred
        )
        seconds = time.monotonic() - started
        after = network("icon", imprinted.classes, imprinted.state)
        old_after = answers(after, imprinted.classes, old)
        results.append(
            {
                "views": views,
                "protect_known": protect,
                "centred": not args.imprint_uncentred,
                "new_classes": len(imprinted.new_classes),
                "imprint_seconds": seconds,
                "release_seconds": release_path_seconds(published, imprinted, data, held_crops, held_labels),
                "new_top1": float(np.mean(answers(after, imprinted.classes, new))),
                "old_top1_before": float(np.mean(before)),
                "old_top1_after": float(np.mean(old_after)),
                # one held-out crop per item: an item is down when its crop was right before and is not now
                "old_items_down": sum(b and not a for b, a in zip(before, old_after, strict=True)),
                "old_items_up": sum(a and not b for b, a in zip(before, old_after, strict=True)),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {"case": "imprint", "recipe": "ours", "classes": args.classes, "imprints": results}


def release_path_seconds(published, imprinted, data, gold_crops, gold_labels) -> dict[str, float | str]:
    """Seconds of what follows the imprinting on the way to a published release, in this process, on the wall
    clock: the trainer's gold gate (both models through the client path on ``gold_crops``: here every item's
    held-out crop, more than a gold set of this data would hold; its decision with the service's defaults under
    "gate"), the release files (weights, ONNX export and
    its check, model card files), and the publisher writing them as one tagged commit (``LocalHub``; a Hugging
    Face Hub upload is not measured)."""
    gold = Dataset(
        [str(i) for i in range(len(gold_crops))],
        [f"{item:05d}" for item in gold_labels],
        torch.from_numpy(np.stack(gold_crops)).permute(0, 3, 1, 2).contiguous(),
    )
    outcome = ModelOutcome(imprinted.state, imprinted.classes, 0.0, None, 0, [], 0.0, len(data.keys))
    seconds: dict[str, float | str] = {}
    started = time.monotonic()
    mine, theirs = gold_counts("icon", outcome, published, gold)
    seconds["gold_gate"] = time.monotonic() - started
    fields = TrainerSettings.model_fields  # the service's defaults
    rule = GoldRule(
        margin=fields["quality_margin"].default,
        class_margin=fields["gold_class_margin"].default,
        min_class_examples=fields["gold_min_class_examples"].default,
        known_margin=fields["gold_known_margin"].default,
    )
    decision = gold_gate(mine, theirs, rule, published.classes)
    seconds["gate"] = ("published: " if decision.publish else "refused: ") + decision.reason
    started = time.monotonic()
    files = release.release_files([], data, outcome, None, format_trained_at(utc_now()))
    seconds["release_files"] = time.monotonic() - started
    with tempfile.TemporaryDirectory() as root:
        started = time.monotonic()
        LocalHub(Path(root), "bench/models").publish("v-bench", files)
        seconds["publish_local_hub"] = time.monotonic() - started
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--memory-minutes", type=float, default=1)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--seeds", type=int, default=1, help="from scratch (ours): seeds --seed, --seed + 1, ..."
    )
    parser.add_argument("--data", choices=["harder", "easy"], default="harder")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (the issue's figures: 2)")
    cases = ["scratch-old", "scratch-ours", "continual", "imprint", "memory"]
    parser.add_argument("--case", choices=cases)
    parser.add_argument("--only", nargs="*", default=cases)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="the budget in wall time, or in the CPU time of the case's process divided by --threads (recipes "
        "compared on a machine other work loads get the same compute; images/s are then per CPU second)",
    )
    parser.add_argument(
        "--imprint-views",
        type=int,
        nargs="+",
        default=[VIEWS],
        help=f"imprint: augmented copies of each crop, one imprint of the same base model per value (the "
        f"service's: {VIEWS})",
    )
    parser.add_argument(
        "--imprint-protect",
        type=float,
        nargs="+",
        default=[PROTECT_KNOWN],
        help=f"imprint: the weight of known crops in a new row's fit, one imprint per value (the service's: "
        f"{PROTECT_KNOWN})",
    )
    parser.add_argument(
        "--imprint-uncentred",
        action="store_true",
        help="imprint: rows along the class's mean embedding, not centred on the mean of all crops at hand",
    )
    parser.add_argument(
        "--first-run",
        default=None,
        help="continual: a file for the first run's model (from scratch, the same whatever the fine-tuning "
        "recipe); imprint: for the base model. Saved there when missing, reused when present, so recipes of "
        "fine-tuning or imprinting start from one model",
    )
    parser.add_argument(
        "--phases",
        type=parse_phases,
        default=None,
        help="ours: another recipe's phases, SIZE:SHARE:BATCH[:LEARNING_RATE_SCALE[:AT_LEAST_IMAGES:LONGEST]],... (the service's: "
        + phases_text(ICON_CONFIG.phases)
        + "; the previous one: 64:0.8:32,224:1:16)",
    )
    parser.add_argument(
        "--fine-tune-phases",
        type=parse_phases,
        default=None,
        help="ours, continual runs 2 and 3: the phases of a run fine-tuning the previous model (the service's: "
        + phases_text(ICON_CONFIG.phases_for(True))
        + "; before it had its own, the from-scratch phases)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help=f"ours, from scratch: the peak learning rate (the service's: {ICON_CONFIG.learning_rate})",
    )
    parser.add_argument(
        "--distil",
        type=float,
        nargs=2,
        metavar=("WEIGHT", "TEMPERATURE"),
        default=None,
        help=f"ours: distillation from the best model so far into the phases at other sizes (the service's: "
        f"{ICON_CONFIG.distil_weight} {ICON_CONFIG.distil_temperature}; 0: off)",
    )
    args = parser.parse_args()
    if args.case:
        result = run_case(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result), flush=True)
        return 0
    rows = []
    runs = [
        (case, seed)
        for case in args.only
        for seed in range(args.seed, args.seed + (args.seeds if case == "scratch-ours" else 1))
    ]
    for case, seed in runs:
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
            str(seed),
            "--memory-minutes",
            str(args.memory_minutes),
            "--data",
            args.data,
            "--threads",
            str(args.threads),
        ]
        command += ["--clock", args.clock, "--imprint-views", *[str(v) for v in args.imprint_views]]
        command += ["--imprint-protect", *[str(v) for v in args.imprint_protect]]
        if args.imprint_uncentred:
            command.append("--imprint-uncentred")
        if args.first_run:
            command += ["--first-run", args.first_run]
        for option, phases in (("--phases", args.phases), ("--fine-tune-phases", args.fine_tune_phases)):
            if phases:
                command += [option, phases_text(phases)]
        if args.learning_rate:
            command += ["--learning-rate", str(args.learning_rate)]
        if args.distil is not None:
            command += ["--distil", *[str(v) for v in args.distil]]
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
        if row["case"] == "imprint":
            for one in row["imprints"]:
                print(
                    f"| imprint of {one['new_classes']} new items ({one['views']} views, known crops {one['protect_known']}{'' if one['centred'] else ', uncentred'}), {one['imprint_seconds']:.0f} s (then gate, files, publish: {sum(v for v in one['release_seconds'].values() if isinstance(v, float)):.0f} s) | ours | {row['classes']} | - | new {100 * one['new_top1']:.1f} %, others {100 * one['old_top1_before']:.1f} -> {100 * one['old_top1_after']:.1f} % ({one['old_items_down']} down) | {row['peak_rss_mb']:.0f} MB |"
                )
        elif row["case"] == "continual":
            for run in row["runs"]:
                print(
                    f"| continual run {run['run']} | ours | {run['classes']} | {run['images_per_second']:.0f} | {100 * run['top1']:.1f} % | {row['peak_rss_mb']:.0f} MB |"
                )
        else:
            top1 = f"{100 * row['top1']:.1f} %" if "top1" in row else "-"
            if "val_acc" in row:
                top1 += f" (val_acc {100 * row['val_acc']:.1f} %, best at any size {100 * row['best_val_any_size']:.1f} %)"
            print(
                f"| {row['case']} | {row['recipe']} | {row['classes']} | {row['images_per_second']:.0f} | {top1} | {row['peak_rss_mb']:.0f} MB |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
