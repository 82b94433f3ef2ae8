"""CMP profile and transaction tables: profiles (aliases), sealed PBM shared secrets, transactions

Revision ID: 0004_cmp
Revises: 0003_ca
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_cmp"
down_revision = "0003_ca"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cmp_profiles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("ca_name", sa.String(64), nullable=False),
        sa.Column("cert_profile", sa.String(64), nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("trust_anchors", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_table(
        "cmp_secrets",
        sa.Column("profile", sa.String(64), sa.ForeignKey("cmp_profiles.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("reference", sa.String(128), primary_key=True),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "cmp_transactions",
        sa.Column("profile", sa.String(64), primary_key=True),
        sa.Column("transaction_id", sa.String(256), primary_key=True),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("request_type", sa.String(16), nullable=False),
        sa.Column("server_nonce", sa.LargeBinary, nullable=False),
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("cert_req_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("issue_request", sa.Text, nullable=True),
        sa.Column("cert_serial", sa.String(42), nullable=True),
        sa.Column("certificate", sa.LargeBinary, nullable=True),
        sa.Column("chain", sa.LargeBinary, nullable=True),
        sa.Column("confirm_deadline", sa.Float, nullable=True),
        sa.Column("implicit_confirm", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_cmp_transactions_state_deadline", "cmp_transactions", ["state", "confirm_deadline"])
    op.create_index("ix_cmp_transactions_cert_serial", "cmp_transactions", ["cert_serial"])


def downgrade() -> None:
    op.drop_index("ix_cmp_transactions_cert_serial", table_name="cmp_transactions")
    op.drop_index("ix_cmp_transactions_state_deadline", table_name="cmp_transactions")
    for t in ("cmp_transactions", "cmp_secrets", "cmp_profiles"):
        op.drop_table(t)
