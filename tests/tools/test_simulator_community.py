"""The community workload draws what the consensus must survive: re-encodings are the same pixels, swarms come
from the origins they claim, the client model gets better with each release and errs mostly on look-alikes."""

import numpy as np
import pytest

from shared.events import IconCropContributed, ScreenTypeContributed
from shared.imagekeys import hamming, keys_of_png
from tools.simulator.community import (
    ICON,
    RELEASES,
    SCREEN,
    SWARM_MODES,
    SWARM_SIZES,
    SWARM_TARGETS,
    CommunitySpec,
    encode_png,
    generate,
    icon_pixels,
    near_copy,
    score,
    swarm_name,
)

TINY = CommunitySpec(
    items=40,
    installs=20,
    contributions=300,
    swarm_crops=1,
    farmed_items=1,
    group_size=2,
    group_clean_votes=5,
    ocr_attacked_texts=1,
    screen_troll_screens=2,
)


@pytest.fixture(scope="module")
def workload():
    return generate(TINY)


def test_reencodings_are_new_bytes_over_the_same_pixels_and_near_copies_new_pixels_nearby():
    pixels = icon_pixels(design=11, variant=0)
    pngs = [encode_png(pixels, encoding) for encoding in range(5)]
    keys = [keys_of_png(png) for png in pngs]
    assert len(set(pngs)) == 5
    assert {k.pixels_sha256 for k in keys} == {keys[0].pixels_sha256}
    assert {k.phash for k in keys} == {keys[0].phash}
    copy = keys_of_png(encode_png(near_copy(pixels, np.random.default_rng(0)), 0))
    assert copy.pixels_sha256 != keys[0].pixels_sha256
    assert hamming(copy.phash, keys[0].phash) <= 8


def test_swarms_are_fresh_installs_from_one_origin_or_one_origin_each(workload):
    first_vote: dict[str, int] = {}
    for position, event in enumerate(workload.events):
        first_vote.setdefault(event.install_id, position)
    for size in SWARM_SIZES:
        for mode in SWARM_MODES:
            for target in SWARM_TARGETS:
                name = swarm_name(size, mode, target)
                members = [i for i, role in workload.roles.items() if role == name]
                origins = {workload.origins[i] for i in members}
                assert len(members) == size
                assert len(origins) == (1 if mode == "one-origin" else size)
                assert not origins & {o for i, o in workload.origins.items() if workload.roles[i] != name}
                planted = [e for e in workload.events if e.install_id in members]
                assert planted and all(workload.planted[e.crop_sha256][1] == name for e in planted)


def test_planted_reencodings_are_settled_pixels_and_new_crops_are_pixels_nobody_labelled(workload):
    icons = [e for e in workload.events if isinstance(e, IconCropContributed)]
    for event in icons:
        if event.crop_sha256 not in workload.planted:
            continue
        before = {
            e.pixels_sha256 for e in icons[: icons.index(event)] if e.crop_sha256 not in workload.planted
        }
        if workload.roles[event.install_id].endswith("re-encoded"):
            assert event.pixels_sha256 in before
            assert event.crop_sha256 not in {
                e.crop_sha256 for e in icons if e.crop_sha256 not in workload.planted
            }
        else:
            assert event.pixels_sha256 not in before


def test_the_client_model_gets_better_with_each_release_and_errs_mostly_on_lookalikes(workload):
    accuracy, lookalike_errors = [], []
    for start, _, _ in RELEASES:
        right = wrong_on_twin = wrong = 0
        for item in range(TINY.items):
            if item in workload.new_items:
                continue
            for crop in range(100):
                guess = workload.model_guess(item, 10_000 + item * 100 + crop, start + 0.01)
                right += guess == workload.names[item]
                wrong += guess != workload.names[item]
                wrong_on_twin += item in workload.twin and guess == workload.names[workload.twin[item]]
        accuracy.append(right / (right + wrong))
        lookalike_errors.append(wrong_on_twin / wrong)
    assert accuracy == sorted(accuracy) and accuracy[0] < accuracy[-1]
    assert min(lookalike_errors) > 0.5


def test_every_event_carries_an_origin_and_icons_their_pixel_keys(workload):
    times = [e.occurred_at for e in workload.events]
    assert times == sorted(times)
    assert len({e.message_id for e in workload.events}) == len(workload.events)
    assert all(e.origin for e in workload.events)
    for event in workload.events[:50]:
        if isinstance(event, IconCropContributed):
            keys = keys_of_png(event.png)
            assert (event.pixels_sha256, event.phash) == (keys.pixels_sha256, keys.phash)


def test_score_counts_truth_as_correct_and_an_accepted_plant_as_planted(workload):
    truth = {kind: dict(units) for kind, units in workload.truth.items()}
    perfect = score(workload, truth)
    assert perfect["icon"]["correct"] == perfect["icon"]["coverage"] == 100.0
    assert perfect["planted_total"] == 0 and perfect["farming_safe"] == 100.0
    crop, (label, swarm) = next(iter(workload.planted.items()))
    truth[ICON][crop] = label
    planted = score(workload, truth)
    assert planted["planted_total"] == 1 and planted["planted"][swarm] == 1
    assert planted["icon"]["wrong"] == 1


def test_a_moderator_settles_one_early_screenshot_per_type_after_it_arrived(workload):
    arrived = {e.image_sha256: e.occurred_at for e in workload.events if isinstance(e, ScreenTypeContributed)}
    labels = [m.label for m in workload.moderations]
    assert labels and len(labels) == len(set(labels))
    for decision in workload.moderations:
        assert decision.label == workload.truth[SCREEN][decision.item_key]
        assert decision.occurred_at > arrived[decision.item_key]
    stream = workload.stream()
    assert len(stream) == len(workload.events) + len(workload.moderations)
    assert [e.occurred_at for e in stream] == sorted(e.occurred_at for e in stream)
