"""The icon augmentation does to training crops what players' crops do, at the crop's own 64 px."""

import numpy as np
import torch

from services.trainer.domain.client_path import icon_crop_64
from services.trainer.training import augment, swap_background
from tools.simulator.hard_icons import RARITY_BACKGROUNDS, hard_icon


def crop(item: int, rarity: int) -> torch.Tensor:
    return (
        torch.from_numpy(icon_crop_64(hard_icon(item, rarity, "none", seed=1))).permute(2, 0, 1).float() / 255
    )


def test_another_rarity_background_is_painted_behind_the_art_with_its_shading():
    grey = crop(item=7, rarity=0)
    blue = torch.tensor(RARITY_BACKGROUNDS[2][::-1], dtype=torch.float32) / 255  # BGR, as clients decode
    repainted = swap_background(grey[None], torch.tensor([True]), blue[None])[0]
    truth = crop(item=7, rarity=2)
    background = (grey - crop(item=7, rarity=5)).abs().amax(
        dim=0
    ) > 0.05  # pixels that change with the rarity
    art = ~background
    # the background now has the new rarity's colour (within the shading and the soft edge), the art is kept
    assert (repainted - truth).abs().amax(dim=0)[background].median() < 0.05
    assert (repainted - grey).abs().amax(dim=0)[art].median() < 0.02
    assert (repainted - grey).abs().amax(dim=0)[background].median() > 0.2


def test_only_the_chosen_crops_are_repainted():
    batch = torch.stack([crop(1, 0), crop(2, 1)])
    out = swap_background(batch, torch.tensor([False, True]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.equal(out[0], batch[0])
    assert not torch.equal(out[1], batch[1])


def test_augmentation_is_seeded_keeps_the_range_and_leaves_screenshots_backgrounds_alone():
    batch = torch.stack([crop(i, i % 6) for i in range(16)])
    first = augment(batch, torch.Generator().manual_seed(3))
    again = augment(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert first.shape == batch.shape and float(first.min()) >= 0 and float(first.max()) <= 1
    assert not torch.equal(first, augment(batch, torch.Generator().manual_seed(4)))
    # screenshots: the same jitter, but no rarity repaint or frame: a flat image stays flat in hue
    flat = torch.full((8, 3, 64, 64), 0.5)
    screens = augment(flat, torch.Generator().manual_seed(3), icons=False)
    spread = screens.mean(dim=(2, 3)).std(dim=1)  # channel imbalance per image: only the small gain jitter
    assert float(spread.max()) < 0.15
    assert np.isfinite(screens.numpy()).all()
