import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from shared.events import (
    EVENT_TYPES,
    AnchorGridContributed,
    IconCropContributed,
    KnowledgeContributed,
    ModelTrained,
    TrainingRequested,
    UndecodableEvent,
    decode_event,
)
from tests.utils.images import make_png

SHA = "ab" * 32


def icon_event(**overrides) -> IconCropContributed:
    fields = dict(
        install_id="install-1", crop_sha256=SHA, png=make_png(), slot="Fore Weapon", label="Phaser Array"
    )
    return IconCropContributed(**(fields | overrides))


def test_every_event_type_round_trips_through_its_wire_form():
    event = icon_event()
    decoded = decode_event(event.to_json())
    assert decoded == event
    assert decoded.png == event.png


def test_every_architecture_event_is_registered_with_version_1():
    expected = {
        "contribution.icon_crop",
        "contribution.ocr_correction",
        "contribution.knowledge",
        "contribution.screen_type",
        "contribution.anchor_grid",
        "training.requested",
        "training.progress",
        "model.trained",
        "model.published",
        "knowledge.published",
    }
    assert expected <= set(EVENT_TYPES)
    assert all(1 in versions for versions in EVENT_TYPES.values())


def test_timestamps_are_utc_and_must_carry_a_zone():
    local = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = icon_event(occurred_at=local)
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.hour == 10
    with pytest.raises(ValidationError, match="occurred_at"):
        icon_event(occurred_at=datetime(2026, 5, 1, 12, 0))


def test_an_unknown_schema_version_is_refused_with_the_versions_read():
    body = json.loads(icon_event().to_json())
    body["schema_version"] = 7
    with pytest.raises(
        UndecodableEvent, match=r"unsupported schema_version 7 for contribution.icon_crop.*\[1\]"
    ):
        decode_event(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"event_type": "contribution.teleport", "schema_version": 1}', "contribution.teleport"),
        (b'{"schema_version": 1}', "None"),
    ],
)
def test_undecodable_bodies_say_why(body, reason):
    with pytest.raises(UndecodableEvent, match=reason):
        decode_event(body)


def test_invalid_fields_are_named():
    body = json.loads(icon_event().to_json())
    body["crop_sha256"] = "not-a-sha"
    with pytest.raises(UndecodableEvent, match="malformed contribution.icon_crop v1: crop_sha256"):
        decode_event(json.dumps(body).encode())


def test_a_consumer_can_restrict_the_types_it_accepts():
    with pytest.raises(UndecodableEvent, match="not one this consumer handles"):
        decode_event(icon_event().to_json(), accepted=frozenset({"training.requested"}))


def test_additive_fields_from_newer_producers_are_ignored():
    body = json.loads(icon_event().to_json())
    body["future_field"] = {"anything": 1}
    assert decode_event(json.dumps(body).encode()).label == "Phaser Array"


def test_contract_limits_are_enforced_by_the_models():
    with pytest.raises(ValidationError, match="phash"):
        KnowledgeContributed(install_id="i", phash="XYZ", crop_sha256=SHA, png=b"x", item_name="n")
    with pytest.raises(ValidationError, match="slots"):
        AnchorGridContributed(
            install_id="i", build_type="SPACE", aspect=1.78, resolution="1920x1080", slots={}
        )
    with pytest.raises(ValidationError, match="install_id"):
        icon_event(install_id="bad id with spaces")
    with pytest.raises(ValidationError, match="trained_at"):
        ModelTrained(
            run_id=uuid.uuid4(),
            snapshot_id=uuid.uuid4(),
            trained_at="yesterday",
            artifacts={"a": SHA},
            metrics={},
            n_classes=1,
            n_samples=1,
            n_users=1,
            quality_gate_passed=True,
        )


def test_message_ids_are_unique_by_default_and_kept_when_given():
    first, second = (
        TrainingRequested(snapshot_id=uuid.uuid4(), reason="threshold", new_labels=10, total_labels=10),
        TrainingRequested(snapshot_id=uuid.uuid4(), reason="threshold", new_labels=10, total_labels=10),
    )
    assert first.message_id != second.message_id
    assert icon_event(message_id="c0ffee").message_id == "c0ffee"
