"""secrets feature tables (placeholder, filled by the secrets work)

Revision ID: 0002_secrets
Revises: 0001_core
"""
revision = "0002_secrets"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
