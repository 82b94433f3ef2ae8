"""Audit journal marks: how far each per-process audit journal file is folded into the chain

Revision ID: 0006_audit_journal
Revises: 0005_ocsp_responder
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_audit_journal"
down_revision = "0005_ocsp_responder"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_journals",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("folded", sa.BigInteger, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_journals")
