"""CA tables (placeholder, filled by the CA work)

Revision ID: 0003_ca
Revises: 0002_secrets
"""
revision = "0003_ca"
down_revision = "0002_secrets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
