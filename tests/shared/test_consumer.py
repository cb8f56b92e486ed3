"""The acknowledgement rules every consumer gets: the verdict on a failure (in memory), then
``subscribe_events`` against the real broker."""

import asyncio
import contextlib
import json
import logging

import asyncpg.exceptions
import pytest
from faststream.rabbit import RabbitBroker
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from shared.broker import DEAD_LETTER_REASON
from shared.consumer import (
    OUTAGE_PATIENCE_SECONDS,
    Action,
    RetryPolicy,
    Unprocessable,
    Verdict,
    delivery_number,
    handle_judged,
    judge_failure,
    subscribe_events,
)
from shared.db import claim_message
from shared.events import IconCropContributed, TrainingForceRequested, UndecodableEvent
from tests.utils.broker import queue_depth, wait_for_messages
from tests.utils.images import make_png

NO_WAIT = RetryPolicy(base_seconds=0.0, max_seconds=0.0)


def icon_event(**overrides) -> IconCropContributed:
    fields = dict(install_id="install-1", crop_sha256="ef" * 32, png=make_png(), slot="Deflector", label="X")
    return IconCropContributed(**(fields | overrides))


@pytest.mark.parametrize(
    "error",
    [Unprocessable("no published version 'v1'"), UndecodableEvent("body is not JSON")],
)
def test_a_message_that_can_never_be_processed_is_dead_lettered_on_its_first_delivery(error):
    assert judge_failure(error, delivery=1, delivery_limit=10) == Verdict(Action.DEAD_LETTER, str(error))


@pytest.mark.parametrize(
    "error",
    [ConnectionError("refused"), OperationalError("SELECT 1", {}, OSError("gone")), TimeoutError()],
)
def test_an_outage_is_ridden_out_in_place_until_the_patience_runs_out(error):
    assert judge_failure(error, delivery=10, delivery_limit=10).action is Action.RIDE_OUT
    assert (
        judge_failure(error, delivery=1, delivery_limit=10, outage_seconds=OUTAGE_PATIENCE_SECONDS).action
        is Action.RIDE_OUT
    )
    late = judge_failure(error, delivery=1, delivery_limit=10, outage_seconds=OUTAGE_PATIENCE_SECONDS + 1)
    assert late.action is Action.REQUEUE


def test_any_other_error_is_requeued_until_its_last_delivery_then_dead_lettered_with_the_error():
    error = RuntimeError("database is on fire")
    assert judge_failure(error, delivery=1, delivery_limit=3) == Verdict(Action.REQUEUE, repr(error))
    assert judge_failure(error, delivery=2, delivery_limit=3).action is Action.REQUEUE
    assert judge_failure(error, delivery=3, delivery_limit=3) == Verdict(
        Action.DEAD_LETTER, "handler failed on all 3 deliveries: RuntimeError('database is on fire')"
    )


def wrapped_by_sqlalchemy(error: Exception) -> DBAPIError:
    """As SQLAlchemy raises a driver error: its own exception, the driver's as ``orig`` and as the cause."""
    try:
        raise IntegrityError("INSERT ...", {}, error) from error
    except IntegrityError as wrapped:
        return wrapped


def raised_from(error: Exception) -> RuntimeError:
    try:
        raise RuntimeError("storing the batch failed") from error
    except RuntimeError as wrapped:
        return wrapped


NUL_IN_JSONB = asyncpg.exceptions.UntranslatableCharacterError(
    "unsupported Unicode escape sequence: \\u0000 cannot be converted to text."
)


@pytest.mark.parametrize(
    "error",
    [
        NUL_IN_JSONB,
        asyncpg.exceptions.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'),
        asyncpg.exceptions.StringDataRightTruncationError("value too long for type character varying(64)"),
        asyncpg.exceptions.NumericValueOutOfRangeError("integer out of range"),
        asyncpg.exceptions.CheckViolationError('violates check constraint "ck_votes_label"'),
        wrapped_by_sqlalchemy(NUL_IN_JSONB),
        raised_from(NUL_IN_JSONB),
    ],
)
def test_a_value_the_database_refuses_is_dead_lettered_on_its_first_delivery_with_the_error(error):
    verdict = judge_failure(error, delivery=1, delivery_limit=10)
    assert verdict.action is Action.DEAD_LETTER
    assert verdict.reason.startswith("the database refused a value (SQLSTATE 2")
    assert "Error): " in verdict.reason


def test_the_reason_of_a_data_error_names_the_database_error():
    assert judge_failure(wrapped_by_sqlalchemy(NUL_IN_JSONB), delivery=1, delivery_limit=10).reason == (
        "the database refused a value (SQLSTATE 22P05, UntranslatableCharacterError): "
        "unsupported Unicode escape sequence: \\u0000 cannot be converted to text."
    )


def test_a_database_error_that_is_not_about_the_data_is_retried():
    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    assert judge_failure(deadlock, delivery=1, delivery_limit=10).action is Action.REQUEUE
    assert (
        judge_failure(wrapped_by_sqlalchemy(deadlock), delivery=1, delivery_limit=10).action is Action.REQUEUE
    )


def test_the_delivery_number_counts_from_one():
    assert delivery_number(None) == delivery_number({}) == 1
    assert delivery_number({"x-delivery-count": 2}) == 3


class ManualTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def handle(self, handler, retry: RetryPolicy) -> Verdict | None:
        return await handle_judged(
            handler, delivery=1, delivery_limit=2, retry=retry, clock=self.clock, sleep=self.sleep
        )


async def test_an_outage_is_waited_out_with_backoff_without_spending_the_delivery():
    time = ManualTime()
    calls: list[int] = []

    async def down_twice():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("postgres restarting")

    verdict = await time.handle(down_twice, RetryPolicy(base_seconds=1, max_seconds=30))
    assert verdict is None and len(calls) == 3
    assert time.sleeps == [1, 2]


async def test_an_outage_longer_than_the_patience_goes_back_to_the_queue():
    time = ManualTime()

    async def always_down():
        raise ConnectionError("postgres is gone")

    verdict = await time.handle(always_down, RetryPolicy(base_seconds=60, max_seconds=60))
    assert verdict == Verdict(Action.REQUEUE, repr(ConnectionError("postgres is gone")))
    assert (
        sum(time.sleeps) > OUTAGE_PATIENCE_SECONDS and len(time.sleeps) == OUTAGE_PATIENCE_SECONDS // 60 + 1
    )


async def test_a_failure_that_is_not_an_outage_is_judged_at_once():
    time = ManualTime()

    async def refuses():
        raise Unprocessable("rollback: no published version 'v-nope'")

    verdict = await time.handle(refuses, RetryPolicy())
    assert verdict == Verdict(Action.DEAD_LETTER, "rollback: no published version 'v-nope'")
    assert time.sleeps == []


async def test_a_failure_is_logged_once_at_error_with_its_traceback(caplog):
    async def breaks():
        raise RuntimeError("database is on fire")

    with caplog.at_level(logging.INFO, logger="shared.consumer"):
        await ManualTime().handle(breaks, RetryPolicy())
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.getMessage() == "handler failed; verdict: requeue"
    assert record.exc_info is not None


async def test_a_deliberate_refusal_and_an_unapplied_verdict_are_not_logged(caplog):
    async def refuses():
        raise Unprocessable("rollback: no published version 'v-nope'")

    async def breaks():
        raise RuntimeError("database is on fire")

    time = ManualTime()
    with caplog.at_level(logging.INFO, logger="shared.consumer"):
        await time.handle(refuses, RetryPolicy())
        verdict = await handle_judged(
            breaks, delivery=1, delivery_limit=2, retry=RetryPolicy(), log_verdict=False, sleep=time.sleep
        )
    assert verdict is not None and verdict.action is Action.REQUEUE
    assert caplog.records == []


@contextlib.asynccontextmanager
async def running_consumer(broker_url, topology, publisher, handlers, *, prefetch=10):
    broker = RabbitBroker(broker_url, logger=None)
    subscribe_events(broker, topology, "voting", handlers, publisher, prefetch=prefetch, retry=NO_WAIT)
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


async def eventually(condition, timeout=15.0):
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_a_message_whose_handler_keeps_failing_ends_in_the_dead_letter_queue(
    broker_url, topology, publisher, amqp_channel
):
    attempts: list[str] = []

    async def always_fails(event):
        attempts.append(event.message_id)
        raise RuntimeError("database is on fire")

    event = icon_event()
    async with running_consumer(broker_url, topology, publisher, {IconCropContributed: always_fails}):
        await publisher.publish(event)
        [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)
    assert dead.message_id == event.message_id
    assert (
        "handler failed on all 2 deliveries: RuntimeError('database is on fire')"
        in dead.headers[DEAD_LETTER_REASON]
    )
    # delivered up to the limit, then dead-lettered with the error: never an endless loop
    assert len(attempts) == topology.delivery_limit
    assert await queue_depth(amqp_channel, topology.queue("voting")) == 0


async def test_a_transient_failure_is_retried_and_then_succeeds(
    broker_url, topology, publisher, amqp_channel
):
    handled: list[str] = []

    async def fails_once(event):
        handled.append(event.message_id)
        if len(handled) == 1:
            raise ConnectionError("postgres restarting")

    async with running_consumer(broker_url, topology, publisher, {IconCropContributed: fails_once}):
        await publisher.publish(icon_event())

        async def done():
            return len(handled) == 2

        await eventually(done)
    assert await queue_depth(amqp_channel, topology.dead_letter_queue("voting")) == 0


async def test_an_unknown_schema_version_is_dead_lettered_with_its_reason_and_the_rest_flows_on(
    broker_url, topology, publisher, amqp_channel
):
    handled: list[str] = []

    async def record(event):
        handled.append(event.message_id)

    future = json.loads(icon_event().to_json())
    future["schema_version"] = 2
    good = icon_event()
    async with running_consumer(broker_url, topology, publisher, {IconCropContributed: record}):
        await publisher.publish_raw(
            topology.events_exchange,
            "contribution.icon_crop",
            json.dumps(future).encode(),
            message_id="future-1",
        )
        await publisher.publish(good)
        [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)

        async def good_one_handled():
            return handled == [good.message_id]

        await eventually(good_one_handled)
    assert dead.message_id == "future-1"
    assert "unsupported schema_version 2 for contribution.icon_crop" in dead.headers[DEAD_LETTER_REASON]


async def test_an_event_type_the_queue_does_not_handle_is_dead_lettered(
    broker_url, topology, publisher, amqp_channel
):
    async def record(event):
        raise AssertionError("must not be called")

    async with running_consumer(broker_url, topology, publisher, {IconCropContributed: record}):
        await publisher.publish(TrainingForceRequested())
        [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)
    assert "training.force_requested" in dead.headers[DEAD_LETTER_REASON]


async def test_a_duplicate_message_id_is_processed_once(broker_url, topology, publisher, engine):
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE effects (message_id text NOT NULL)"))

    handled: list[str] = []

    async def count_once(event):
        async with engine.begin() as connection:
            if await claim_message(connection, "voting", event.message_id):
                await connection.execute(text("INSERT INTO effects VALUES (:id)"), {"id": event.message_id})
        handled.append(event.message_id)

    event = icon_event()
    async with running_consumer(broker_url, topology, publisher, {IconCropContributed: count_once}):
        await asyncio.gather(*(publisher.publish(event) for _ in range(3)))
        await publisher.publish(icon_event(message_id="other"))

        async def all_four_handled():
            return len(handled) == 4

        await eventually(all_four_handled)
    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT message_id FROM effects ORDER BY 1"))).scalars().all()
    assert rows == sorted([event.message_id, "other"])
