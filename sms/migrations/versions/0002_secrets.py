"""secrets feature tables: domains, wrapped domain keys, secrets, sealed versions, one-time references

Revision ID: 0002_secrets
Revises: 0001_core
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_secrets"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_domains",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("max_versions", sa.Integer, nullable=True),
    )
    op.create_table(
        "secret_domain_keys",
        sa.Column("domain_id", sa.String(36), sa.ForeignKey("secret_domains.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "secrets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("domain_id", sa.String(36), sa.ForeignKey("secret_domains.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("current_version", sa.Integer, nullable=False),
        sa.Column("max_versions", sa.Integer, nullable=True),
        sa.UniqueConstraint("domain_id", "name", name="uq_secrets_domain_name"),
    )
    op.create_table(
        "secret_versions",
        sa.Column("secret_id", sa.Integer, sa.ForeignKey("secrets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("deleted_at", sa.Float, nullable=True),
        sa.Column("destroyed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "secret_refs",
        sa.Column("ref_hash", sa.String(64), primary_key=True),
        sa.Column("domain", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
    )
    op.create_index("ix_secret_refs_expires_at", "secret_refs", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_secret_refs_expires_at", table_name="secret_refs")
    for t in ("secret_refs", "secret_versions", "secrets", "secret_domain_keys", "secret_domains"):
        op.drop_table(t)
