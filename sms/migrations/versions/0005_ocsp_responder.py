"""Delegated OCSP responders: per CA, the responder certificate and the token label of its key

Revision ID: 0005_ocsp_responder
Revises: 0004_cmp
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_ocsp_responder"
down_revision = "0004_cmp"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ca_ocsp_responders",
        sa.Column("ca_name", sa.String(64), primary_key=True),
        sa.Column("key_label", sa.String(128), nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ca_ocsp_responders")
