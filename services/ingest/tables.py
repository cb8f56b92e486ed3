from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Index,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

CONSOLE_ACTIONS = ("item_decided", "install_moderated", "release_mode", "release_approved", "rollback")

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

# Every console action, as the moderator asked it: who (the console session), when, the state the page showed
# before and what was asked for after (the event sent; the owner applies it).
console_audit = Table(
    "console_audit",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("session", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("subject", Text, nullable=False),
    Column("before", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("after", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("message_id", String(128), nullable=False),
    CheckConstraint("action IN (" + ", ".join(f"'{a}'" for a in CONSOLE_ACTIONS) + ")", name="known_action"),
    Index("ix_console_audit_action_subject_id", "action", "subject", "id"),
)
