"""ingest: quota counters keyed by origin hashes, counting image bytes too

Rows of the 'ip' scope held raw client addresses; they are soft state (today's counts) and are deleted, so
per-origin quotas start afresh. Byte counters need more than 32 bits.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD = "scope IN ('install', 'ip')"
_NEW = "scope IN ('install', 'ip', 'install_bytes', 'ip_bytes')"
_CONSTRAINT = "ck_rate_limit_counters_known_scope"


def upgrade() -> None:
    op.execute("DELETE FROM rate_limit_counters WHERE scope = 'ip'")
    op.alter_column("rate_limit_counters", "count", type_=sa.BigInteger(), existing_nullable=False)
    op.drop_constraint(op.f(_CONSTRAINT), "rate_limit_counters", type_="check")
    op.create_check_constraint(op.f(_CONSTRAINT), "rate_limit_counters", _NEW)


def downgrade() -> None:
    op.execute("DELETE FROM rate_limit_counters WHERE scope <> 'install'")
    op.drop_constraint(op.f(_CONSTRAINT), "rate_limit_counters", type_="check")
    op.create_check_constraint(op.f(_CONSTRAINT), "rate_limit_counters", _OLD)
    op.alter_column("rate_limit_counters", "count", type_=sa.Integer(), existing_nullable=False)
