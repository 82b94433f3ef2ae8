"""client_sdk: talks to csm over HTTP (REST and CMP). Imports nothing of the server packages."""
from __future__ import annotations

from .client import CsmClient
from .cmp import CmpClient, CmpError
from .errors import CsmApiError

__all__ = ["CmpClient", "CmpError", "CsmApiError", "CsmClient"]
