from sqlalchemy import CheckConstraint, Column, Date, Integer, String, Table

from shared.db import metadata

# Per-UTC-day request counters shared by every ingest replica (the old limiter lived in process memory).
rate_limit_counters = Table(
    "rate_limit_counters",
    metadata,
    Column("scope", String(16), primary_key=True),
    Column("subject", String(128), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("count", Integer, nullable=False),
    CheckConstraint("scope IN ('install', 'ip')", name="known_scope"),
    CheckConstraint("count >= 0", name="count_not_negative"),
)
