"""Training rules as pure functions and small models: seconds, no broker."""

import time

import numpy as np
import torch

from services.trainer.domain.budget import Deadline, quality_gate
from services.trainer.domain.data import label_map, select_screens, stratified_split
from services.trainer.models import ICON_HEAD, carry_over, icon_model, load_initial_weights
from services.trainer.training import Phase, TrainConfig, fit


def test_label_maps_are_alphabetical():
    assert label_map(["Torpedo", "Phaser", "Torpedo", "Mine"]) == {"0": "Mine", "1": "Phaser", "2": "Torpedo"}


def test_the_split_is_stratified_seeded_and_keeps_one_per_class_for_validation():
    labels = ["a"] * 5 + ["b"] * 2 + ["c"]
    split = stratified_split(labels, seed=3)
    assert split == stratified_split(labels, seed=3)
    assert {labels[i] for i in split.validation} == {"a", "b"}
    assert "c" in {labels[i] for i in split.train}
    assert sorted(split.train + split.validation) == list(range(len(labels)))


def test_screen_classes_with_fewer_than_five_images_are_dropped_and_big_ones_capped():
    items = (
        {f"a{i:03d}": "SPACE_EQ" for i in range(200)}
        | {f"b{i}": "TRAITS" for i in range(12)}
        | {f"c{i}": "BOFFS" for i in range(4)}
    )
    selection = select_screens(items)
    assert selection.trainable and selection.dropped_classes == ["BOFFS"]
    counts = {t: sum(1 for v in selection.items.values() if v == t) for t in ("SPACE_EQ", "TRAITS")}
    assert counts == {"SPACE_EQ": 150, "TRAITS": 12}
    assert not select_screens({f"x{i}": "A" for i in range(6)}).trainable  # fewer than 7 images
    assert not select_screens({f"x{i}": "A" for i in range(9)}).trainable  # a single class


def test_the_quality_gate_blocks_a_worse_or_untrained_model():
    assert quality_gate(0.8, 0.7, margin=0.0, trained_epochs=3, classes=10).publish
    assert quality_gate(0.69, 0.7, margin=0.02, trained_epochs=3, classes=10).publish
    worse = quality_gate(0.6, 0.7, margin=0.02, trained_epochs=3, classes=10)
    assert not worse.publish and "below the published model's 0.700" in worse.reason
    assert not quality_gate(0.9, None, margin=0, trained_epochs=0, classes=10).publish
    assert not quality_gate(0.1, None, margin=0, trained_epochs=5, classes=10).publish  # chance level
    assert quality_gate(0.5, None, margin=0, trained_epochs=5, classes=10).reason == "first model"


def test_fine_tuning_keeps_the_backbone_and_the_head_rows_of_classes_that_still_exist():
    old = icon_model(3)
    with torch.no_grad():
        old.classifier[1].weight.copy_(torch.arange(3).float()[:, None].expand(3, 1280))
    new = icon_model(4)
    carried = carry_over(
        new, old.state_dict(), ["Mine", "Phaser", "Torpedo"], ["Beam", "Mine", "Torpedo", "Zap"], ICON_HEAD
    )
    assert carried == {"backbone_tensors": len(old.state_dict()) - 2, "head_rows": 2, "new_classes": 2}
    weight = new.classifier[1].weight
    assert torch.equal(weight[1], torch.full((1280,), 0.0)) and torch.equal(
        weight[2], torch.full((1280,), 2.0)
    )
    assert torch.equal(new.features[0][0].weight, old.features[0][0].weight)


def test_initial_weights_load_from_a_local_file(tmp_path):
    donor = icon_model(5)
    torch.save(donor.state_dict(), tmp_path / "weights.pt")
    model = icon_model(8)
    loaded = load_initial_weights(model, tmp_path / "weights.pt", ICON_HEAD)
    assert loaded == len(donor.state_dict()) - 2
    assert torch.equal(model.features[1][0].block[0][0].weight, donor.features[1][0].block[0][0].weight)


def test_training_stops_within_seconds_of_the_deadline_and_keeps_the_best_state():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (24, 3, 64, 64), dtype=np.uint8))
    labels = torch.arange(24) % 4
    config = TrainConfig(phases=(Phase(64, 0.5, 8), Phase(224, 1.0, 8)))
    started = time.monotonic()
    result = fit(icon_model(4), images, labels, list(range(16)), list(range(16, 24)), config, Deadline(4.0))
    assert time.monotonic() - started < 4.0 + 3.0  # one batch plus one evaluation past the deadline at most
    assert result.epochs >= 1 and result.best_state is not None


def test_a_deadline_already_past_trains_nothing():
    images = torch.zeros(8, 3, 64, 64, dtype=torch.uint8)
    result = fit(
        icon_model(2), images, torch.arange(8) % 2, list(range(6)), [6, 7], TrainConfig(), Deadline(0)
    )
    assert result.epochs == 0
    assert not quality_gate(
        result.best_accuracy, None, margin=0, trained_epochs=result.epochs, classes=2
    ).publish
