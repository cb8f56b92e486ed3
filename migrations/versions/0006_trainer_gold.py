"""trainer: gold set and gate decisions (issue 14)

The gold set: evaluation crops kept out of training, frozen by the release that added them.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gold_items",
        sa.Column("model_kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("model_kind IN ('icon', 'screen')", name=op.f("ck_gold_items_known_model_kind")),
        sa.CheckConstraint("source IN ('moderator', 'evidence')", name=op.f("ck_gold_items_known_source")),
        sa.ForeignKeyConstraint(
            ["image_sha256"], ["blobs.sha256"], name=op.f("fk_gold_items_image_sha256_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_gold_items_run_id_training_runs")
        ),
        sa.PrimaryKeyConstraint("model_kind", "item_key", name=op.f("pk_gold_items")),
    )


def downgrade() -> None:
    op.drop_table("gold_items")
