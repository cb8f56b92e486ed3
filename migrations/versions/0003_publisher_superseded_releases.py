"""publisher: a release older than the published one is recorded as superseded, never published

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OLD = "status IN ('pending', 'published', 'failed', 'rejected')"
_NEW = "status IN ('pending', 'published', 'failed', 'rejected', 'superseded')"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_model_versions_known_status"), "model_versions", type_="check")
    op.create_check_constraint(op.f("ck_model_versions_known_status"), "model_versions", _NEW)


def downgrade() -> None:
    op.execute("UPDATE model_versions SET status = 'rejected' WHERE status = 'superseded'")
    op.drop_constraint(op.f("ck_model_versions_known_status"), "model_versions", type_="check")
    op.create_check_constraint(op.f("ck_model_versions_known_status"), "model_versions", _OLD)
