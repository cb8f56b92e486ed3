"""core schema of every service

Tables of all four services (ownership: see each service's tables.py), the shared blob store, outbox and inbox,
and triggers that make training snapshots immutable.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 06:57:06.362706
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

IMMUTABLE_SNAPSHOT_TABLES = ("training_snapshots", "snapshot_items")


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_blobs_sha256_hex")),
        sa.CheckConstraint("size = octet_length(data)", name=op.f("ck_blobs_size_matches")),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blobs")),
    )
    op.create_table(
        "consensus",
        sa.Column("item_kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("value", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("support", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "item_kind IN ('icon', 'knowledge', 'screen', 'ocr', 'anchor')",
            name=op.f("ck_consensus_known_item_kind"),
        ),
        sa.CheckConstraint("status IN ('accepted', 'withheld')", name=op.f("ck_consensus_known_status")),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 1", name=op.f("ck_consensus_confidence_range")),
        sa.PrimaryKeyConstraint("item_kind", "item_key", name=op.f("pk_consensus")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("routing_key", sa.String(length=128), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outbox_message_id")),
    )
    op.create_index(
        "ix_outbox_pending", "outbox", ["id"], unique=False, postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_table(
        "processed_messages",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column(
            "processed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("consumer", "message_id", name=op.f("pk_processed_messages")),
    )
    op.create_table(
        "rate_limit_counters",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.CheckConstraint("scope IN ('install', 'ip')", name=op.f("ck_rate_limit_counters_known_scope")),
        sa.CheckConstraint("count >= 0", name=op.f("ck_rate_limit_counters_count_not_negative")),
        sa.PrimaryKeyConstraint("scope", "subject", "day", name=op.f("pk_rate_limit_counters")),
    )
    op.create_table(
        "training_snapshots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("new_label_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "reason IN ('threshold', 'admin')", name=op.f("ck_training_snapshots_known_reason")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["training_snapshots.id"],
            name=op.f("fk_training_snapshots_parent_id_training_snapshots"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_snapshots")),
    )
    op.create_table(
        "contributions",
        sa.Column("contribution_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("install_id", sa.String(length=64), nullable=False),
        sa.Column("item_kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "item_kind IN ('icon', 'knowledge', 'screen', 'ocr', 'anchor')",
            name=op.f("ck_contributions_known_item_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["image_sha256"], ["blobs.sha256"], name=op.f("fk_contributions_image_sha256_blobs")
        ),
        sa.PrimaryKeyConstraint("contribution_id", name=op.f("pk_contributions")),
    )
    op.create_index("ix_contributions_install", "contributions", ["install_id"], unique=False)
    op.create_table(
        "snapshot_items",
        sa.Column("snapshot_id", sa.Uuid(), nullable=False),
        sa.Column("item_kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("value", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "item_kind IN ('icon', 'knowledge', 'screen', 'ocr', 'anchor')",
            name=op.f("ck_snapshot_items_known_item_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["image_sha256"], ["blobs.sha256"], name=op.f("fk_snapshot_items_image_sha256_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["training_snapshots.id"],
            name=op.f("fk_snapshot_items_snapshot_id_training_snapshots"),
        ),
        sa.PrimaryKeyConstraint("snapshot_id", "item_kind", "item_key", name=op.f("pk_snapshot_items")),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("request_message_id", sa.String(length=128), nullable=False),
        sa.Column("snapshot_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metrics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'skipped')",
            name=op.f("ck_training_runs_known_status"),
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["training_snapshots.id"],
            name=op.f("fk_training_runs_snapshot_id_training_snapshots"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
        sa.UniqueConstraint("request_message_id", name=op.f("uq_training_runs_request_message_id")),
    )
    op.create_index(
        "ix_training_runs_unfinished",
        "training_runs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("model_kind", sa.String(length=16), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("model_kind IN ('icon', 'screen')", name=op.f("ck_checkpoints_known_model_kind")),
        sa.ForeignKeyConstraint(
            ["blob_sha256"], ["blobs.sha256"], name=op.f("fk_checkpoints_blob_sha256_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_checkpoints_run_id_training_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "model_kind", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "model_artifacts",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_sha256"], ["blobs.sha256"], name=op.f("fk_model_artifacts_blob_sha256_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_model_artifacts_run_id_training_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "path", name=op.f("pk_model_artifacts")),
    )
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("source_message_id", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("snapshot_id", sa.Uuid(), nullable=False),
        sa.Column("trained_at", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hub_commit", sa.String(length=64), nullable=True),
        sa.Column("hub_tag", sa.String(length=128), nullable=True),
        sa.Column(
            "metrics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("n_classes", sa.Integer(), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("n_users", sa.Integer(), nullable=False),
        sa.Column("rollback_of", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'published', 'failed', 'rejected')",
            name=op.f("ck_model_versions_known_status"),
        ),
        sa.CheckConstraint(
            "trained_at ~ '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{6}\\+00:00Z$'",
            name=op.f("ck_model_versions_trained_at_fixed_width"),
        ),
        sa.ForeignKeyConstraint(
            ["rollback_of"],
            ["model_versions.version"],
            name=op.f("fk_model_versions_rollback_of_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_model_versions_run_id_training_runs")
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["training_snapshots.id"],
            name=op.f("fk_model_versions_snapshot_id_training_snapshots"),
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("source_message_id", name=op.f("uq_model_versions_source_message_id")),
        sa.UniqueConstraint("trained_at", name=op.f("uq_model_versions_trained_at")),
    )
    op.create_index(
        "ix_model_versions_published",
        "model_versions",
        ["trained_at"],
        unique=False,
        postgresql_where=sa.text("status = 'published'"),
    )
    op.create_table(
        "votes",
        sa.Column("item_kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("install_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("value", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("contribution_id", sa.String(length=128), nullable=False),
        sa.Column("voted_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "item_kind IN ('icon', 'knowledge', 'screen', 'ocr', 'anchor')",
            name=op.f("ck_votes_known_item_kind"),
        ),
        sa.CheckConstraint("label IS NOT NULL OR value IS NOT NULL", name=op.f("ck_votes_label_or_value")),
        sa.ForeignKeyConstraint(
            ["contribution_id"],
            ["contributions.contribution_id"],
            name=op.f("fk_votes_contribution_id_contributions"),
        ),
        sa.PrimaryKeyConstraint("item_kind", "item_key", "install_id", name=op.f("pk_votes")),
    )
    op.create_index("ix_votes_install", "votes", ["install_id"], unique=False)
    op.create_table(
        "publication_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("hub_commit", sa.String(length=64), nullable=True),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('model', 'knowledge')", name=op.f("ck_publication_log_known_kind")),
        sa.ForeignKeyConstraint(
            ["version"], ["model_versions.version"], name=op.f("fk_publication_log_version_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publication_log")),
    )

    op.execute(
        """
        CREATE FUNCTION forbid_snapshot_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'training snapshots are immutable (% on %)', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    for table in IMMUTABLE_SNAPSHOT_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION forbid_snapshot_change()"
        )


def downgrade() -> None:
    for table in IMMUTABLE_SNAPSHOT_TABLES:
        op.execute(f"DROP TRIGGER {table}_immutable ON {table}")
    op.execute("DROP FUNCTION forbid_snapshot_change()")
    op.drop_table("publication_log")
    op.drop_index("ix_votes_install", table_name="votes")
    op.drop_table("votes")
    op.drop_index(
        "ix_model_versions_published",
        table_name="model_versions",
        postgresql_where=sa.text("status = 'published'"),
    )
    op.drop_table("model_versions")
    op.drop_table("model_artifacts")
    op.drop_table("checkpoints")
    op.drop_index(
        "ix_training_runs_unfinished",
        table_name="training_runs",
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.drop_table("training_runs")
    op.drop_table("snapshot_items")
    op.drop_index("ix_contributions_install", table_name="contributions")
    op.drop_table("contributions")
    op.drop_table("training_snapshots")
    op.drop_table("rate_limit_counters")
    op.drop_table("processed_messages")
    op.drop_index("ix_outbox_pending", table_name="outbox", postgresql_where=sa.text("published_at IS NULL"))
    op.drop_table("outbox")
    op.drop_table("consensus")
    op.drop_table("blobs")
