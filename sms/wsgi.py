"""WSGI target for granian/gunicorn workers: ``sms.wsgi:app``."""
from .app import wsgi_from_env

app = wsgi_from_env()
