"""Training rules as pure functions and small models: no broker, no database, no wall clock."""

import numpy as np
import pytest
import torch
from torch import nn

from services.trainer import training
from services.trainer.domain.budget import Deadline, quality_gate
from services.trainer.domain.data import select_screens, stratified_split
from services.trainer.evaluation import score
from services.trainer.models import ICON_HEAD, carry_over, icon_model, load_initial_weights
from services.trainer.training import (
    Dataset,
    Phase,
    TrainConfig,
    TrainResult,
    distillation_loss,
    evaluate,
    fit,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: a thread pool only adds contention (seconds instead of milliseconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(n_classes: int) -> nn.Module:
    """A few hundred weights with a BatchNorm layer, like the real networks: fit() trains it in milliseconds."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, n_classes),
    )


def test_class_indices_are_alphabetical():
    data = Dataset(
        ["k1", "k2", "k3", "k4"], ["Torpedo", "Phaser", "Torpedo", "Mine"], torch.zeros(4, 3, 2, 2)
    )
    assert data.classes == ["Mine", "Phaser", "Torpedo"]
    assert data.targets().tolist() == [2, 1, 2, 0]


def test_the_split_is_stratified_seeded_and_keeps_one_per_class_for_validation():
    labels = ["a"] * 5 + ["b"] * 2 + ["c"]
    split = stratified_split(labels, seed=3)
    assert split == stratified_split(labels, seed=3)
    assert {labels[i] for i in split.validation} == {"a", "b"}
    assert "c" in {labels[i] for i in split.train}
    assert sorted(split.train + split.validation) == list(range(len(labels)))


def test_screen_classes_with_fewer_than_five_images_are_dropped_and_the_rest_kept_as_the_snapshot_has_them():
    items = (
        {f"a{i:03d}": "SPACE_EQ" for i in range(150)}  # voting's snapshot caps a type at 150
        | {f"b{i}": "TRAITS" for i in range(12)}
        | {f"c{i}": "BOFFS" for i in range(4)}
    )
    selection = select_screens(items)
    assert selection.trainable and selection.dropped_classes == ["BOFFS"]
    assert selection.items == {sha: t for sha, t in items.items() if t != "BOFFS"}
    assert selection.reason == "162 screenshots in 2 types"
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


class EpochsOfThreeSeconds:
    """The deadline's clock, moved by 3 s at the end of every epoch (fit reports each one)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_epoch(self, report) -> None:
        self.now += 3.0


def random_crops(n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 255, (n, 3, 32, 32), dtype=np.uint8))


def test_training_stops_at_the_deadline():
    clock = EpochsOfThreeSeconds()
    config = TrainConfig(phases=(Phase(32, 0.5, 8), Phase(32, 1.0, 8)), min_epoch_images=16)
    result = fit(
        tiny_model(4),
        random_crops(24),
        torch.arange(24) % 4,
        list(range(16)),
        list(range(16, 24)),
        config,
        Deadline(5.0, clock=clock),
        on_epoch=clock.on_epoch,
    )
    # the first phase has 2.5 s: one epoch; the second the 2 s left: one more, after which the run's time is up
    assert [(r.phase, r.epoch) for r in result.history] == [(0, 1), (1, 1)] and result.epochs == 2


def test_a_run_fine_tuning_a_published_model_trains_at_its_own_phases():
    scratch, tuning = (Phase(16, 0.5, 8), Phase(32, 1.0, 8)), (Phase(32, 1.0, 8),)
    config = TrainConfig(phases=scratch, fine_tune_phases=tuning, min_epoch_images=16)
    assert config.phases_for(False) == scratch and config.phases_for(True) == tuning
    assert TrainConfig(phases=scratch).phases_for(True) == scratch  # none of its own: the same phases

    def sizes(fine_tuning: bool) -> list[tuple[int, int]]:
        clock = EpochsOfThreeSeconds()
        result = fit(
            tiny_model(4),
            random_crops(24),
            torch.arange(24) % 4,
            list(range(16)),
            list(range(16, 24)),
            config,
            Deadline(5.0, clock=clock),
            fine_tuning=fine_tuning,
            on_epoch=clock.on_epoch,
        )
        return [(r.phase, r.size) for r in result.history]

    assert sizes(False) == [(0, 16), (1, 32)] and sizes(True) == [(0, 32), (0, 32)]


def test_distillation_loss_is_zero_when_the_student_says_what_the_teacher_says():
    teacher = torch.tensor([[4.0, 1.0, -2.0], [0.0, 3.0, 0.5]])
    assert float(distillation_loss(teacher.clone(), teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    near, far = teacher + torch.tensor([0.5, 0.0, 0.0]), teacher.flip(1)
    assert 0 < float(distillation_loss(near, teacher, 2.0)) < float(distillation_loss(far, teacher, 2.0))
    # scaled by the temperature's square: softer targets do not shrink the gradient to nothing
    assert float(distillation_loss(far, teacher, 4.0)) > 0.5 * float(distillation_loss(far, teacher, 1.0))


def test_the_best_model_of_a_smaller_size_teaches_the_next_phase():
    def run(distil_weight: float) -> tuple[list[tuple[int, int, float]], list[dict]]:
        clock = EpochsOfThreeSeconds()
        bundles: list[dict] = []
        config = TrainConfig(
            phases=(Phase(16, 0.5, 8), Phase(32, 1.0, 8)), min_epoch_images=16, distil_weight=distil_weight
        )
        torch.manual_seed(0)  # the same initial weights in both runs
        result = fit(
            tiny_model(4),
            random_crops(24),
            torch.arange(24) % 4,
            list(range(16)),
            list(range(16, 24)),
            config,
            Deadline(6.0, clock=clock),
            on_epoch=clock.on_epoch,
            on_checkpoint=bundles.append,
            checkpoint_seconds=0.0,
        )
        return [(r.phase, r.size, r.train_loss) for r in result.history], bundles

    plain, plain_bundles = run(0.0)
    taught, bundles = run(1.0)
    assert [r[:2] for r in taught] == [r[:2] for r in plain] == [(0, 16), (1, 32)]
    assert taught[0] == plain[0]  # the first phase has no teacher
    assert taught[1][2] != plain[1][2]  # the second learns from the first phase's best as well as the labels
    assert bundles[0]["teacher"] is None and plain_bundles[1]["teacher"] is None
    teacher = bundles[1]["teacher"]  # carried in the checkpoint, so a resumed phase keeps its teacher
    assert teacher["size"] == 16 and set(teacher["state"]) == set(tiny_model(4).state_dict())


def test_the_best_state_is_kept_not_the_last():
    clock = EpochsOfThreeSeconds()
    model = tiny_model(5)  # the labels use classes 0-3; class 4 is never right

    def then_break_the_model(report) -> None:
        clock.on_epoch(report)
        if report.epoch == 1:
            with torch.no_grad():
                model[5].bias[4] = 100.0  # from now on it says class 4 whatever it sees

    images, labels = random_crops(24), torch.arange(24) % 4
    config = TrainConfig(phases=(Phase(32, 1.0, 8),), min_epoch_images=16)
    result = fit(
        model,
        images,
        labels,
        list(range(16)),
        list(range(16, 24)),
        config,
        Deadline(5.0, clock=clock),
        on_epoch=then_break_the_model,
    )
    assert [r.epoch for r in result.history] == [1, 2] and result.history[1].val_accuracy == 0.0
    assert result.best_state["5.bias"][4] < 50  # the first epoch's state, not the broken last one
    kept = tiny_model(5)
    kept.load_state_dict(result.best_state)
    first = result.history[0].val_accuracy
    assert evaluate(kept, images[16:], labels[16:], 32, config)[0] == result.best_accuracy == first


class ComputeClock:
    """The deadline's clock, moved by the model's work: 1 s per training batch, 3 s per batch of BatchNorm
    recalibration or validation (the model in evaluation mode)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def hook(self, module, inputs, output) -> None:
        self.now += 1.0 if module.training else 3.0


def fit_on_compute_clock(clock: ComputeClock, seconds: float, **config) -> TrainResult:
    """One phase at 32 px: an epoch is two batches of 8 (16 crops, at a quarter of 64 px's cost: 4 count as 16),
    2 s; a validation 6 s (one batch to recalibrate, one to validate)."""
    model = tiny_model(4)
    model.register_forward_hook(clock.hook)
    return fit(
        model,
        random_crops(24),
        torch.arange(24) % 4,
        list(range(16)),
        list(range(16, 24)),
        TrainConfig(phases=(Phase(32, 1.0, 8),), min_epoch_images=4, **config),
        Deadline(seconds, clock=clock),
    )


def test_validation_is_skipped_until_the_training_since_is_worth_it_and_the_last_epoch_is_validated_in_time():
    clock = ComputeClock()
    result = fit_on_compute_clock(clock, 40.0, evaluation_share=0.5)
    validated = [r.epoch for r in result.history if r.val_accuracy is not None]
    # the first (its cost unknown), then once 12 s of training make 6 s worth it, then the last: training
    # stopped 6 s before the deadline so that its validation ends by it
    assert validated == [1, 7, 11] and result.epochs == 11 and clock.now == 40.0
    assert result.best_accuracy == max(r.val_accuracy for r in result.history if r.val_accuracy is not None)
    # the same run validating after every epoch: fewer epochs in the same time
    result = fit_on_compute_clock(ComputeClock(), 40.0, evaluation_share=100.0)
    assert all(r.val_accuracy is not None for r in result.history) and result.epochs == 5


def test_patience_counts_epochs_whether_validated_or_not(monkeypatch):
    clock = ComputeClock()

    def never_better(*args, **kwargs) -> tuple[float, float]:
        clock.now += 3.0  # as long as a batch of validation
        return 0.5, 1.0

    monkeypatch.setattr(training, "evaluate", never_better)
    # a validation (6 s) is worth three epochs' training (2 s each) at a share of 1: every third is validated
    result = fit_on_compute_clock(clock, 1000.0, evaluation_share=1.0, patience=5, patience_images=0)
    # no better after epoch 1: 3 epochs without at epoch 4, 6 at epoch 7, where patience (5) has run out
    assert [r.epoch for r in result.history if r.val_accuracy is not None] == [1, 4, 7]
    assert result.epochs == 7 and clock.now < 100


def test_from_scratch_a_first_phase_trains_its_crops_beyond_its_share_up_to_its_longest():
    def first_phase(at_least_images: int, fine_tuning: bool = False) -> tuple[int, float]:
        """The first phase's epochs and when it ended."""
        clock, model, ends = ComputeClock(), tiny_model(4), {}
        model.register_forward_hook(clock.hook)
        # an epoch: two batches of 8 at 32 px, 2 s, 4 crops' worth of 64 px compute
        first = Phase(32, 0.25, 8, at_least_images=at_least_images, longest=0.5)
        result = fit(
            model,
            random_crops(24),
            torch.arange(24) % 4,
            list(range(16)),
            list(range(16, 24)),
            TrainConfig(phases=(first, Phase(16, 1.0, 8)), min_epoch_images=4),
            Deadline(100.0, clock=clock),
            fine_tuning=fine_tuning,
            on_epoch=lambda report: ends.__setitem__(report.phase, clock.now),
        )
        return sum(r.phase == 0 for r in result.history), ends[0]

    within_share = first_phase(0)
    assert within_share[1] <= 25.0  # its share: a quarter of 100 s
    assert first_phase(4) == within_share  # its crops trained within the share
    epochs, ended = first_phase(60)  # 60 crops are 15 epochs (30 s of training): past the share
    assert epochs >= 15 > within_share[0] and 25.0 < ended < 50.0
    assert first_phase(1000)[1] == 50.0  # never past its longest, half the time
    assert first_phase(1000, fine_tuning=True) == within_share  # a published model has taken off already


def test_a_deadline_already_past_trains_nothing():
    images = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    result = fit(
        tiny_model(2), images, torch.arange(8) % 2, list(range(6)), [6, 7], TrainConfig(), Deadline(0)
    )
    assert result.epochs == 0 and result.history == []
    assert not quality_gate(
        result.best_accuracy, None, margin=0, trained_epochs=result.epochs, classes=2
    ).publish


class Always(nn.Module):
    """Predicts class ``index`` of ``n`` whatever the input."""

    def __init__(self, index: int, n: int) -> None:
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(index), n).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_the_published_model_is_scored_by_label_on_the_same_held_out_crops():
    images = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    labels = ["a", "a", "b", "z"]
    scores = score(
        "icon",
        Always(0, 2),  # the candidate always says "a"
        ["a", "b"],
        (Always(1, 3), ["b", "a", "c"]),  # so does the published model, whose "a" is its class 1
        images,
        labels,
        [0, 1, 2],
    )
    assert (scores.accuracy, scores.current_accuracy) == (2 / 3, 2 / 3)
    assert scores.per_class == {
        "a": {"correct": 2, "samples": 2, "accuracy": 1.0},
        "b": {"correct": 0, "samples": 1, "accuracy": 0.0},
    }
    assert score("icon", Always(1, 2), ["a", "b"], None, images, labels, [2]).current_accuracy is None
