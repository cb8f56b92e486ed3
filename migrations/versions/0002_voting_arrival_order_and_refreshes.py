"""voting: arrival order of votes, why snapshots were made, install reliability, consensus refreshes

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE vote_seq")
    op.add_column(
        "votes",
        sa.Column("seq", sa.BigInteger(), server_default=sa.text("nextval('vote_seq')"), nullable=False),
    )
    op.create_index("ix_votes_seq", "votes", ["seq"])
    # Snapshots are immutable (trigger): adding a column with a default touches no existing row.
    op.add_column(
        "training_snapshots",
        sa.Column("details", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.create_table(
        "install_reliability",
        sa.Column("item_kind", sa.String(length=16), nullable=False),
        sa.Column("install_id", sa.String(length=64), nullable=False),
        sa.Column("reliability", sa.Float(), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("cohort", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("item_kind", "install_id", name=op.f("pk_install_reliability")),
    )
    op.create_table(
        "consensus_refreshes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("last_vote_seq", sa.BigInteger(), nullable=False),
        sa.Column("stats", postgresql.JSONB(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consensus_refreshes")),
    )


def downgrade() -> None:
    op.drop_table("consensus_refreshes")
    op.drop_table("install_reliability")
    op.drop_column("training_snapshots", "details")
    op.drop_index("ix_votes_seq", table_name="votes")
    op.drop_column("votes", "seq")
    op.execute("DROP SEQUENCE vote_seq")
