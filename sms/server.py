"""Run the production WSGI server: granian (default, fastest here) or gunicorn (client-cert identities).

The master process never loads the PKCS#11 module; each worker imports ``sms.wsgi`` and
opens its own key-store context lazily, after the fork.
"""
from __future__ import annotations

from typing import Any

from .config import Settings
from .errors import ConfigError


def run_server(settings: Settings) -> None:
    cert = None if settings.plain_http else settings.tls_cert_path
    key = None if settings.plain_http else settings.tls_key_path
    if settings.server == "gunicorn":
        _run_gunicorn(settings, cert, key)
        return
    from granian import Granian
    from granian.constants import Interfaces

    kwargs: dict[str, Any] = dict(
        target="sms.wsgi:app", address=settings.host, port=settings.port, interface=Interfaces.WSGI,
        workers=settings.workers, blocking_threads=settings.threads, log_access=False,
        respawn_failed_workers=True,
    )
    if cert is not None:
        kwargs.update(ssl_cert=cert, ssl_key=key)
        if settings.tls_client_ca:
            kwargs.update(ssl_ca=settings.tls_client_ca, ssl_client_verify=settings.tls_client_required)
    Granian(**kwargs).serve()


def _run_gunicorn(settings: Settings, cert: Any, key: Any) -> None:
    import ssl

    from gunicorn.app.base import BaseApplication

    options: dict[str, Any] = {
        "bind": f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": "gthread",
        "preload_app": False,
        "accesslog": None,
        "loglevel": settings.log_level.lower(),
    }
    if cert is not None:
        options.update(certfile=str(cert), keyfile=str(key))
        if settings.tls_client_ca:
            options.update(ca_certs=settings.tls_client_ca,
                           cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_required else ssl.CERT_OPTIONAL)

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for k, v in options.items():
                self.cfg.set(k, v)

        def load(self) -> Any:
            from .wsgi import app

            return app

    if not options["bind"]:
        raise ConfigError("no bind address")
    App().run()
