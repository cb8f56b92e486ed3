from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
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

# trained_at is what installed clients compare as a string: fixed-width UTC, so string order is time order.
TRAINED_AT_FORMAT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00Z$"

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", String(64), primary_key=True),
    # The message that asked for this release: a redelivery finds its row instead of making a second version.
    Column("source_message_id", String(128), nullable=False, unique=True),
    Column("run_id", Uuid, ForeignKey("training_runs.id"), nullable=False),
    Column("snapshot_id", Uuid, ForeignKey("training_snapshots.id"), nullable=False),
    Column("trained_at", String(40), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("hub_commit", String(64)),
    Column("hub_tag", String(128)),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("n_classes", Integer, nullable=False),
    Column("n_samples", Integer, nullable=False),
    Column("n_users", Integer, nullable=False),
    Column("rollback_of", String(64), ForeignKey("model_versions.version")),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
    CheckConstraint(
        "status IN ('pending', 'published', 'failed', 'rejected', 'superseded', 'held')", name="known_status"
    ),
    CheckConstraint(f"trained_at ~ '{TRAINED_AT_FORMAT}'", name="trained_at_fixed_width"),
    Index("ix_model_versions_published", "trained_at", postgresql_where=text("status = 'published'")),
)

publication_log = Table(
    "publication_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("version", String(64), ForeignKey("model_versions.version")),
    Column("event", String(32), nullable=False),
    Column("hub_commit", String(64)),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("kind IN ('model', 'knowledge')", name="known_kind"),
)

# One row (id 1) once a mode was ever asked for; none: automatic. Held: a release that passed the quality gate
# waits (status 'held') for a release.approval_requested.
release_mode = Table(
    "release_mode",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mode", String(16), nullable=False),
    Column("requested_by", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("id = 1", name="one_row"),
    CheckConstraint("mode IN ('automatic', 'held')", name="known_mode"),
)
