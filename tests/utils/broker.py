import asyncio

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage


async def wait_for_messages(
    channel: AbstractChannel, queue_name: str, count: int, timeout: float = 15.0
) -> list[AbstractIncomingMessage]:
    """Consume (and ack) ``count`` messages from a queue, failing if they do not all arrive in time.

    A consumer rather than basic.get, which single-active-consumer queues refuse.
    """
    queue = await channel.get_queue(queue_name, ensure=False)
    arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await queue.consume(arrived.put, no_ack=True)
    messages: list[AbstractIncomingMessage] = []
    try:
        async with asyncio.timeout(timeout):
            while len(messages) < count:
                messages.append(await arrived.get())
    except TimeoutError:
        raise AssertionError(f"{queue_name}: got {len(messages)} of {count} messages in {timeout}s") from None
    finally:
        await queue.cancel(tag)
    return messages


async def queue_depth(channel: AbstractChannel, queue_name: str) -> int:
    declared = await channel.declare_queue(queue_name, passive=True)
    return declared.declaration_result.message_count
