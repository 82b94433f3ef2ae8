"""Service fixtures: the app on SQLite and on the real PostgreSQL server.

PostgreSQL: ``CSM_TEST_PG_URL`` (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
Each app gets its own schema, so parallel runs never see each other's rows. When the server
is unreachable the PostgreSQL variants are skipped, unless ``CSM_REQUIRE_PG=1`` (CI), which
turns that into a failure.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from sms import db
from sms.config import Settings
from sms.runtime import AUDIT_MAC_KEY, Services, build_services

PG_URL = os.environ.get("CSM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_pg_ok: bool | None = None


def pg_available() -> bool:
    global _pg_ok
    if _pg_ok is None:
        try:
            eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with eng.connect() as c:
                c.execute(text("SELECT 1"))
            eng.dispose()
            _pg_ok = True
        except Exception:  # noqa: BLE001
            _pg_ok = False
    return _pg_ok


def require_pg() -> None:
    if not pg_available():
        if os.environ.get("CSM_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL is required (CSM_REQUIRE_PG=1) but {PG_URL} is unreachable")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")


class PgSchema:
    """A private schema in the test database, dropped at the end."""

    def __init__(self) -> None:
        self.name = "csm_t_" + secrets.token_hex(5)
        admin = create_engine(PG_URL)
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{self.name}"'))
        admin.dispose()

    def engine(self) -> Any:
        return db.make_engine(PG_URL, connect_args={"options": f"-csearch_path={self.name}"})

    def drop(self) -> None:
        admin = create_engine(PG_URL)
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_pg()
    return str(request.param)


@pytest.fixture
def make_services(keystore: Any, tmp_path: Path) -> Iterator[Any]:
    """Factory: Services on a fresh database of the given backend, sharing the session token."""
    created: list[tuple[Services, PgSchema | None]] = []

    def _make(backend: str = "sqlite", **overrides: Any) -> Services:
        data_dir = tmp_path / f"data-{len(created)}"
        schema = None
        if backend == "postgres":
            require_pg()
            schema = PgSchema()
            engine = schema.engine()
            settings = Settings(data_dir=str(data_dir), plain_http=True, database_url=PG_URL, **overrides)
        else:
            settings = Settings(data_dir=str(data_dir), plain_http=True, **overrides)
            engine = db.make_engine(settings.effective_database_url)
        svc = build_services(settings, engine=engine, keystore=keystore)
        db.migrate(engine)
        if not keystore.exists(AUDIT_MAC_KEY):
            from hsm import DuplicateLabel, KeyType

            try:
                keystore.generate(AUDIT_MAC_KEY, KeyType.AES_256)
            except DuplicateLabel:
                pass
        created.append((svc, schema))
        return svc

    yield _make
    for svc, schema in created:
        svc.audit.close()
        svc.engine.dispose()
        if schema is not None:
            schema.drop()


@pytest.fixture
def services(make_services: Any, backend: str) -> Services:
    return make_services(backend)


@pytest.fixture
def app(services: Services) -> Any:
    from sms.app import create_app

    return create_app(services=services)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def root_token(services: Services) -> str:
    token, _ = services.auth.create_token(root=True, display_name="test-root")
    return token


@pytest.fixture
def root_headers(root_token: str) -> dict[str, str]:
    return {"X-CSM-Token": root_token}
