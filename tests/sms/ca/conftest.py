"""Fixtures for the CA feature of the service: the SQL store on SQLite and PostgreSQL, the
engine over it (real SoftHSM token), and the app with a root token."""
from __future__ import annotations

from typing import Any

import pytest

from ca import CaEngine, MemoryRepository
from sms.ca.store import SqlCaStore
from sms.ca.wiring import ca_engine, ca_store


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_repo(request: pytest.FixtureRequest, make_services: Any) -> Any:
    """Each implementation of the repository Protocols (the in-memory reference and SQL)."""
    if request.param == "memory":
        return MemoryRepository()
    store = ca_store(make_services(request.param))
    store._flush_every = 0.0  # counters exact for the contract
    return store


@pytest.fixture
def sql_engine(services: Any) -> CaEngine:
    """The service's engine (SQL store on the ``backend`` database)."""
    return ca_engine(services)


__all__ = ["SqlCaStore"]
