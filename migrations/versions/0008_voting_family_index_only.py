"""voting: the family look-up reads pHashes from the band indexes alone (issue 13, scale)

Each band index also holds the pHash, so finding a crop's near-copies is an index-only scan of the candidates that
share a band; only the few within the distance are then fetched, by pHash.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for i in range(4):
        op.drop_index(op.f(f"ix_icon_phashes_band{i}"), table_name="icon_phashes")
        op.create_index(op.f(f"ix_icon_phashes_band{i}_phash"), "icon_phashes", [f"band{i}", "phash"])
    op.create_index(op.f("ix_icon_phashes_phash"), "icon_phashes", ["phash"])


def downgrade() -> None:
    op.drop_index(op.f("ix_icon_phashes_phash"), table_name="icon_phashes")
    for i in range(4):
        op.drop_index(op.f(f"ix_icon_phashes_band{i}_phash"), table_name="icon_phashes")
        op.create_index(op.f(f"ix_icon_phashes_band{i}"), "icon_phashes", [f"band{i}"])
