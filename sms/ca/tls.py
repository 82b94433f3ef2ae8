"""The service's own TLS certificate from one of its CAs (settings ``tls_ca`` + ``tls_profile``).

:func:`sms.tls.ensure_service_cert` decides who issues the service certificate; when
``tls_ca`` names a CA it calls :func:`ensure_server_cert_from_ca`, which issues the server
certificate under that CA's profile
(software key written mode 0600, as the TLS stack needs a file; certificate + chain next to
it) and appends the CA's root to ``<data_dir>/tls/ca.crt`` so clients that trust that file
keep working. Re-issued when a third of the lifetime is left, or when another issuer signed
the current certificate.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca import CaError, IssueRequest

from ..config import Settings
from ..errors import ConfigError
from ..tls import TlsFiles, _write_private, server_sans
from .wiring import ca_engine

REQUESTER = "csm:server-tls"


def _current_is_good(settings: Settings, issuer: x509.Certificate) -> bool:
    path = settings.tls_cert_path
    if not path.exists() or not settings.tls_key_path.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return False
    if cert.issuer != issuer.subject:
        return False
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) >= life / 3


def ensure_server_cert_from_ca(settings: Settings, svc: Any, *, force: bool = False) -> TlsFiles:
    """Issue (or keep) the server certificate from CA ``settings.tls_ca`` (which must be set);
    the CA errors (unknown CA or profile, profile violations) become one
    :class:`~sms.errors.ConfigError` for the caller to report."""
    try:
        return _ensure(settings, svc, force)
    except CaError as exc:
        raise ConfigError(f"tls_ca={settings.tls_ca!r}, tls_profile={settings.tls_profile!r}: {exc}") from None


def _ensure(settings: Settings, svc: Any, force: bool) -> TlsFiles:
    engine = ca_engine(svc)
    record = engine.get_ca(settings.tls_ca)
    ca_file = settings.tls_dir / "ca.crt"
    if not force and _current_is_good(settings, record.certificate):
        cert = x509.load_pem_x509_certificate(settings.tls_cert_path.read_bytes())
        return TlsFiles(ca_file, settings.tls_cert_path, settings.tls_key_path, cert.not_valid_after_utc, False)
    key = ec.generate_private_key(ec.SECP256R1())
    cn = settings.host if settings.host and not settings.host.startswith(("0.", "::")) else "localhost"
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .add_extension(x509.SubjectAlternativeName(server_sans(settings)), critical=False)
           .sign(key, hashes.SHA256()))
    issued = engine.issue(IssueRequest(ca=record.name, profile=settings.tls_profile, csr=csr, requester=REQUESTER,
                                       validity=dt.timedelta(days=settings.tls_cert_days)))
    _write_private(settings.tls_key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    settings.tls_cert_path.parent.mkdir(parents=True, exist_ok=True)
    settings.tls_cert_path.write_bytes(issued.pem(include_root=False))
    root_pem = record.chain[-1].public_bytes(serialization.Encoding.PEM)
    trusted = ca_file.read_bytes() if ca_file.exists() else b""
    if root_pem not in trusted:
        ca_file.write_bytes(trusted + root_pem)
    return TlsFiles(ca_file, settings.tls_cert_path, settings.tls_key_path, issued.certificate.not_valid_after_utc,
                    True)


__all__ = ["ensure_server_cert_from_ca"]
