"""Tables of the CMP feature. Shared secrets exist here only as token AES-GCM ciphertext."""
from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base


class CmpProfileRow(Base):
    __tablename__ = "cmp_profiles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ca_name: Mapped[str] = mapped_column(String(64))
    cert_profile: Mapped[str] = mapped_column(String(64))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[str] = mapped_column(Text)  # JSON: the protocol options (see store.CmpProfile)
    trust_anchors: Mapped[str] = mapped_column(Text, default="")  # PEM bundle
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(Integer, default=1)


class CmpSecretRow(Base):
    """A PBM shared secret, sealed with a token key; the AAD binds profile, reference and key version."""

    __tablename__ = "cmp_secrets"

    profile: Mapped[str] = mapped_column(String(64), ForeignKey("cmp_profiles.name", ondelete="CASCADE"),
                                         primary_key=True)
    reference: Mapped[str] = mapped_column(String(128), primary_key=True)  # senderKID (text)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class CmpTransactionRow(Base):
    """One CMP transaction; (profile, transaction_id) is unique, so a replayed ID fails in the database."""

    __tablename__ = "cmp_transactions"
    __table_args__ = (Index("ix_cmp_transactions_state_deadline", "state", "confirm_deadline"),)

    profile: Mapped[str] = mapped_column(String(64), primary_key=True)
    transaction_id: Mapped[str] = mapped_column(String(256), primary_key=True)  # hex
    state: Mapped[str] = mapped_column(String(24))
    request_type: Mapped[str] = mapped_column(String(16))
    server_nonce: Mapped[bytes] = mapped_column(LargeBinary)
    requester: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    cert_req_id: Mapped[int] = mapped_column(Integer, default=0)
    issue_request: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, for held requests
    cert_serial: Mapped[str | None] = mapped_column(String(42), nullable=True, index=True)  # hex
    certificate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # DER
    chain: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # DER, length-prefixed
    confirm_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    implicit_confirm: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
