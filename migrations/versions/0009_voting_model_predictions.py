"""voting: the published model's predictions on the items it asked about (issue 13)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_predictions",
        sa.Column("item_kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("requested_version", sa.String(length=64)),
        sa.Column("requested_at", sa.DateTime(timezone=True)),
        sa.Column("model_version", sa.String(length=64)),
        sa.Column("label", sa.Text()),
        sa.Column("confidence", sa.Float()),
        sa.Column("trained_on", sa.Boolean()),
        sa.Column("predicted_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "item_kind IN ('icon', 'knowledge', 'screen')", name=op.f("ck_model_predictions_predicted_kind")
        ),
        sa.CheckConstraint(
            "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)",
            name=op.f("ck_model_predictions_confidence_range"),
        ),
        sa.PrimaryKeyConstraint("item_kind", "item_key", name=op.f("pk_model_predictions")),
    )


def downgrade() -> None:
    op.drop_table("model_predictions")
