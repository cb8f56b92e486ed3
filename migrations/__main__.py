"""``python -m migrations``: wait for Postgres, then upgrade it to the latest schema (compose's one-shot step)."""

import asyncio
import logging
import sys

from migrations import upgrade, wait_for_database
from shared.settings import CommonSettings, load_settings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    settings = load_settings(CommonSettings)
    asyncio.run(wait_for_database(settings.database_url))
    upgrade(settings.database_url)
    logging.getLogger("migrations").info("database schema is at head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
