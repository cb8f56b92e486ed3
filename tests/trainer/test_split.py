"""Validation on rendering variants a class did not train on (milliseconds)."""

import numpy as np
import torch

from services.trainer.domain.client_path import icon_crop_64
from services.trainer.domain.data import rendering_variants, variant_split
from tools.simulator.hard_icons import hard_icon


def test_crops_of_an_item_on_one_background_share_a_variant_and_another_background_does_not():
    crops = np.stack(
        [
            icon_crop_64(hard_icon(7, rarity, degradation, seed))
            for rarity, degradation, seed in [(2, "none", 1), (2, "noise", 2), (2, "jpeg", 3), (4, "none", 4)]
        ]
    )
    variants = rendering_variants(crops)
    assert variants[0] == variants[1] == variants[2] != variants[3]


def test_a_class_in_several_variants_holds_out_whole_variants_and_never_all_of_them():
    labels = ["Mine"] * 6 + ["Phaser"] * 5 + ["Beam"] * 2
    variants = ["red"] * 4 + ["blue"] * 2 + ["green"] * 5 + ["grey"] * 2
    split = variant_split(labels, variants)
    held = {(labels[i], variants[i]) for i in split.validation}
    # Mine: its rarest background, whole; Phaser and Beam have one variant each: one crop held out
    assert [i for i in split.validation if labels[i] == "Mine"] == [4, 5]
    assert {v for label, v in held if label == "Mine"} == {"blue"}
    assert sum(labels[i] == "Phaser" for i in split.validation) == 1
    assert sum(labels[i] == "Beam" for i in split.validation) == 1
    assert sorted(split.train + split.validation) == list(range(len(labels)))
    assert variant_split(labels, variants) == split  # seeded


def test_a_mixed_phase_gives_each_size_an_equal_share_of_the_compute():
    from services.trainer.training import Phase

    phase = Phase(224, 1.0, 16, mixed=(64, 128, 224))
    chance = phase.size_weights() / phase.size_weights().sum()
    compute = chance * torch.tensor([1.0, 4.0, 12.25])
    assert torch.allclose(compute, compute.mean().expand(3))
    assert abs(phase.cost - 3 / (1 + 1 / 4 + 1 / 12.25)) < 1e-6 and Phase(64, 1.0, 32).cost == 1.0
