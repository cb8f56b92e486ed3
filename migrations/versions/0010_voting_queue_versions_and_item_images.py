"""voting: the refresh queue keeps a version per item, and each item's first image is kept (issue 13, scale)

- ``dirty_items.version``: a refresh reads the queue without taking row locks and, when it commits, removes only
  the rows whose version it read; a vote stored meanwhile gives its item a new version, so it stays queued. The
  consumer never waits for a refresh transaction (it did: the refresh deleted the rows it took, and storing a vote
  of such an item waited for the refresh to commit).
- ``item_images``: the image a snapshot or a prediction request gives an item, stored with its first vote, so a
  snapshot is one statement instead of a search of every vote for each accepted item's first crop.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE dirty_item_version")
    op.add_column(
        "dirty_items",
        sa.Column(
            "version",
            sa.BigInteger(),
            server_default=sa.text("nextval('dirty_item_version')"),
            nullable=False,
        ),
    )
    op.create_index(op.f("ix_dirty_items_version"), "dirty_items", ["version"])
    op.create_table(
        "item_images",
        sa.Column("item_kind", sa.String(length=16), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_sha256"], ["blobs.sha256"], name=op.f("fk_item_images_image_sha256_blobs")
        ),
        sa.PrimaryKeyConstraint("item_kind", "item_key", name=op.f("pk_item_images")),
    )
    op.execute(
        "INSERT INTO item_images (item_kind, item_key, image_sha256) "
        "SELECT DISTINCT ON (v.item_kind, v.item_key) v.item_kind, v.item_key, c.image_sha256 FROM votes v "
        "JOIN contributions c ON c.contribution_id = v.contribution_id WHERE c.image_sha256 IS NOT NULL "
        "ORDER BY v.item_kind, v.item_key, v.seq"
    )


def downgrade() -> None:
    op.drop_table("item_images")
    op.drop_index(op.f("ix_dirty_items_version"), table_name="dirty_items")
    op.drop_column("dirty_items", "version")
    op.execute("DROP SEQUENCE dirty_item_version")
