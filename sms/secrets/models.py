"""Tables of the secrets feature (SQL backend). Values exist here only as ciphertext."""
from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base


class DomainRow(Base):
    __tablename__ = "secret_domains"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    key_version: Mapped[int] = mapped_column(Integer)
    max_versions: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DomainKeyRow(Base):
    __tablename__ = "secret_domain_keys"

    domain_id: Mapped[str] = mapped_column(String(36), ForeignKey("secret_domains.id", ondelete="CASCADE"),
                                           primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class SecretRow(Base):
    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("domain_id", "name", name="uq_secrets_domain_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    domain_id: Mapped[str] = mapped_column(String(36), ForeignKey("secret_domains.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    current_version: Mapped[int] = mapped_column(Integer)
    max_versions: Mapped[int | None] = mapped_column(Integer, nullable=True)


class VersionRow(Base):
    __tablename__ = "secret_versions"

    secret_id: Mapped[int] = mapped_column(Integer, ForeignKey("secrets.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    destroyed: Mapped[bool] = mapped_column(Boolean, default=False)
    key_version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class ReferenceRow(Base):
    """One-time references: only the SHA-256 of the reference is kept."""

    __tablename__ = "secret_refs"

    ref_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    domain: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    created_by: Mapped[str] = mapped_column(String(256))
