"""client_sdk: talks to csm over HTTP (REST and CMP). Imports nothing of the server packages.

``from client_sdk import CsmClient`` for the REST API; the CMP client and codec are the
subpackage ``client_sdk.cmp`` (``from client_sdk.cmp import CmpClient``), imported only by those
who use it: its ASN.1 modules take about a second to load, which a service that only reads its
secrets (or a ``csm`` CLI call) should not pay.
"""
from __future__ import annotations

from .client import CsmClient
from .errors import CsmApiError

__all__ = ["CsmApiError", "CsmClient"]
