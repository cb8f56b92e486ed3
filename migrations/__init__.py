"""Schema migrations for the whole system, run once per deployment before the services start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run in a thread without an event loop (Alembic's env drives its own)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def wait_for_database(database_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    engine = create_async_engine(database_url)
    try:
        while True:
            try:
                async with engine.connect():
                    return
            except (OSError, OperationalError, DBAPIError) as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Postgres at {engine.url.render_as_string()} not reachable: {error}"
                    ) from None
                await asyncio.sleep(1)
    finally:
        await engine.dispose()
