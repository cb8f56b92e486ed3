"""Each consumer queue's depth and dead letters for the overview, over one connection the console keeps."""

from __future__ import annotations

import contextlib
from typing import Any

import aio_pika

from shared.topology import Topology


class QueueDepths:
    def __init__(self, broker_url: str, topology: Topology) -> None:
        self._broker_url = broker_url
        self._topology = topology
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def read(self) -> list[dict[str, Any]] | str:
        """Messages waiting in each consumer queue and in its dead-letter queue; what went wrong, as text, when
        RabbitMQ does not answer (the page shows the rest)."""
        try:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aio_pika.connect(self._broker_url, timeout=5)
            async with self._connection.channel() as channel:
                depths = []
                for consumer in self._topology.consumers:
                    row: dict[str, Any] = {"role": consumer.role}
                    for column, name in (
                        ("ready", self._topology.queue(consumer.role)),
                        ("dead", self._topology.dead_letter_queue(consumer.role)),
                    ):
                        queue = await channel.declare_queue(name, passive=True)
                        row[column] = queue.declaration_result.message_count
                    depths.append(row)
            return depths
        except Exception as error:  # a console page must not fail with the broker
            await self.close()
            return f"RabbitMQ did not answer: {error!r}"[:300]

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
