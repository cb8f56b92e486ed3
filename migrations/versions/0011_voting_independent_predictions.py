"""voting: keep the latest prediction of a model version that had not trained on the item (issue 13)

Once a release has trained on an accepted item, its prediction there is no evidence for the item's label (a label
never vouches for itself); the prediction of the version before, which judged the crop without having seen its
label, still is. ``model_predictions`` keeps it beside the newest answer.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_predictions", sa.Column("independent_version", sa.String(length=64), nullable=True))
    op.add_column("model_predictions", sa.Column("independent_label", sa.Text(), nullable=True))
    op.add_column("model_predictions", sa.Column("independent_confidence", sa.Float(), nullable=True))
    op.execute(
        "UPDATE model_predictions SET independent_version = model_version, independent_label = label, "
        "independent_confidence = confidence WHERE NOT trained_on AND label IS NOT NULL"
    )


def downgrade() -> None:
    for column in ("independent_confidence", "independent_label", "independent_version"):
        op.drop_column("model_predictions", column)
