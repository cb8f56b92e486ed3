from sqlalchemy import BigInteger, CheckConstraint, Column, Date, String, Table

from shared.db import metadata

# Per-UTC-day quota counters shared by every ingest replica (the old limiter lived in process memory). Subjects
# are install ids and origin keys (keyed hashes of a client's network), never addresses; rows of finished days
# are deleted (``services.ingest.ratelimit``).
rate_limit_counters = Table(
    "rate_limit_counters",
    metadata,
    Column("scope", String(16), primary_key=True),
    Column("subject", String(128), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("count", BigInteger, nullable=False),
    CheckConstraint("scope IN ('install', 'ip', 'install_bytes', 'ip_bytes')", name="known_scope"),
    CheckConstraint("count >= 0", name="count_not_negative"),
)
