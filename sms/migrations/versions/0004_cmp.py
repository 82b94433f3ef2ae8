"""CMP profile and transaction tables (placeholder)

Revision ID: 0004_cmp
Revises: 0003_ca
"""
revision = "0004_cmp"
down_revision = "0003_ca"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
