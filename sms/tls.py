"""The TLS server certificate: the one private key the TLS stack needs as a file.

Who issues it is decided in one place, :func:`ensure_service_cert` (used by `csm init`,
`csm serve`'s init step and `csm tls reissue`): operator-provided files are used as they are;
with ``tls_ca`` set, that CA issues it under ``tls_profile`` (:mod:`sms.ca.tls`); otherwise
the *bootstrap CA* whose key lives in the token (``csm-bootstrap-ca``) signs it. The
bootstrap CA's certificate is ``<data_dir>/tls/ca.crt`` (clients trust it; a configured CA's
root is appended to it). The server key is generated per issuance, written mode 0600, and
short-lived (``tls_cert_days``, default 7); ``csm tls reissue`` replaces both files, and
``csm serve`` re-issues automatically when less than a third of the lifetime is left or when
the current certificate comes from another issuer.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsm import KeyType

from .config import Settings

BOOTSTRAP_CA_KEY = "csm-bootstrap-ca"


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path
    not_after: dt.datetime
    reissued: bool


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_bootstrap_ca(settings: Settings, ks: Any) -> x509.Certificate:
    """The bootstrap CA certificate, created (key in the token) if missing."""
    path = settings.tls_dir / "ca.crt"
    if not ks.exists(BOOTSTRAP_CA_KEY):
        ks.generate(BOOTSTRAP_CA_KEY, KeyType.EC_P256)
    key = ks.private_key(BOOTSTRAP_CA_KEY)
    if path.exists():
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.public_key() == key.public_key():
            return cert
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "csm"),
        x509.NameAttribute(NameOID.COMMON_NAME, "csm bootstrap CA"),
    ])
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _needs_reissue(settings: Settings, ca: x509.Certificate) -> bool:
    cert_path, key_path = settings.tls_cert_path, settings.tls_key_path
    if not cert_path.exists() or not key_path.exists():
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return True
    if cert.issuer != ca.subject:
        return True
    now = dt.datetime.now(dt.UTC)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < life / 3


def ensure_service_cert(settings: Settings, svc: Any, *, force: bool = False) -> TlsFiles:
    """The service's TLS server certificate, issued (or kept) by whoever should issue it:
    operator-provided files as they are (unless ``force``), else CA ``tls_ca`` when set, else
    the bootstrap CA. Raises :class:`~sms.errors.ConfigError` for an unusable ``tls_ca``."""
    ks = svc.keystore.get()
    ca = ensure_bootstrap_ca(settings, ks)  # tls/ca.crt, the file clients trust, in every case
    if settings.tls_cert and settings.tls_key and not force:
        cert = x509.load_pem_x509_certificate(Path(settings.tls_cert).read_bytes())
        return TlsFiles(settings.tls_dir / "ca.crt", Path(settings.tls_cert), Path(settings.tls_key),
                        cert.not_valid_after_utc, False)
    if settings.tls_ca:
        from .ca.tls import ensure_server_cert_from_ca  # the CA feature builds on this module

        return ensure_server_cert_from_ca(settings, svc, force=force)
    return _from_bootstrap_ca(settings, ks, ca, force=force)


def server_sans(settings: Settings) -> list[x509.GeneralName]:
    """The service certificate's SANs: localhost, 127.0.0.1, ::1 and the configured host."""
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                    x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        ip = ipaddress.ip_address(settings.host)
        if not ip.is_unspecified and x509.IPAddress(ip) not in sans:
            sans.append(x509.IPAddress(ip))
    except ValueError:
        if settings.host and x509.DNSName(settings.host) not in sans:
            sans.append(x509.DNSName(settings.host))
    return sans


def _from_bootstrap_ca(settings: Settings, ks: Any, ca: x509.Certificate, *, force: bool) -> TlsFiles:
    """Issue (or keep) the server certificate for ``settings.host`` from the bootstrap CA."""
    ca_path = settings.tls_dir / "ca.crt"
    if not force and not _needs_reissue(settings, ca):
        cert = x509.load_pem_x509_certificate(settings.tls_cert_path.read_bytes())
        return TlsFiles(ca_path, settings.tls_cert_path, settings.tls_key_path, cert.not_valid_after_utc, False)
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans = server_sans(settings)
    host = settings.host
    ca_key = ks.private_key(BOOTSTRAP_CA_KEY)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host or "localhost")]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=settings.tls_cert_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(settings.tls_key_path, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    settings.tls_cert_path.parent.mkdir(parents=True, exist_ok=True)
    settings.tls_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(ca_path, settings.tls_cert_path, settings.tls_key_path, cert.not_valid_after_utc, True)


