"""Liveness and readiness."""
from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from . import db
from .web import services

blp = Blueprint("health", __name__, url_prefix="/v1/sys", description="Liveness and readiness")


def readiness() -> tuple[dict[str, Any], bool]:
    svc = services()
    report: dict[str, Any] = {}
    ok = True
    try:
        db.ping(svc.engine)
        report["database"] = {"ok": True, "backend": svc.engine.dialect.name}
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        ok = False
        report["database"] = {"ok": False, "backend": svc.engine.dialect.name, "error": type(exc).__name__}
    try:
        status = svc.keystore.get().status()
        report["token"] = {
            "ok": bool(status.available),
            "sealed": False,
            "label": status.token_label,
            "detail": getattr(status, "detail", "") or "",
        }
        ok = ok and bool(status.available)
    except Exception as exc:  # noqa: BLE001
        import hsm

        sealed = isinstance(exc, (hsm.SealError, hsm.WrongPin))
        ok = False
        report["token"] = {
            "ok": False,
            "sealed": sealed,
            "label": svc.settings.hsm_token_label,
            "detail": "sealed: the token PIN is not available" if sealed else "the key token is unavailable",
        }
    report["sealed"] = report["token"]["sealed"]
    report["status"] = "ready" if ok else "unavailable"
    return report, ok


@blp.route("/health")
class Health(MethodView):
    @blp.response(200)
    def get(self) -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}


@blp.route("/ready")
class Ready(MethodView):
    @blp.response(200)
    @blp.alt_response(503, description="Not ready: database or token unavailable, or sealed")
    def get(self) -> Any:
        """Readiness: the database answers and the key token is logged in and available."""
        report, ok = readiness()
        return report, (200 if ok else 503)
