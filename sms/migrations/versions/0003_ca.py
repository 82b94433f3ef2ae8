"""CA tables: authorities, profiles, latest CRLs, issued certificates, usage statements, signature counters

Revision ID: 0003_ca
Revises: 0002_secrets
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_ca"
down_revision = "0002_secrets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ca_authorities",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("key_label", sa.String(128), nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("chain", sa.Text, nullable=False),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("imported", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("crl_number", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("revocation_epoch", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "ca_profiles",
        sa.Column("ca_name", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("definition", sa.Text, nullable=False),
    )
    op.create_table(
        "ca_crls",
        sa.Column("ca_name", sa.String(64), primary_key=True),
        sa.Column("number", sa.BigInteger, nullable=False),
        sa.Column("this_update", sa.BigInteger, nullable=False),
        sa.Column("next_update", sa.BigInteger, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("revocation_epoch", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ca_certificates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("ca_name", sa.String(64), nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("requester", sa.String(256), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("sans", sa.Text, nullable=False),
        sa.Column("not_before", sa.BigInteger, nullable=False),
        sa.Column("not_after", sa.BigInteger, nullable=False),
        sa.Column("issued_at", sa.BigInteger, nullable=False),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("renewal_of", sa.String(40), nullable=True),
        sa.Column("server_generated_key", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("is_ca", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("revoked_reason", sa.Integer, nullable=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.Column("revoked_by", sa.String(256), nullable=True),
        sa.Column("invalidity_date", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("serial", name="uq_ca_certificates_serial"),
    )
    op.create_index("ix_ca_certificates_ca_issued", "ca_certificates", ["ca_name", "issued_at"])
    op.create_index("ix_ca_certificates_not_after", "ca_certificates", ["not_after"])
    op.create_index("ix_ca_certificates_requester", "ca_certificates", ["requester"])
    op.create_table(
        "ca_usage",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("ca_name", sa.String(64), nullable=False),
        sa.Column("reported_by", sa.String(256), nullable=False),
        sa.Column("reported_at", sa.BigInteger, nullable=False),
        sa.Column("in_use", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_ca_usage_ca_name", "ca_usage", ["ca_name"])
    op.create_table(
        "ca_signature_counts",
        sa.Column("ca_name", sa.String(64), primary_key=True),
        sa.Column("key_label", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_index("ix_ca_usage_ca_name", table_name="ca_usage")
    for ix in ("ix_ca_certificates_requester", "ix_ca_certificates_not_after", "ix_ca_certificates_ca_issued"):
        op.drop_index(ix, table_name="ca_certificates")
    for t in ("ca_signature_counts", "ca_usage", "ca_certificates", "ca_crls", "ca_profiles", "ca_authorities"):
        op.drop_table(t)
