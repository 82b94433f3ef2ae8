"""Audit journal: how far each per-process journal file is folded into the chain, and (used on
PostgreSQL) the entries of committed writes waiting to be linked into it

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
    op.create_table(
        "audit_pending",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(1024), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("remote", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_pending")
    op.drop_table("audit_journals")
