"""The Flask application factory (staged: config → services → blueprints → error handling)."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask import Flask

from . import fastpath
from .config import Settings
from .runtime import Services, build_services
from .web import (
    DrainRefusedBody,
    ProblemApi,
    add_common_headers,
    assign_request_id,
    handle_any_exception,
    record_audit,
)

log = logging.getLogger(__name__)

# Feature blueprints: (module, attribute names). Features register here; nothing else changes.
FEATURES: list[tuple[str, tuple[str, ...]]] = [
    ("sms.health", ("blp",)),
    ("sms.auth.views", ("tokens", "policies")),
    ("sms.audit.views", ("blp",)),
    ("sms.secrets.views", ("blp",)),
    ("sms.secrets.onap", ("blp",)),
    ("sms.ca.views", ("blp",)),
    ("sms.cmp.views", ("wellknown", "blp")),
]


def create_app(settings: Settings | None = None, *, services: Services | None = None,
               features: Iterable[tuple[str, tuple[str, ...]]] | None = None) -> Flask:
    import importlib

    settings = settings or (services.settings if services else Settings())
    svc = services or build_services(settings)

    app = Flask("csm")
    app.config.update(
        API_TITLE="csm",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/v1/openapi",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/ui",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
        PROPAGATE_EXCEPTIONS=False,
        TRAP_HTTP_EXCEPTIONS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["csm"] = svc
    api = ProblemApi(app, spec_kwargs={
        "info": {"description": "Certificate and secret management backed by hardware keys."},
        "components": {"securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-CSM-Token"}}},
        "security": [{"token": []}],
    })
    app.extensions["csm_api"] = api
    for module, names in (features if features is not None else FEATURES):
        mod = importlib.import_module(module)
        for name in names:
            api.register_blueprint(getattr(mod, name))
    app.register_error_handler(Exception, handle_any_exception)
    app.before_request(assign_request_id)
    app.after_request(add_common_headers)
    app.after_request(record_audit)  # runs first (after_request is LIFO)
    app.wsgi_app = DrainRefusedBody(app.wsgi_app)  # type: ignore[method-assign]
    fastpath.install(app, svc)
    return app


def add_feature(module: str, *names: str) -> None:
    FEATURES.append((module, names))


def wsgi_from_env() -> Any:
    """Entry point for WSGI servers: settings come from CSM_EFFECTIVE_SETTINGS (set by `csm serve`)."""
    import os

    from .config import load_settings
    from .logging_setup import configure_logging

    raw = os.environ.get("CSM_EFFECTIVE_SETTINGS")
    settings = Settings.from_json(raw) if raw else load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    # Fold the audit journal from the start (also those a stopped or killed worker left), not
    # only once this worker has journaled an entry of its own.
    app.extensions["csm"].audit.start()
    return app
