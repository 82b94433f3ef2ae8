"""WSGI target for granian/gunicorn workers: ``sms.wsgi:app``."""
from .app import wsgi_from_env
from .web import buffered_body

app = buffered_body(wsgi_from_env())
