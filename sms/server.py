"""Run the production WSGI server: granian (default, fastest here) or gunicorn (client-cert identities).

The master process never loads the PKCS#11 module; each worker imports ``sms.wsgi`` and
opens its own key-store context lazily, after the fork.

With ``cmp_http_port`` set, a second granian (a child process of ``csm serve``, ended with it)
serves plain HTTP on that port with :func:`cmp_only_app`: the CMP routes
(``/.well-known/cmp[/p/<profile>]``) of the same application, every other path a 404 problem
document. granian serves one listener per process, hence the child.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .config import Settings
from .errors import ConfigError, problem_for_status

CMP_PATH = "/.well-known/cmp"


def run_server(settings: Settings) -> None:
    cmp_http = _start_cmp_http(settings) if settings.cmp_http_port else None
    try:
        _run_main(settings)
    finally:
        if cmp_http is not None:
            _stop(cmp_http)


def _run_main(settings: Settings) -> None:
    cert = None if settings.plain_http else settings.tls_cert_path
    key = None if settings.plain_http else settings.tls_key_path
    if settings.server == "gunicorn":
        _run_gunicorn(settings, cert, key)
        return
    from granian import Granian
    from granian.constants import Interfaces

    kwargs: dict[str, Any] = dict(
        target="sms.wsgi:app", address=settings.host, port=settings.port, interface=Interfaces.WSGI,
        workers=settings.effective_workers, blocking_threads=settings.threads, log_access=False,
        respawn_failed_workers=True, log_dictconfig=_granian_logging(),
    )
    if cert is not None:
        kwargs.update(ssl_cert=cert, ssl_key=key)
        if settings.tls_client_ca:
            kwargs.update(ssl_ca=settings.tls_client_ca, ssl_client_verify=settings.tls_client_required)
    Granian(**kwargs).serve()


class _SizingAdviceFilter:
    """Drops granian's generic sizing warnings (more workers than CPUs, more threads than 2 x CPUs
    + 1): csm's defaults were chosen by measurement on exactly such machines (README,
    Configuration), and ``csm serve`` prints the sizing it uses instead."""

    PREFIXES = ("Configured number of workers appears to be higher", "Configuration allows spawning up to")

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def _granian_logging() -> dict[str, Any]:
    """granian's own logging configuration (``granian.log.LOGGING_CONFIG``, whose handlers
    granian's dictConfig replaces wholesale) with the filter above on its console handler."""
    import copy

    from granian.log import LOGGING_CONFIG

    handlers = copy.deepcopy(LOGGING_CONFIG["handlers"])
    handlers["console"]["filters"] = ["csm_sizing"]
    return {"filters": {"csm_sizing": {"()": "sms.server._SizingAdviceFilter"}}, "handlers": handlers}


def _run_gunicorn(settings: Settings, cert: Any, key: Any) -> None:
    import ssl

    from gunicorn.app.base import BaseApplication

    options: dict[str, Any] = {
        "bind": f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}",
        "workers": settings.effective_workers,
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


# ---- plain-HTTP CMP listener ----------------------------------------------------------------

def _parent_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the CMP listener gets SIGTERM when ``csm serve`` dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start_cmp_http(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CSM_EFFECTIVE_SETTINGS=settings.to_json())
    print(f"  CMP over plain HTTP: {settings.cmp_http_url}{CMP_PATH}", flush=True)
    return subprocess.Popen([sys.executable, "-m", "sms.server", "cmp-http"], env=env,
                            preexec_fn=_parent_death_signal if sys.platform == "linux" else None)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _serve_cmp_http(settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(target="sms.server:cmp_only_app", factory=True, address=settings.cmp_http_host or settings.host,
            port=settings.cmp_http_port, interface=Interfaces.WSGI, workers=settings.effective_workers,
            blocking_threads=settings.threads, log_access=False, respawn_failed_workers=True,
            log_dictconfig=_granian_logging()).serve()


def cmp_only_app() -> Callable[..., Any]:
    """WSGI factory for the plain-HTTP CMP listener: the CMP routes of ``sms.wsgi``'s app only."""
    from .wsgi import app

    return cmp_only(app)


def cmp_only(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: pass ``/.well-known/cmp`` and ``/.well-known/cmp/...`` to ``app``; 404 the rest."""
    pt = problem_for_status(404)

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == CMP_PATH or path.startswith(CMP_PATH + "/"):
            result: Iterable[bytes] = app(environ, start_response)
            return result
        body = json.dumps({"type": pt.uri, "title": pt.title, "status": 404, "instance": path[:256],
                           "detail": "this listener serves only CMP (/.well-known/cmp)"}).encode()
        start_response("404 NOT FOUND", [("Content-Type", "application/problem+json"),
                                         ("Content-Length", str(len(body)))])
        return [body]

    return wsgi


if __name__ == "__main__" and sys.argv[1:] == ["cmp-http"]:
    _serve_cmp_http(Settings.from_json(os.environ["CSM_EFFECTIVE_SETTINGS"]))
