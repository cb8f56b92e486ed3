from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import metadata

ITEM_KINDS = "('icon', 'knowledge', 'screen', 'ocr', 'anchor')"

# Every accepted contribution, keyed by its message id: storing it is what makes a redelivery a no-op.
contributions = Table(
    "contributions",
    metadata,
    Column("contribution_id", String(128), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("install_id", String(64), nullable=False),
    Column("item_kind", String(16), nullable=False),
    Column("item_key", Text, nullable=False),
    Column("image_sha256", String(64), ForeignKey("blobs.sha256")),
    Column("payload", JSONB, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
    Index("ix_contributions_install", "install_id"),
)

# One install, one vote per item: the primary key enforces it; a later vote replaces the row.
votes = Table(
    "votes",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("install_id", String(64), primary_key=True),
    Column("label", Text),
    Column("value", JSONB),
    Column("contribution_id", String(128), ForeignKey("contributions.contribution_id"), nullable=False),
    Column("voted_at", DateTime(timezone=True), nullable=False),
    # Arrival order of the vote's current value (taken again when an install changes its vote).
    Column("seq", BigInteger, nullable=False, server_default=text("nextval('vote_seq')")),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
    CheckConstraint("label IS NOT NULL OR value IS NOT NULL", name="label_or_value"),
    Index("ix_votes_install", "install_id"),
    Index("ix_votes_seq", "seq"),
)

consensus = Table(
    "consensus",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("label", Text),
    Column("value", JSONB),
    Column("status", String(16), nullable=False),
    Column("support", Integer, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
    CheckConstraint("status IN ('accepted', 'withheld')", name="known_status"),
    CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
)

# Immutable once written (enforced by triggers in the migration): what exactly a training run learned from.
training_snapshots = Table(
    "training_snapshots",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("parent_id", Uuid, ForeignKey("training_snapshots.id")),
    Column("reason", String(16), nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("new_label_count", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint("reason IN ('threshold', 'admin')", name="known_reason"),
)

snapshot_items = Table(
    "snapshot_items",
    metadata,
    Column("snapshot_id", Uuid, ForeignKey("training_snapshots.id"), primary_key=True),
    Column("item_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("label", Text),
    Column("value", JSONB),
    Column("image_sha256", String(64), ForeignKey("blobs.sha256")),
    CheckConstraint(f"item_kind IN {ITEM_KINDS}", name="known_item_kind"),
)

IMMUTABLE_TABLES = ("training_snapshots", "snapshot_items")

# Per-install reliability as last estimated (observability: who is trusted, who is in a suspected cohort).
install_reliability = Table(
    "install_reliability",
    metadata,
    Column("item_kind", String(16), primary_key=True),
    Column("install_id", String(64), primary_key=True),
    Column("reliability", Float, nullable=False),
    Column("votes", Integer, nullable=False),
    Column("cohort", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# One row per consensus refresh: up to which vote it saw, and what it decided.
consensus_refreshes = Table(
    "consensus_refreshes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("last_vote_seq", BigInteger, nullable=False),
    Column("stats", JSONB, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
