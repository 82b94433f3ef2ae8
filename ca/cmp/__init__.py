"""CMP server protocol logic for csm's CA (no HTTP, no SQL): :class:`CmpServer` and the narrow
collaborator Protocols it needs (:class:`Issuer`, :class:`TransactionStore`). The message codec is
shared with clients and lives in :mod:`client_sdk.cmp`."""
from __future__ import annotations

from .interfaces import (
    EC_P256,
    EC_P384,
    RSA,
    AuthKind,
    CmpProfileConfig,
    IssuedCertificate,
    Issuer,
    IssueRequest,
    KeyPairType,
    Requester,
    ResponseSigner,
    RootCaKeyUpdate,
    Transaction,
    TransactionState,
    TransactionStore,
)
from .server import CmpServer

__all__ = [
    "EC_P256", "EC_P384", "RSA", "AuthKind", "CmpProfileConfig", "CmpServer", "IssueRequest", "IssuedCertificate",
    "Issuer", "KeyPairType", "Requester", "ResponseSigner", "RootCaKeyUpdate", "Transaction", "TransactionState",
    "TransactionStore",
]
