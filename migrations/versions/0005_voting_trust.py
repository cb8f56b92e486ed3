"""voting: earned trust, origins, item identity by pixels, incremental consensus (issue 13)

Votes gain the client's origin and model guess; consensus rows gain their reason, evidence and the vote they
were settled on. New: the dirty-item queue of the incremental refresh, icon pHash bands (visual families),
trust judgements and per-install trust, known labels, moderator decisions and shadow bans. The old
per-kind ``install_reliability`` (an EM estimate over all votes) is replaced by ``install_trust``. Every item
is queued, so the first refresh after the upgrade decides all of them under the new rules.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ITEM_KINDS = "item_kind IN ('icon', 'knowledge', 'screen', 'ocr', 'anchor')"


def upgrade() -> None:
    op.add_column("votes", sa.Column("origin", sa.String(64)))
    op.add_column("votes", sa.Column("model_guess", sa.Text()))
    op.create_index(op.f("ix_votes_kind_label"), "votes", ["item_kind", "label"])
    op.add_column("consensus", sa.Column("reason", sa.Text()))
    op.add_column("consensus", sa.Column("evidence", postgresql.JSONB()))
    op.add_column("consensus", sa.Column("settled_seq", sa.BigInteger()))
    op.create_index(op.f("ix_consensus_updated_at"), "consensus", ["updated_at"])
    op.create_index(op.f("ix_contributions_received_at"), "contributions", ["received_at"])
    op.create_table(
        "dirty_items",
        sa.Column("item_kind", sa.String(16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("item_kind", "item_key", name=op.f("pk_dirty_items")),
    )
    op.create_table(
        "icon_phashes",
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("phash", sa.BigInteger(), nullable=False),
        *(sa.Column(f"band{i}", sa.Integer(), nullable=False) for i in range(4)),
        sa.PrimaryKeyConstraint("item_key", name=op.f("pk_icon_phashes")),
    )
    for i in range(4):
        op.create_index(op.f(f"ix_icon_phashes_band{i}"), "icon_phashes", [f"band{i}"])
    op.create_table(
        "trust_judgements",
        sa.Column("item_kind", sa.String(16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("install_id", sa.String(64), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("settled_label", sa.Text(), nullable=False),
        sa.Column("agree", sa.Boolean(), nullable=False),
        sa.Column("gold", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("item_kind", "item_key", "install_id", name=op.f("pk_trust_judgements")),
    )
    op.create_index(op.f("ix_trust_judgements_install"), "trust_judgements", ["install_id"])
    op.create_table(
        "install_trust",
        sa.Column("install_id", sa.String(64), nullable=False),
        *(
            sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)
            for name in ("agree", "disagree", "gold_agree", "gold_disagree")
        ),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("cohort", sa.String(64)),
        sa.Column("banned", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("stale", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("install_id", name=op.f("pk_install_trust")),
    )
    op.create_index(
        op.f("ix_install_trust_stale"), "install_trust", ["stale"], postgresql_where=sa.text("stale")
    )
    op.create_table(
        "known_labels",
        sa.Column("item_kind", sa.String(16), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "source IN ('published', 'accepted', 'moderator')", name=op.f("ck_known_labels_known_source")
        ),
        sa.PrimaryKeyConstraint("item_kind", "label", name=op.f("pk_known_labels")),
    )
    op.create_table(
        "moderator_decisions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("item_kind", sa.String(16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("label", sa.Text()),
        sa.Column("moderator", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("before", postgresql.JSONB()),
        sa.CheckConstraint(ITEM_KINDS, name=op.f("ck_moderator_decisions_known_item_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_moderator_decisions")),
        sa.UniqueConstraint("message_id", name=op.f("uq_moderator_decisions_message_id")),
    )
    op.create_index(
        op.f("ix_moderator_decisions_item"), "moderator_decisions", ["item_kind", "item_key", "decided_at"]
    )
    op.create_table(
        "install_bans",
        sa.Column("install_id", sa.String(64), nullable=False),
        sa.Column("shadow_banned", sa.Boolean(), nullable=False),
        sa.Column("moderator", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("install_id", name=op.f("pk_install_bans")),
    )
    op.drop_table("install_reliability")
    op.execute(
        "INSERT INTO dirty_items (item_kind, item_key) SELECT DISTINCT item_kind, item_key FROM votes "
        "ON CONFLICT DO NOTHING"
    )


def downgrade() -> None:
    op.create_table(
        "install_reliability",
        sa.Column("item_kind", sa.String(16), nullable=False),
        sa.Column("install_id", sa.String(64), nullable=False),
        sa.Column("reliability", sa.Float(), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("cohort", sa.Integer()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("item_kind", "install_id", name=op.f("pk_install_reliability")),
    )
    for table in (
        "install_bans",
        "moderator_decisions",
        "known_labels",
        "install_trust",
        "trust_judgements",
        "icon_phashes",
        "dirty_items",
    ):
        op.drop_table(table)
    op.drop_index(op.f("ix_contributions_received_at"), "contributions")
    op.drop_index(op.f("ix_consensus_updated_at"), "consensus")
    for column in ("settled_seq", "evidence", "reason"):
        op.drop_column("consensus", column)
    op.drop_index(op.f("ix_votes_kind_label"), "votes")
    op.drop_column("votes", "model_guess")
    op.drop_column("votes", "origin")
