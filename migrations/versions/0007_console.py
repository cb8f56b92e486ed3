"""console: its audit log (ingest), the release mode and held releases (publisher) (issue 16)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_OLD = "status IN ('pending', 'published', 'failed', 'rejected', 'superseded')"
_NEW = "status IN ('pending', 'published', 'failed', 'rejected', 'superseded', 'held')"
_ACTIONS = "action IN ('item_decided', 'install_moderated', 'release_mode', 'release_approved', 'rollback')"


def upgrade() -> None:
    op.create_table(
        "console_audit",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("session", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("before", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("after", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.CheckConstraint(_ACTIONS, name=op.f("ck_console_audit_known_action")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_audit")),
    )
    op.create_index(op.f("ix_console_audit_action_subject_id"), "console_audit", ["action", "subject", "id"])
    op.create_table(
        "release_mode",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name=op.f("ck_release_mode_one_row")),
        sa.CheckConstraint("mode IN ('automatic', 'held')", name=op.f("ck_release_mode_known_mode")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_mode")),
    )
    op.drop_constraint(op.f("ck_model_versions_known_status"), "model_versions", type_="check")
    op.create_check_constraint(op.f("ck_model_versions_known_status"), "model_versions", _NEW)


def downgrade() -> None:
    op.execute("UPDATE model_versions SET status = 'rejected' WHERE status = 'held'")
    op.drop_constraint(op.f("ck_model_versions_known_status"), "model_versions", type_="check")
    op.create_check_constraint(op.f("ck_model_versions_known_status"), "model_versions", _OLD)
    op.drop_table("release_mode")
    op.drop_index(op.f("ix_console_audit_action_subject_id"), "console_audit")
    op.drop_table("console_audit")
