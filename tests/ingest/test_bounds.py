"""Issue 15's bounds on what a hostile client can cost: pixel limits read from the PNG header, screenshots
stored downscaled, image checks in a bounded pool, a reject budget per origin, bytes in flight per worker and a
body read timeout. In memory (ingest built by ``bootstrap`` on the fakes); the body gate driven as ASGI."""

import asyncio
import hashlib
import io
import json
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from services.ingest.admission import BytesInFlight, Overloaded, RejectBudget
from services.ingest.domain import (
    ICON_LIMITS,
    SCREENSHOT_LIMITS,
    ImageRejected,
    check_png,
    png_dimensions,
    stored_size,
)
from services.ingest.imagepool import ImagePool
from tests.ingest.bodies import INSTALL, bulk_body, icon_item, knowledge_body
from tests.ingest.conftest import CLIENT_ADDRESS, b64, memory_ingest


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(width: int, height: int) -> bytes:
    """A PNG of sound chunks whose IHDR declares ``width`` x ``height`` and whose pixel data does not inflate:
    only a check made on the header, before decoding, can name its size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"not zlib" * 8) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def screenshot(width: int, height: int) -> bytes:
    """A non-uniform screenshot that compresses well: horizontal and vertical gradients."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x, y, x // 2 + y // 2], axis=2), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# --- pixel limits, on the header --------------------------------------------------------------------------


def test_pixel_limits_are_read_from_the_header_before_any_pixel_is_decoded():
    assert png_dimensions(header_only_png(100_000, 100_000)) == (100_000, 100_000)
    with pytest.raises(ImageRejected) as refused:
        check_png(header_only_png(100_000, 100_000), SCREENSHOT_LIMITS)
    assert refused.value.code == "too_many_pixels"
    assert "100000x100000" in str(refused.value) and "the limit is 33177600 pixels" in str(refused.value)


def test_screenshots_are_limited_to_an_8k_screen_and_icons_to_256_pixels_a_side():
    with pytest.raises(ImageRejected, match="7681x4320 pixels; the limit is 33177600"):
        check_png(header_only_png(7681, 4320), SCREENSHOT_LIMITS)
    assert check_png(screenshot(5120, 2160), SCREENSHOT_LIMITS).width == 5120  # super-ultrawide
    with pytest.raises(ImageRejected, match="257x256 pixels; the limit is 65536"):
        check_png(screenshot(257, 256), ICON_LIMITS)
    assert check_png(screenshot(256, 256), ICON_LIMITS).width == 256


@pytest.mark.parametrize(
    ("size", "stored"),
    [((3840, 2160), (398, 224)), ((1080, 1920), (224, 398)), ((224, 500), None), ((100, 100), None)],
)
def test_stored_size_keeps_the_aspect_with_the_shorter_side_at_the_screen_model_input(size, stored):
    assert stored_size(*size, 224) == stored


def test_a_screenshot_is_stored_downscaled_under_the_sha256_the_client_sent():
    sent = screenshot(1920, 1080)
    image = check_png(sent, SCREENSHOT_LIMITS)
    assert image.sha256 == hashlib.sha256(sent).hexdigest()
    assert (image.width, image.height) == (1920, 1080)
    assert Image.open(io.BytesIO(image.data)).size == (398, 224)
    assert len(image.data) < len(sent)


async def test_an_accepted_screenshot_event_carries_the_small_png_and_the_clients_sha256(memory):
    sent = screenshot(2560, 1440)
    body = {"install_id": INSTALL, "screen_type": "TRAITS", "items": [{"png_b64": b64(sent)}]}
    response = await memory.client.post("/upload/screen-types", json=body)
    assert response.status_code == 200, response.text
    [event] = memory.publisher.published
    assert event.image_sha256 == hashlib.sha256(sent).hexdigest()
    assert Image.open(io.BytesIO(event.png)).size == (398, 224)


# --- the image-check pool -----------------------------------------------------------------------------------


async def test_image_checks_beyond_the_pool_and_its_queue_are_503_with_retry_after():
    async with memory_ingest(image_check_threads=1, image_check_queue=0, inline_crop_checks=0) as memory:
        release = threading.Event()
        busy = asyncio.create_task(memory.runtime.images["crops"].run(release.wait))
        await asyncio.sleep(0)  # let the blocking job take the pool's one place
        screens = {
            "install_id": INSTALL,
            "screen_type": "TRAITS",
            "items": [{"png_b64": b64(screenshot(320, 200))}],
        }
        try:
            response = await memory.client.post("/contribute/bulk-crops", json=bulk_body([icon_item()]))
            anchors = await memory.client.post(
                "/upload/anchors", json={"install_id": INSTALL, "grids": [_grid()]}
            )
            screenshot_answer = await memory.client.post("/upload/screen-types", json=screens)
        finally:
            release.set()
            await busy
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["resource"] == "crops_checks"
        assert anchors.status_code == 200  # no image, no pool: still served
        assert screenshot_answer.status_code == 200  # screenshots have their own lane
        kinds = [e.event_type for e in memory.publisher.published]
        assert kinds == ["contribution.anchor_grid", "contribution.screen_type"]
        again = await memory.client.post("/contribute/bulk-crops", json=bulk_body([icon_item()]))
        assert again.status_code == 200


async def test_requests_of_a_few_crops_are_checked_on_the_event_loop_larger_ones_on_the_check_threads():
    async with memory_ingest(image_check_threads=1, image_check_queue=0, inline_crop_checks=2) as memory:
        release = threading.Event()
        busy = asyncio.create_task(memory.runtime.images["crops"].run(release.wait))
        await asyncio.sleep(0)  # the pool's one place is taken: only inline checks can answer
        try:
            two = await memory.client.post(
                "/contribute/bulk-crops", json=bulk_body([icon_item(1), icon_item(2)])
            )
            three = await memory.client.post(
                "/contribute/bulk-crops", json=bulk_body([icon_item(3), icon_item(4), icon_item(5)])
            )
        finally:
            release.set()
            await busy
        assert two.status_code == 200
        assert three.status_code == 503


async def test_a_request_that_waited_for_a_thread_is_refused_unchecked_once_its_budget_was_spent_meanwhile():
    async with memory_ingest(screenshot_check_threads=1, reject_budget=8) as memory:
        release = threading.Event()
        busy = asyncio.create_task(memory.runtime.images["screens"].run(release.wait))
        await asyncio.sleep(0)
        uniform = {
            "install_id": INSTALL,
            "screen_type": "TRAITS",
            "items": [{"png_b64": b64(make_png_uniform(96))}],
        }
        first = asyncio.create_task(memory.client.post("/upload/screen-types", json=uniform))
        second = asyncio.create_task(memory.client.post("/upload/screen-types", json=uniform))
        while memory.runtime.images["screens"].pending < 3:  # both wait behind the blocking job
            await asyncio.sleep(0)
        release.set()
        await busy
        answers = sorted([(await first).status_code, (await second).status_code])
        assert answers == [400, 429]  # the first's rejection spent the budget: the second is not decoded
        rejected = memory.app.state.runtime.rejects
        assert rejected.retry_after(memory.runtime.origin(CLIENT_ADDRESS, [])) is not None


def _grid() -> dict:
    slot = {"x0_rel": 0.1, "y_rel": 0.2, "w_rel": 0.05, "h_rel": 0.05}
    return {
        "build_type": "SPACE_EQ",
        "aspect": 1.777,
        "resolution": "1920x1080",
        "slots": dict.fromkeys("ABC", slot),
    }


# --- the reject budget --------------------------------------------------------------------------------------


def test_a_reject_budget_refills_over_its_window():
    now = [0.0]
    budget = RejectBudget(capacity=4, window_seconds=60, clock=lambda: now[0])
    assert budget.retry_after("a") is None
    budget.charge("a", 4)
    assert budget.retry_after("a") == 15  # one reject back every 15 s
    assert budget.retry_after("b") is None
    now[0] = 15.0
    assert budget.retry_after("a") is None


def test_the_reject_budget_remembers_a_bounded_number_of_origins():
    budget = RejectBudget(capacity=1, window_seconds=60, clock=lambda: 0.0, max_origins=2)
    for origin in ("a", "b", "c"):
        budget.charge(origin)
    assert budget.retry_after("a") is None  # forgotten: the least recently charged
    assert budget.retry_after("b") == budget.retry_after("c") == 60


async def test_rejected_images_spend_the_origins_budget_then_it_is_429_before_the_body_is_read():
    async with memory_ingest(
        reject_budget=3, reject_window_seconds=60, spent_answer_delay_seconds=0
    ) as memory:
        uniform = b64(make_png_uniform())
        bad = await memory.client.post(
            "/contribute/bulk-crops", json=bulk_body([icon_item(i, crop_png_b64=uniform) for i in range(3)])
        )
        assert bad.status_code == 400
        refused = await memory.client.post("/contribute/bulk-crops", json=bulk_body([icon_item()]))
        assert refused.status_code == 429
        assert refused.json()["scope"] == "rejects" and refused.json()["limit"] == 3
        assert refused.headers["retry-after"] == "20"
        assert memory.publisher.published == []
        other_origin = await memory.client.post(
            "/contribute", json=knowledge_body(), headers={"X-Forwarded-For": "198.51.100.1"}
        )
        assert other_origin.status_code == 429  # the header is believed only from a trusted proxy
        memory.clock.advance(seconds=20)
        assert (await memory.client.post("/contribute", json=knowledge_body())).status_code == 200


async def test_schema_errors_and_oversized_bodies_cost_the_origin_too():
    async with memory_ingest(reject_budget=2, spent_answer_delay_seconds=0) as memory:
        assert (await memory.client.post("/contribute", json={"install_id": "x"})).status_code == 422
        oversized = await memory.client.post(
            "/contribute", content=b"x" * (320 * 1024 + 1), headers={"content-type": "application/json"}
        )
        assert oversized.status_code == 413
        assert (await memory.client.post("/contribute", json=knowledge_body())).status_code == 429


async def test_the_429_of_a_spent_budget_is_held_back_and_comes_before_the_size_check():
    async with memory_ingest(reject_budget=1, spent_answer_delay_seconds=0.05) as memory:
        assert (await memory.client.post("/contribute", json={"install_id": "x"})).status_code == 422
        started = time.perf_counter()
        oversized = await memory.client.post(
            "/contribute", content=b"x" * (320 * 1024 + 1), headers={"content-type": "application/json"}
        )
        assert oversized.status_code == 429
        assert time.perf_counter() - started >= 0.05


async def test_a_rejected_screenshot_costs_more_of_the_budget_than_a_rejected_crop():
    async with memory_ingest(reject_budget=10, spent_answer_delay_seconds=0) as memory:
        uniform = b64(make_png_uniform(96))
        crops = bulk_body([icon_item(i, crop_png_b64=uniform) for i in range(2)])
        assert (await memory.client.post("/contribute/bulk-crops", json=crops)).status_code == 400
        screens = {"install_id": INSTALL, "screen_type": "TRAITS", "items": [{"png_b64": uniform}]}
        assert (await memory.client.post("/upload/screen-types", json=screens)).status_code == 400
        # 2 + 8 of 10 spent (at one a screenshot, 3 of 10, this would be answered)
        assert (await memory.client.post("/contribute", json=knowledge_body())).status_code == 429


def make_png_uniform(side: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- bytes in flight and the body read timeout, as ASGI -----------------------------------------------------


def test_bytes_in_flight_are_held_up_to_the_limit():
    held = BytesInFlight(100)
    held.take(60)
    with pytest.raises(Overloaded, match="the limit per worker is 100"):
        held.take(41)
    held.take(40)
    held.give_back(100)
    assert held.held == 0


async def call(app, path: str, messages, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict, dict]:
    """One request straight through the ASGI app: ``messages`` is an async iterator of receive messages."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": (CLIENT_ADDRESS, 40000),
        "server": ("ingest", 80),
    }
    sent: list[dict] = []

    async def receive():
        return await anext(messages)

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(body)


async def chunks(*parts: bytes, before_last=lambda: None):
    for index, part in enumerate(parts):
        if index == len(parts) - 1:
            before_last()
        yield {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}


JSON = (b"content-type", b"application/json")


async def test_a_declared_body_over_the_bytes_in_flight_is_503_with_retry_after_unread():
    async with memory_ingest(max_bytes_in_flight=1024 * 1024) as memory:
        memory.runtime.in_flight.take(1024 * 1024 - 1000)  # what other requests hold
        body = json.dumps(knowledge_body()).encode()
        headers = [JSON, (b"content-length", str(len(body)).encode())]
        status, answer_headers, answer = await call(memory.app, "/contribute", chunks(), headers)
        assert status == 503 and answer_headers[b"retry-after"] == b"1"
        assert (
            answer["resource"] == "bytes_in_flight" and "the limit per worker is 1048576" in answer["detail"]
        )
        memory.runtime.in_flight.give_back(1024 * 1024 - 1000)
        status, _, _ = await call(memory.app, "/contribute", chunks(body), headers)
        assert status == 200
        assert memory.runtime.in_flight.held == 0  # given back once answered


async def test_a_chunked_body_is_held_as_it_grows_and_refused_past_the_bytes_in_flight():
    async with memory_ingest(max_bytes_in_flight=1024 * 1024) as memory:
        memory.runtime.in_flight.take(1024 * 1024 - 100_000)
        parts = [b"[" + b" " * 60_000, b" " * 60_000 + b"]"]
        status, headers, answer = await call(memory.app, "/contribute/bulk-crops", chunks(*parts), [JSON])
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert memory.runtime.in_flight.held == 1024 * 1024 - 100_000


async def test_a_body_that_trickles_past_the_read_timeout_is_408():
    # 10 MB declared at 10 MB/s: one second more than the read timeout
    async with memory_ingest(body_read_timeout_seconds=30, body_min_bytes_per_second=10_000_000) as memory:
        body = json.dumps(bulk_body([icon_item()])).encode()
        held_midway = []

        def later():
            held_midway.append(memory.runtime.in_flight.held)
            memory.clock.advance(seconds=32)

        late = chunks(body[:100], body[100:], before_last=later)
        promised = [JSON, (b"content-length", b"10000000")]
        status, _, answer = await call(memory.app, "/contribute/bulk-crops", late, promised)
        assert status == 408 and "not received within 31 seconds" in answer["detail"]
        assert held_midway == [100]  # what it sent, not the 10 MB it declared
        assert memory.publisher.published == [] and memory.runtime.in_flight.held == 0


async def test_a_long_body_on_a_slow_uplink_is_given_time_for_its_declared_length():
    async with memory_ingest(body_read_timeout_seconds=30, body_min_bytes_per_second=131_072) as memory:
        body = json.dumps(bulk_body([icon_item()])).encode()
        slow = chunks(body[:100], body[100:], before_last=lambda: memory.clock.advance(seconds=60))
        promised = [JSON, (b"content-length", b"10000000")]  # 30 s + 76 s at 128 KiB/s
        status, _, answer = await call(memory.app, "/contribute/bulk-crops", slow, promised)
        assert status == 200, answer


async def test_a_body_that_stops_arriving_is_408_after_the_read_timeout():
    async with memory_ingest(body_read_timeout_seconds=0.01) as memory:

        async def stalled():
            yield {"type": "http.request", "body": b'{"install_id": ', "more_body": True}
            await asyncio.Event().wait()

        for content_type in (b"application/json", b"application/vnd.warp+json"):
            headers = [(b"content-type", content_type)]
            status, _, answer = await call(memory.app, "/contribute", stalled(), headers)
            assert status == 408, answer


async def test_a_request_stops_being_checked_once_its_rejects_spent_the_budget_and_keeps_what_passed():
    async with memory_ingest(reject_budget=16) as memory:  # two rejected screenshots (8 each)
        uniform = {"png_b64": b64(make_png_uniform(96))}
        good = {"png_b64": b64(screenshot(320, 200))}
        body = {
            "install_id": INSTALL,
            "screen_type": "TRAITS",
            "items": [good, uniform, uniform] + [uniform] * 17,
        }
        response = await memory.client.post("/upload/screen-types", json=body)
    answer = response.json()
    assert response.status_code == 200 and answer["accepted"] == 1 and answer["rejected"] == 19
    assert [reason.split(": ", 1)[1].split(" ")[0] for reason in answer["rejected_reasons"][:3]] == [
        "image",
        "image",
        "not",
    ]
    assert all("not checked" in reason for reason in answer["rejected_reasons"][2:])


def test_screenshot_checks_run_below_the_event_loops_priority():
    pool = ImagePool("screens", threads=1, queue=0, nice=10)
    try:
        niceness = pool._executor.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert niceness.result(timeout=5) == os.getpriority(os.PRIO_PROCESS, 0) + 10
    finally:
        pool.close()


async def test_rejections_that_cost_no_decoding_do_not_spend_the_budget():
    async with memory_ingest(reject_budget=2) as memory:
        for round_ in range(3):
            items = [icon_item(10 + i, name="__empty__") for i in range(10)] + [icon_item(round_)]
            response = await memory.client.post("/contribute/bulk-crops", json=bulk_body(items))
            assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
