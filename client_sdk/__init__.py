"""client_sdk: talks to csm over HTTP (REST and CMP). Imports nothing of the server packages."""
from __future__ import annotations

from .client import CsmClient
from .errors import CsmApiError

__all__ = ["CsmApiError", "CsmClient"]
