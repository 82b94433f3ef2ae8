"""Tables of the CA feature (migration ``0003_ca``).

Serial numbers are up to 159-bit ints: stored as 40 lower-case hex digits, zero-padded, so
the UNIQUE constraint holds on SQLite and PostgreSQL alike and string order is numeric order.
Times are whole seconds since the epoch (UTC), as BIGINT.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base


class CaRow(Base):
    __tablename__ = "ca_authorities"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_label: Mapped[str] = mapped_column(String(128))
    certificate: Mapped[bytes] = mapped_column(LargeBinary)
    chain: Mapped[str] = mapped_column(Text)  # JSON list of base64 DER, nearest issuer first
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    imported: Mapped[bool] = mapped_column(Boolean)
    settings: Mapped[str] = mapped_column(Text)  # JSON: seconds
    created_at: Mapped[int] = mapped_column(BigInteger)
    crl_number: Mapped[int] = mapped_column(BigInteger, default=0)
    revocation_epoch: Mapped[int] = mapped_column(BigInteger, default=0)


class ProfileRow(Base):
    __tablename__ = "ca_profiles"

    ca_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[str] = mapped_column(Text)  # Profile.to_dict() as JSON


class CrlRow(Base):
    """The latest CRL of each CA (older ones are not kept)."""

    __tablename__ = "ca_crls"

    ca_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[int] = mapped_column(BigInteger)
    next_update: Mapped[int] = mapped_column(BigInteger)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    revocation_epoch: Mapped[int] = mapped_column(BigInteger)


class CertificateRow(Base):
    __tablename__ = "ca_certificates"
    __table_args__ = (
        UniqueConstraint("serial", name="uq_ca_certificates_serial"),
        Index("ix_ca_certificates_ca_issued", "ca_name", "issued_at"),
        Index("ix_ca_certificates_not_after", "not_after"),
        Index("ix_ca_certificates_requester", "requester"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    serial: Mapped[str] = mapped_column(String(40))
    ca_name: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(64))
    requester: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(Text)
    sans: Mapped[str] = mapped_column(Text)  # "\n"-joined "DNS:x" forms
    not_before: Mapped[int] = mapped_column(BigInteger)
    not_after: Mapped[int] = mapped_column(BigInteger)
    issued_at: Mapped[int] = mapped_column(BigInteger)
    key_type: Mapped[str] = mapped_column(String(32))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    renewal_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    server_generated_key: Mapped[bool] = mapped_column(Boolean)
    is_ca: Mapped[bool] = mapped_column(Boolean)
    revoked_reason: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    invalidity_date: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class UsageRow(Base):
    __tablename__ = "ca_usage"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    ca_name: Mapped[str] = mapped_column(String(64), index=True)
    reported_by: Mapped[str] = mapped_column(String(256))
    reported_at: Mapped[int] = mapped_column(BigInteger)
    in_use: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text)


class SignatureCountRow(Base):
    __tablename__ = "ca_signature_counts"

    ca_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_label: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class OcspResponderRow(Base):
    """The delegated OCSP responder of a CA (migration ``0005_ocsp_responder``); no row: the CA
    key signs its OCSP answers."""

    __tablename__ = "ca_ocsp_responders"

    ca_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_label: Mapped[str] = mapped_column(String(128))
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # DER
    created_at: Mapped[int] = mapped_column(BigInteger)
