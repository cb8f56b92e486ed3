"""Property-based fuzzing of the contribution endpoints (in memory): whatever arrives, the answer is a deliberate 2xx/4xx,
never a 500, and nothing that breaks the contract is ever accepted."""

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.ingest.bodies import bulk_body, icon_item, knowledge_body
from tests.ingest.conftest import crop, memory_ingest

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
base64_noise = st.binary(min_size=75, max_size=400).map(lambda b: base64.b64encode(b).decode())
png_like = st.binary(min_size=0, max_size=300).map(
    lambda tail: base64.b64encode(b"\x89PNG\r\n\x1a\n" + tail).decode().ljust(100, "A")
)
images = st.one_of(st.just(crop(5)), base64_noise, png_like, st.text(min_size=100, max_size=300), json_values)
names = st.one_of(st.just("Phaser Array"), st.text(max_size=130), st.just("__empty__"), json_values)
install_ids = st.one_of(st.just("install-0001"), st.text(max_size=70), json_values)

contribute_bodies = st.fixed_dictionaries(
    {},
    optional={
        "install_id": install_ids,
        "phash": st.one_of(st.just("0123456789abcdef"), st.text(max_size=20), json_values),
        "crop_png_b64": images,
        "item_name": names,
        "wrong_name": st.one_of(st.none(), names),
        "confirmed": json_values,
        "warp_version": json_values,
        "timestamp": json_values,
    },
)
bulk_items = st.fixed_dictionaries(
    {},
    optional={
        "slot": st.one_of(
            st.sampled_from(["Fore Weapon", "Ship Type", "Ship Tier", "Ship Name"]), json_values
        ),
        "name": names,
        "crop_png_b64": images,
        "ml_name": st.one_of(st.text(max_size=130), json_values),
    },
)
bulk_bodies = st.fixed_dictionaries(
    {},
    optional={"install_id": install_ids, "items": st.one_of(st.lists(bulk_items, max_size=4), json_values)},
)


def png_ok(b64: str) -> bool:
    data = base64.b64decode(b64 + "=" * (-len(b64) % 4), altchars=b"-_" if "-" in b64 or "_" in b64 else None)
    image = Image.open(io.BytesIO(data))
    image.load()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and np.asarray(image.convert("RGB")).std() >= 10


def check_accepted_contribute(body: dict) -> None:
    assert isinstance(body["phash"], str) and len(body["phash"]) == 16
    assert png_ok(body["crop_png_b64"])


def check_accepted_bulk(body: dict, answer: dict) -> None:
    good = [
        item
        for item in body["items"]
        if isinstance(item, dict) and not str(item.get("name", "")).startswith("__")
    ]
    assert answer["accepted"] <= len(good)
    assert answer["accepted"] + answer["rejected"] == len(body["items"])


async def fuzz(ingest, path: str, strategy, check, examples: int, good: dict) -> int:
    """Post ``examples`` bodies drawn from ``strategy``, and ``good`` (which must be accepted, so that the
    checks of accepted bodies run at least once); answer how many items were accepted."""
    loop = asyncio.get_running_loop()
    accepted = 0

    def post(body):
        request = ingest.client.post(
            path, content=json.dumps(body), headers={"content-type": "application/json"}
        )
        future = asyncio.run_coroutine_threadsafe(request, loop)
        return future.result(timeout=30)

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=strategy)
    @example(body=good)
    def property_holds(body):
        nonlocal accepted
        response = post(body)
        assert response.status_code in (200, 400, 422), (response.status_code, response.text)
        if response.status_code == 200:
            accepted += check(body, response.json()) or response.json().get("accepted", 1)

    await asyncio.to_thread(property_holds)
    assert accepted, "the good body was not accepted"
    return accepted


@pytest_asyncio.fixture
async def memory():
    """Ingest on the fakes, with a reject budget hundreds of garbage bodies from one address cannot spend."""
    async with memory_ingest(reject_budget=1_000_000) as running:
        yield running


# Hundreds of requests take seconds: more than the unit tier (under 30 s for the whole suite) can spend.
slow = pytest.mark.integration


@slow
async def test_contribute_never_fails_and_never_accepts_garbage(memory):
    check = lambda body, _: check_accepted_contribute(body)  # noqa: E731
    accepted = await fuzz(memory, "/contribute", contribute_bodies, check, 250, knowledge_body())
    assert len(memory.publisher.published) == accepted


@slow
async def test_bulk_crops_never_fails_and_never_accepts_garbage(memory):
    good = bulk_body([icon_item(1), icon_item(2, name="__empty__")])
    accepted = await fuzz(memory, "/contribute/bulk-crops", bulk_bodies, check_accepted_bulk, 250, good)
    assert len(memory.publisher.published) == accepted


async def test_malformed_json_is_a_client_error_not_500(memory):
    for raw, status in (
        (b"{", 422),
        (b"[]", 422),
        (b"null", 422),
        (
            b'{"confirmed": Infinity, "phash": -Infinity}',
            422,
        ),  # Python's parser takes it; JSON cannot answer it
        (b"\x00" * 10, 400),
        (b'{"install_id": "\xff"}', 400),
    ):
        response = await memory.client.post(
            "/contribute", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == status
