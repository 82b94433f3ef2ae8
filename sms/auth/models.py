"""Tables of the auth feature: tokens (stored only as a hash) and policies."""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base


class TokenRow(Base):
    __tablename__ = "auth_tokens"

    accessor: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    policies: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of policy names
    is_root: Mapped[bool] = mapped_column(Boolean, default=False)
    parent: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    max_expires_at: Mapped[int] = mapped_column(BigInteger)
    ttl: Mapped[int] = mapped_column(Integer)
    renewable: Mapped[bool] = mapped_column(Boolean, default=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class PolicyRow(Base):
    __tablename__ = "auth_policies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    rules: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, default=1)
