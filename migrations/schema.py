"""The full target schema: every table of every service, for Alembic's comparisons."""

import services.ingest.tables  # noqa: F401
import services.publisher.tables  # noqa: F401
import services.trainer.tables  # noqa: F401
import services.voting.tables  # noqa: F401
import shared.blobstore  # noqa: F401
import shared.outbox  # noqa: F401
from shared.db import metadata

__all__ = ["metadata"]
