from sqlalchemy import (
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
from shared.reads import RUN_STATUSES, UNFINISHED_RUN_STATUSES


def _sql_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


# A run is recorded (keyed by the request's message id) before the request is acked, so a training that
# outlives the broker's 30-minute ack timeout is resumed from here rather than lost or started twice.
training_runs = Table(
    "training_runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("request_message_id", String(128), nullable=False, unique=True),
    Column("snapshot_id", Uuid, ForeignKey("training_snapshots.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("deadline_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text),
    CheckConstraint(f"status IN {_sql_list(RUN_STATUSES)}", name="known_status"),
    Index(
        "ix_training_runs_unfinished",
        "created_at",
        postgresql_where=text(f"status IN {_sql_list(UNFINISHED_RUN_STATUSES)}"),
    ),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", Uuid, ForeignKey("training_runs.id"), primary_key=True),
    Column("model_kind", String(16), primary_key=True),
    Column("epoch", Integer, nullable=False),
    Column("blob_sha256", String(64), ForeignKey("blobs.sha256"), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("model_kind IN ('icon', 'screen')", name="known_model_kind"),
)

model_artifacts = Table(
    "model_artifacts",
    metadata,
    Column("run_id", Uuid, ForeignKey("training_runs.id"), primary_key=True),
    Column("path", String(255), primary_key=True),
    Column("blob_sha256", String(64), ForeignKey("blobs.sha256"), nullable=False),
)

# The gold set (domain/gold.py): evaluation crops kept out of training, stored when a release that added them
# passed its gate, so a later snapshot cannot relabel them. A moderator's label replaces an evidence label.
gold_items = Table(
    "gold_items",
    metadata,
    Column("model_kind", String(16), primary_key=True),
    Column("item_key", Text, primary_key=True),
    Column("label", Text, nullable=False),
    Column("image_sha256", String(64), ForeignKey("blobs.sha256"), nullable=False),
    Column("source", String(16), nullable=False),
    Column("run_id", Uuid, ForeignKey("training_runs.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("model_kind IN ('icon', 'screen')", name="known_model_kind"),
    CheckConstraint("source IN ('moderator', 'evidence')", name="known_source"),
)
