"""Audit outbox: the process that wrote each entry, so that process links it with its own
journal (its entries stay in order) and others take it only once it is left behind

Revision ID: 0007_audit_outbox_origin
Revises: 0006_audit_journal
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_audit_outbox_origin"
down_revision = "0006_audit_journal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_pending") as t:
        t.add_column(sa.Column("origin", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit_pending") as t:
        t.drop_column("origin")
