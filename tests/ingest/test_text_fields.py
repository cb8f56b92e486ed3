"""Every text field of every endpoint is cleaned or refused (issue 15): control characters, NUL and lone
surrogates refused naming the field (Postgres stores none of them, so a 2xx for one was a lost contribution),
bidi controls and zero-width characters refused in names, what is kept NFC-normalised and stripped."""

import json
import unicodedata

import pytest
from pydantic import BaseModel, ValidationError

from services.ingest import errors
from services.ingest.domain import TextRejected, TextRule
from services.ingest.schemas import AnchorGrid
from tests.ingest.bodies import INSTALL, bulk_body, grid, icon_item, knowledge_body

COMBINING = "Cafe\u0301"  # "Café" decomposed: NFC composes it
RLO, ZWSP, NUL, SURROGATE = "\u202e", "\u200b", "\x00", "\ud800"


def post_json(memory, path: str, body: dict):
    """``body`` as a hostile client sends it: ``json.dumps`` escapes a lone surrogate as ``\\ud800``."""
    return memory.client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("rule", "text", "words"),
    [
        (TextRule("slot", 80), "Fore\x00Weapon", "slot contains non-printable character U+0000"),
        (TextRule("ml_name", 80), "ab\ud800", "U+D800 (a lone surrogate) at position 2"),
        (TextRule("slot", 80), f"Fore{RLO}Weapon", "U+202E (a format character: bidi control or zero-width)"),
        (TextRule("slot", 80), f"Fore{ZWSP}Weapon", "U+200B"),
        (TextRule("slot", 80), "Fore\u2028Weapon", "U+2028 (a line separator)"),
        (TextRule("timestamp", 30, name=False), "2026\x7f", "U+007F (a control character)"),
        (TextRule("timestamp", 30, name=False), "2026\tx", "U+0009"),
        (TextRule("slot", 80), " \u3000 ", "U+3000"),
        (TextRule("slot", 80), "   ", "slot is empty once surrounding spaces are removed"),
        (TextRule("name", 3), "\u0958\u0958", "name is 4 characters once normalised (NFC); the limit is 3"),
    ],
)
def test_a_text_rule_refuses_naming_the_field_and_the_character(rule, text, words):
    with pytest.raises(TextRejected) as refused:
        rule.clean(text)
    assert words in str(refused.value)
    assert text.strip() not in str(refused.value) or not text.strip()


def test_a_text_rule_keeps_text_nfc_and_stripped_and_free_text_may_hold_format_characters():
    assert TextRule("slot", 80).clean(f"  {COMBINING} ") == unicodedata.normalize("NFC", COMBINING) == "Café"
    assert TextRule("ml_name", 80, required=False).clean("  ") == ""
    assert TextRule("warp_version", 20, name=False).clean(f" 2.4{ZWSP}\u00a0") == f"2.4{ZWSP}"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("phash", "0123456789abcde\x00", "pattern"),
    ],
)
async def test_contribute_refuses_a_bad_character_with_422_naming_the_field(memory, field, value, words):
    response = await post_json(memory, "/contribute", knowledge_body(**{field: value}))
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", field]
    assert words in json.dumps(problem)
    assert memory.publisher.published == []


async def test_free_text_a_client_copies_is_cleaned_not_refused(memory):
    """Version strings, timestamps and raw OCR text (``ml_name``) come from elsewhere: an honest trailing newline
    or a zero-width character there is removed, as the old backend did, not answered 422."""
    body = knowledge_body(warp_version="2.4\x00\n", timestamp="2026\n11")
    response = await post_json(memory, "/contribute", body)
    assert response.status_code == 200, response.text
    [event] = memory.publisher.published
    assert (event.warp_version, event.client_timestamp) == ("2.4", "202611")
    items = [icon_item(1, ml_name="Phaser\x00"), icon_item(2, ml_name=f"Pha{ZWSP}ser\n")]
    items.append(icon_item(3, slot="Ship Type", ml_name="Heavy\x1bCruiser"))
    response = await post_json(memory, "/contribute/bulk-crops", bulk_body(items))
    assert response.json()["accepted"] == 3, response.text
    guesses = [
        e.model_guess if hasattr(e, "model_guess") else e.raw_text for e in memory.publisher.published[1:]
    ]
    assert guesses == ["Phaser", "Phaser", "HeavyCruiser"]


async def test_contribute_cleans_names_and_normalises_every_text(memory):
    body = knowledge_body(
        item_name=f" {COMBINING}\x00{RLO} ", wrong_name=f"\x00{ZWSP}", warp_version=" 2.4.1 "
    )
    response = await post_json(memory, "/contribute", body | {"timestamp": f"{COMBINING} "})
    assert response.status_code == 200
    [event] = memory.publisher.published
    assert (event.item_name, event.wrong_name) == ("Café", None)
    assert (event.warp_version, event.client_timestamp) == ("2.4.1", "Café")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"slot": "Fore\x00Weapon"}, "item 1: slot contains non-printable character U+0000"),
        ({"slot": f"Fore{RLO}Weapon"}, "item 1: slot contains non-printable character U+202E"),
        ({"name": " \t "}, "item 1: name contains non-printable character U+0009"),
        ({"name": "   "}, "item 1: name is empty"),
    ],
)
async def test_a_crop_with_a_bad_text_is_rejected_alone_with_its_reason(memory, overrides, words):
    items = [icon_item(1), icon_item(2, **overrides)]
    for path in ("/contribute/bulk-crops", "/v1/contributions/crops"):
        response = await post_json(memory, path, bulk_body(items))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["accepted"], answer["rejected"]) == (1, 1)
        assert words in json.dumps(answer, ensure_ascii=False)
    assert [event.label for event in memory.publisher.published] == ["Phaser Array"] * 2


async def test_crop_texts_are_published_nfc_and_stripped(memory):
    item = icon_item(1, slot=" Fore Weapon ", name=f"{COMBINING} ", ml_name=f" {COMBINING}")
    assert (await post_json(memory, "/contribute/bulk-crops", bulk_body([item]))).status_code == 200
    [event] = memory.publisher.published
    assert (event.slot, event.label, event.model_guess) == ("Fore Weapon", "Café", "Café")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"build_type": "SPACE\x00EQ"}, "item 1: build_type contains non-printable character U+0000"),
        ({"build_type": f"SPACE{ZWSP}"}, "item 1: build_type contains non-printable character U+200B"),
        ({"resolution": "1920x1080\x00"}, "item 1: resolution contains non-printable character U+0000"),
        ({"slots": {"Fore\x00": {}, "Aft": {}, "Deflector": {}}}, "item 1: slot name contains"),
        ({"slots": {"Fore": {}, " Fore": {}, "Deflector": {}}}, "item 1: two slot names are the same"),
    ],
)
async def test_an_anchor_grid_with_a_bad_text_is_rejected_alone_with_its_reason(memory, overrides, words):
    slot = grid()["slots"]["Deflector"]
    if "slots" in overrides:
        overrides = {"slots": dict.fromkeys(overrides["slots"], slot)}
    response = await post_json(
        memory, "/upload/anchors", {"install_id": INSTALL, "grids": [grid(), grid(**overrides)]}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert words in " ".join(answer["rejected_reasons"])


async def test_anchor_texts_are_published_nfc_and_stripped(memory):
    slot = grid()["slots"]["Deflector"]
    body = grid(
        build_type=" SPACE_EQ ", resolution=" 1920x1080", slots=dict.fromkeys([" a", COMBINING, "c "], slot)
    )
    assert (
        await post_json(memory, "/upload/anchors", {"install_id": INSTALL, "grids": [body]})
    ).status_code == 200
    [event] = memory.publisher.published
    assert (event.build_type, event.resolution, sorted(event.slots)) == (
        "SPACE_EQ",
        "1920x1080",
        ["Café", "a", "c"],
    )


async def test_a_422_names_field_rule_and_limit_but_never_echoes_the_input(memory):
    secret = "y" * 300
    response = await memory.client.post("/contribute", json=knowledge_body(phash=secret, warp_version=secret))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert {tuple(problem["loc"]) for problem in detail} == {("body", "phash"), ("body", "warp_version")}
    assert all(set(problem) <= {"loc", "msg", "type", "ctx"} for problem in detail)
    assert {"max_length": 20} in [problem.get("ctx") for problem in detail]
    assert secret not in response.text


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/contribute", knowledge_body(timestamp=f"2026{SURROGATE}"), ["body", "timestamp"]),
        ("/contribute", knowledge_body(item_name=f"Phaser{SURROGATE}"), ["body", "item_name"]),
        (
            "/contribute/bulk-crops",
            bulk_body([icon_item(ml_name=SURROGATE)]),
            ["body", "items", 0, "ml_name"],
        ),
        (
            "/upload/anchors",
            {"install_id": INSTALL, "grids": [grid(slots={f"a{SURROGATE}": {}, "b": {}, "c": {}})]},
            ["body", "grids", 0, "slots", "a\ufffd\ufffd\ufffd", "[key]"],
        ),
    ],
)
async def test_a_lone_surrogate_anywhere_is_422_naming_the_field(memory, path, body, loc):
    """Pydantic refuses a string holding one before any rule runs (the JSON arrives escaped: ``\\ud800``)."""
    response = await post_json(memory, path, body)
    assert response.status_code == 422
    assert loc in [problem["loc"] for problem in response.json()["detail"]]
    assert memory.publisher.published == []


def test_the_fast_path_422_body_has_no_input_either():
    """``errors.invalid_request`` answers pydantic's own ``ValidationError`` (what the fast path meets) alike."""

    class Body(BaseModel):
        grids: list[AnchorGrid]

    with pytest.raises(ValidationError) as problem:
        Body.model_validate_json(json.dumps({"grids": [grid(resolution="r" * 17, aspect=11)]}))
    status, body, _ = errors.invalid_request(problem.value)
    assert status == 422
    assert [(p["loc"], p.get("ctx")) for p in body["detail"]] == [
        (["grids", 0, "aspect"], {"le": 10.0}),
        (["grids", 0, "resolution"], {"max_length": 16}),
    ]
    assert "input" not in json.dumps(body) and "r" * 17 not in json.dumps(body)
