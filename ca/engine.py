"""The PKI engine: CAs (root, intermediate, imported), profiles, issuance, revocation, CRL
generation, delegated OCSP responder certificates, inventory and usage reports.

:class:`CaEngine` receives its collaborators: a :class:`~ca.signer.KeyProvider` (the token; the
engine holds key *labels*, never key bytes), a :class:`~ca.repository.CaRepository` and a
:class:`~ca.repository.CertificateRepository`. It is thread-safe when they are. No Flask, no SQL.

Decisions worth knowing (also in the method docstrings):

* Serial numbers are 159-bit random positive integers (``secrets``); a serial the repository
  reports as taken is replaced by a fresh one (a few attempts, then SerialExhausted).
* Validity: an explicitly requested lifetime beyond the CA's notAfter is a violation; the
  profile's default lifetime is clamped to the CA's notAfter (see :mod:`ca.policy`).
* Revocation: ``certificateHold`` is reversible with :meth:`CaEngine.release_hold` (the entry
  leaves the next CRL and OCSP answers good again) and can be made permanent by revoking again
  with another reason; any other reason is final (AlreadyRevoked). ``removeFromCRL`` is not a
  revocation reason (InvalidRequest): use release_hold.
* Every signature made with a CA key (certificates, CRLs, OCSP responses, CMP protection via
  :meth:`CaEngine.signing_key`) is counted in the repository per (CA, key label, kind).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID

from client_sdk.cmp import RevocationReason
from hsm.errors import HsmError, InvalidKeyMaterial
from hsm.types import KeyType

from .errors import (
    AlreadyRevoked,
    CaExists,
    CaNotFound,
    CaNotUsable,
    ConcurrentUpdate,
    CsrSignatureInvalid,
    DuplicateSerial,
    InvalidCaMaterial,
    InvalidCsr,
    InvalidRequest,
    KeyMismatch,
    NotCertificateOwner,
    NotOnHold,
    ProfileViolation,
    SerialExhausted,
    UnknownSerial,
    Violation,
    ViolationCode,
)
from .policy import (
    Plan,
    distribution_extensions,
    evaluate,
    issuer_ski,
    profile_extensions,
    san_strings,
    subject_extensions,
)
from .profiles import Profile, builtin_profiles
from .repository import CaRepository, CertificateRepository
from .signer import KeyProvider, SigningKey, counting_key, signature_hash
from .types import (
    CaRecord,
    CertificateQuery,
    CertificateRecord,
    CrlRecord,
    CreateIntermediateRequest,
    CreateRootRequest,
    ExportFormat,
    ImportCaRequest,
    IssueRequest,
    KeyIssueRequest,
    Revocation,
    RevokeRequest,
    ServerKeygenRequest,
    SignatureKind,
    UsageRecord,
    UsageReport,
    UsageUpdate,
    key_type_of,
    utcnow,
)

log = logging.getLogger(__name__)

SERIAL_BITS: Final = 159
MAX_CSR_BYTES: Final = 64 * 1024
CA_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
SUB_CA_PROFILE: Final = "_sub-ca"  # profile name recorded for subordinate CA certificates
OCSP_PROFILE: Final = "_ocsp-responder"  # ... and for delegated OCSP responder certificates
MIN_P12_PASSWORD: Final = 8
P12_KDF_ROUNDS: Final = 100_000


def random_serial() -> int:
    """A positive serial of at most 159 bits (fits RFC 5280's 20 octets with a 0 sign bit)."""
    while True:
        n = secrets.randbits(SERIAL_BITS)
        if n >= 1 << 64:  # at least 64 bits of entropy actually used (and never 0)
            return n


def encode_certificates(certificates: Sequence[x509.Certificate], fmt: ExportFormat) -> bytes:
    """Encode certificates as PEM (concatenated), DER (exactly one certificate) or PKCS#7
    certs-only (DER or PEM)."""
    certs = list(certificates)
    if not certs:
        raise ValueError("no certificates to encode")
    if fmt is ExportFormat.PEM:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if fmt is ExportFormat.DER:
        if len(certs) != 1:
            raise ValueError("DER holds exactly one certificate; use PEM or PKCS#7 for a chain")
        return certs[0].public_bytes(serialization.Encoding.DER)
    if fmt is ExportFormat.PKCS7_DER:
        return pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
    if fmt is ExportFormat.PKCS7_PEM:
        return pkcs7.serialize_certificates(certs, serialization.Encoding.PEM)
    raise ValueError(f"unknown format {fmt!r}")


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from a PEM bundle or one DER certificate (ValueError otherwise)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


@dataclass(frozen=True)
class IssuedCertificate:
    """A new certificate, its stored record and its chain (issuing CA first, root last)."""

    record: CertificateRecord
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    def pem(self, *, with_chain: bool = True, include_root: bool = False) -> bytes:
        """The certificate in PEM, followed (by default) by the intermediates; the self-signed
        root only if ``include_root``."""
        return encode_certificates(self._bundle(with_chain, include_root), ExportFormat.PEM)

    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def pkcs7(self, *, include_root: bool = True, pem: bool = False) -> bytes:
        """Certificate and chain as PKCS#7 certs-only."""
        return encode_certificates(self._bundle(True, include_root),
                                   ExportFormat.PKCS7_PEM if pem else ExportFormat.PKCS7_DER)

    def _bundle(self, with_chain: bool, include_root: bool) -> list[x509.Certificate]:
        out = [self.certificate]
        if with_chain:
            out += [c for c in self.chain if include_root or c.subject != c.issuer]
        return out


@dataclass(frozen=True)
class ServerKeyBundle:
    """Result of server-side key generation: the PKCS#12 (key, certificate, chain) encrypted with
    the caller's password (PBES2/AES-256-CBC, PBKDF2-SHA256, HMAC-SHA256). The engine kept no
    copy of the key."""

    issued: IssuedCertificate
    pkcs12: bytes = b""

    def __repr__(self) -> str:
        return f"ServerKeyBundle(serial={self.issued.record.serial:#x}, pkcs12=<{len(self.pkcs12)} bytes>)"


@dataclass(frozen=True)
class ResponderCredential:
    """A delegated OCSP responder: its certificate (issued by ``ca_name``, id-kp-OCSPSigning,
    ocsp-nocheck) and the token label of its key. Store it to re-create the responder."""

    ca_name: str
    key_label: str
    certificate_der: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.certificate_der)


def _name(value: x509.Name | str, field: str) -> x509.Name:
    if isinstance(value, x509.Name):
        return value
    if isinstance(value, str):
        try:
            return x509.Name.from_rfc4514_string(value)
        except ValueError as exc:
            raise InvalidRequest(field, f"not an RFC 4514 name: {exc}") from None
    raise TypeError(f"{field} must be an x509.Name or an RFC 4514 string")


def _check_ca_name(name: str) -> None:
    if not isinstance(name, str) or not CA_NAME.fullmatch(name):
        raise InvalidRequest("name", "CA names match [a-z0-9][a-z0-9._-]{0,62}")


def parse_csr(data: bytes | x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    """Parse (PEM or DER) and verify a CSR's self-signature. Raises InvalidCsr or
    CsrSignatureInvalid."""
    return _read_csr(data).csr


@dataclass(frozen=True)
class _Csr:
    """A verified CSR and its parts, each decoded once."""

    csr: x509.CertificateSigningRequest
    public_key: PublicKeyTypes
    subject: x509.Name
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]


def _read_csr(data: bytes | x509.CertificateSigningRequest) -> _Csr:
    if isinstance(data, x509.CertificateSigningRequest):
        csr = data
    else:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("csr must be bytes or a CertificateSigningRequest")
        raw = bytes(data)
        if not raw or len(raw) > MAX_CSR_BYTES:
            raise InvalidCsr(f"must be 1..{MAX_CSR_BYTES} bytes")
        try:
            if raw.lstrip().startswith(b"-----BEGIN"):
                csr = x509.load_pem_x509_csr(raw)
            else:
                csr = x509.load_der_x509_csr(raw)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidCsr(f"not a PKCS#10 request ({exc})") from None
    try:
        valid = csr.is_signature_valid
        out = _Csr(csr=csr, public_key=csr.public_key(), extensions=tuple(csr.extensions), subject=csr.subject)
        out.subject.rdns  # noqa: B018 - force decoding
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise InvalidCsr(str(exc)) from None
    if not valid:
        raise CsrSignatureInvalid()
    return out


@dataclass(frozen=True)
class _Issuer:
    """What every certificate a CA record signs repeats, derived once per record object (a
    repository hands out a new object when the CA changes, which drops this)."""

    record: CaRecord
    subject: x509.Name
    not_before: dt.datetime
    not_after: dt.datetime
    ski: x509.SubjectKeyIdentifier
    signer: SigningKey
    hash_alg: hashes.SHA256 | hashes.SHA384


@dataclass(frozen=True)
class _Template:
    """A certificate builder holding the issuer name and the extensions a profile gives every
    certificate of one key type, for one issuer record and one profile object."""

    issuer: _Issuer
    profile: Profile
    builder: x509.CertificateBuilder


_CACHE_LIMIT: Final = 1024  # issuers / templates kept per engine (all dropped when exceeded)


class CaEngine:
    """See the module docstring. Collaborators are passed in; ``clock`` and ``serial_source``
    exist for tests."""

    def __init__(self, *, keys: KeyProvider, cas: CaRepository, certificates: CertificateRepository,
                 clock: Callable[[], dt.datetime] = utcnow, serial_source: Callable[[], int] = random_serial,
                 serial_attempts: int = 5) -> None:
        self._keys = keys
        self._cas = cas
        self._certs = certificates
        self._clock = clock
        self._serial_source = serial_source
        self._serial_attempts = serial_attempts
        self._lock = threading.Lock()
        self._key_cache: dict[tuple[str, str, SignatureKind], SigningKey] = {}
        self._issuers: dict[str, _Issuer] = {}
        self._templates: dict[tuple[str, str, KeyType], _Template] = {}

    @property
    def certificates(self) -> CertificateRepository:
        return self._certs

    @property
    def cas(self) -> CaRepository:
        return self._cas

    def now(self) -> dt.datetime:
        return self._clock().astimezone(dt.timezone.utc).replace(microsecond=0)

    # -- keys ---------------------------------------------------------------------------------------------
    def signing_key(self, ca_name: str, kind: SignatureKind = SignatureKind.OTHER) -> SigningKey:
        """The CA's token key as a cryptography private key whose signatures are counted under
        ``kind`` (e.g. for the CMP ResponseSigner). CaNotFound for an unknown CA."""
        ca = self._cas.get_ca(ca_name)
        return self._key(ca.name, ca.key_label, kind)

    def _key(self, ca_name: str, label: str, kind: SignatureKind) -> SigningKey:
        k = (ca_name, label, kind)
        key = self._key_cache.get(k)
        if key is None:
            inner = self._keys.private_key(label)
            certs = self._certs
            key = counting_key(inner, lambda: certs.count_signature(ca_name, label, kind))
            with self._lock:
                self._key_cache[k] = key
        return key

    def _issuer(self, ca: CaRecord) -> _Issuer:
        """The signing context of ``ca``, rebuilt when the repository returns another record."""
        issuer = self._issuers.get(ca.name)
        if issuer is not None and issuer.record is ca:
            return issuer
        cert = ca.certificate
        issuer = _Issuer(record=ca, subject=cert.subject, not_before=cert.not_valid_before_utc,
                         not_after=cert.not_valid_after_utc, ski=issuer_ski(cert),
                         signer=self._key(ca.name, ca.key_label, SignatureKind.CERTIFICATE),
                         hash_alg=signature_hash(ca.key_type))
        with self._lock:
            if len(self._issuers) >= _CACHE_LIMIT:
                self._issuers.clear()
            self._issuers[ca.name] = issuer
        return issuer

    def _template(self, issuer: _Issuer, profile: Profile, key_type: KeyType) -> x509.CertificateBuilder:
        """The builder with ``issuer``'s name and ``profile``'s extensions for ``key_type`` keys,
        rebuilt when the issuer record or the profile object changes (a repository hands out a
        new object after a write)."""
        k = (issuer.record.name, profile.name, key_type)
        t = self._templates.get(k)
        if t is not None and t.issuer is issuer and t.profile is profile:
            return t.builder
        builder = x509.CertificateBuilder().issuer_name(issuer.subject)
        for ext, critical in profile_extensions(profile, key_type, issuer_ski=issuer.ski):
            builder = builder.add_extension(ext, critical)
        with self._lock:
            if len(self._templates) >= _CACHE_LIMIT:
                self._templates.clear()
            self._templates[k] = _Template(issuer=issuer, profile=profile, builder=builder)
        return builder

    def _generate_key(self, label: str | None, prefix: str, name: str, key_type: KeyType) -> str:
        if not isinstance(key_type, KeyType) or not key_type.is_asymmetric:
            raise InvalidRequest("key_type", "CA keys are RSA 2048-4096 or EC P-256/P-384")
        label = label or f"{prefix}-{name}-{secrets.token_hex(4)}"
        self._keys.generate(label, key_type)
        log.info("generated %s key %r in the token for %s", key_type.value, label, name)
        return label

    def _destroy_quietly(self, label: str) -> None:
        try:
            self._keys.destroy(label)
        except HsmError:
            log.warning("could not destroy the key %r after a failed operation", label)

    # -- CAs ------------------------------------------------------------------------------------------------
    def get_ca(self, name: str) -> CaRecord:
        """Raises CaNotFound."""
        return self._cas.get_ca(name)

    def list_cas(self) -> list[CaRecord]:
        return self._cas.list_cas()

    def _require_absent(self, name: str) -> None:
        _check_ca_name(name)
        try:
            self._cas.get_ca(name)
        except CaNotFound:
            return
        raise CaExists(name)

    def _require_usable(self, ca: CaRecord, at: dt.datetime) -> None:
        cert = ca.certificate
        if at < cert.not_valid_before_utc:
            raise CaNotUsable(ca.name, "its certificate is not valid yet")
        if at >= cert.not_valid_after_utc:
            raise CaNotUsable(ca.name, "its certificate has expired")

    def create_root(self, request: CreateRootRequest) -> CaRecord:
        """Generate a key in the token and self-sign a root CA certificate (basicConstraints
        cA critical, keyUsage keyCertSign + cRLSign + digitalSignature critical, SKI, AKI).
        Raises CaExists, InvalidRequest; HsmError from the token. On failure the new key is
        destroyed."""
        req = request
        self._require_absent(req.name)
        subject = _name(req.subject, "subject")
        if not len(subject):
            raise InvalidRequest("subject", "a CA needs a non-empty subject")
        if not dt.timedelta(days=1) <= req.validity <= dt.timedelta(days=36500):
            raise InvalidRequest("validity", "a CA lives between 1 day and 100 years")
        label = self._generate_key(req.key_label, "ca", req.name, req.key_type)
        try:
            public_key = self._keys.public_key(label)
            ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
            now = self.now()
            cert = self._sign_ca_certificate(
                subject=subject, public_key=public_key, issuer=subject, issuer_ski=ski,
                signer=self._key(req.name, label, SignatureKind.CERTIFICATE), hash_alg=signature_hash(req.key_type),
                serial=self._serial_source(), not_before=now - dt.timedelta(minutes=1),
                not_after=now + req.validity, path_length=req.path_length, urls=(None, None, None))
            record = CaRecord(name=req.name, key_label=label,
                              certificate_der=cert.public_bytes(serialization.Encoding.DER),
                              created_at=now, settings=req.settings)
            self._cas.add_ca(record)
        except BaseException:
            self._destroy_quietly(label)
            raise
        log.info("created root CA %r (%s) by %r", req.name, req.key_type.value, req.requester)
        return record

    def create_intermediate(self, request: CreateIntermediateRequest) -> CaRecord:
        """Generate a key in the token and have the existing CA ``parent`` sign a subordinate
        CA certificate (recorded in the parent's inventory, so it can be revoked and appears
        in the parent's CRL). The lifetime must end before the parent's (InvalidRequest);
        ``path_length`` must be below the parent's (CaNotUsable). Raises CaExists, CaNotFound."""
        req = request
        self._require_absent(req.name)
        parent = self._cas.get_ca(req.parent)
        now = self.now()
        self._require_usable(parent, now)
        parent_cert = parent.certificate
        bc = parent_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        path_length = req.path_length
        if bc.path_length is not None:
            if bc.path_length == 0:
                raise CaNotUsable(parent.name, "its path length allows no subordinate CA")
            if path_length is None or path_length >= bc.path_length:
                path_length = bc.path_length - 1 if path_length is None else path_length
                if path_length >= bc.path_length:
                    raise CaNotUsable(parent.name, f"its path length allows at most {bc.path_length - 1} below the new CA")
        subject = _name(req.subject, "subject")
        if not len(subject):
            raise InvalidRequest("subject", "a CA needs a non-empty subject")
        if req.validity <= dt.timedelta(0):
            raise InvalidRequest("validity", "must be positive")
        not_after = now + req.validity
        if not_after > parent_cert.not_valid_after_utc:
            raise InvalidRequest("validity", f"would end after the parent CA ({parent_cert.not_valid_after_utc.isoformat()})")
        label = self._generate_key(req.key_label, "ca", req.name, req.key_type)
        try:
            public_key = self._keys.public_key(label)
            signer = self._key(parent.name, parent.key_label, SignatureKind.CERTIFICATE)
            hash_alg = signature_hash(parent.key_type)

            def build(serial: int) -> x509.Certificate:
                return self._sign_ca_certificate(
                    subject=subject, public_key=public_key, issuer=parent_cert.subject,
                    issuer_ski=issuer_ski(parent_cert), signer=signer, hash_alg=hash_alg, serial=serial,
                    not_before=max(now - dt.timedelta(minutes=1), parent_cert.not_valid_before_utc),
                    not_after=not_after, path_length=path_length,
                    urls=(req.crl_url, req.ocsp_url, req.ca_issuers_url))

            cert, _ = self._store_new(build, lambda c: self._record(
                c, ca_name=parent.name, profile=SUB_CA_PROFILE, requester=req.requester, sans=(), now=now,
                is_ca=True))
            record = CaRecord(name=req.name, key_label=label,
                              certificate_der=cert.public_bytes(serialization.Encoding.DER),
                              chain_der=(parent.certificate_der, *parent.chain_der), parent=parent.name,
                              created_at=now, settings=req.settings)
            self._cas.add_ca(record)
        except BaseException:
            self._destroy_quietly(label)
            raise
        log.info("created intermediate CA %r under %r (%s) by %r", req.name, parent.name, req.key_type.value,
                 req.requester)
        return record

    def import_ca(self, request: ImportCaRequest) -> CaRecord:
        """Import an admin-made CA certificate and private key. The key goes straight into the
        token (``KeyProvider.import_private_key``: non-extractable, sensitive); the engine then
        checks that the token key matches the certificate (public key equality and a test
        signature verified with the certificate's key) and that the token reports it
        non-extractable. The issuer chain comes from ``parent`` (a csm CA) or ``chain``; every
        link is verified. Raises InvalidCaMaterial / KeyMismatch, CaExists, CaNotFound.

        The caller still holds the key bytes it passed in: wipe or discard them."""
        req = request
        self._require_absent(req.name)
        now = self.now()
        try:
            certs = load_certificates(req.certificate)
        except ValueError as exc:
            raise InvalidCaMaterial(f"the certificate cannot be parsed ({exc})") from None
        if len(certs) != 1:
            raise InvalidCaMaterial("give exactly one CA certificate (the chain goes into `chain`)")
        cert = certs[0]
        self._check_ca_certificate(cert, now)
        chain: list[x509.Certificate] = []
        parent: CaRecord | None = None
        if req.parent is not None:
            parent = self._cas.get_ca(req.parent)
            chain = list(parent.chain)
        else:
            for blob in req.chain:
                try:
                    chain.extend(load_certificates(blob))
                except ValueError as exc:
                    raise InvalidCaMaterial(f"a chain certificate cannot be parsed ({exc})") from None
        self._check_chain(cert, chain)
        label = req.key_label or f"ca-{req.name}-{secrets.token_hex(4)}"
        try:
            info = self._keys.import_private_key(label, req.private_key, req.password)
        except InvalidKeyMaterial as exc:
            raise InvalidCaMaterial(f"the private key cannot be imported: {exc}") from None
        try:
            if info.extractable or not info.sensitive:
                raise InvalidCaMaterial("the token did not make the imported key non-extractable")
            cert_key = cert.public_key()
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            der = serialization.Encoding.DER
            if self._keys.public_key(label).public_bytes(der, spki) != cert_key.public_bytes(der, spki):
                raise KeyMismatch("the private key does not belong to the certificate")
            self._prove_key(label, cert_key)
            record = CaRecord(name=req.name, key_label=label,
                              certificate_der=cert.public_bytes(serialization.Encoding.DER),
                              chain_der=tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
                              parent=parent.name if parent else None, imported=True, created_at=now,
                              settings=req.settings)
            self._cas.add_ca(record)
        except BaseException:
            self._destroy_quietly(label)
            raise
        log.info("imported CA %r (key now in the token as %r) by %r", req.name, label, req.requester)
        return record

    def _prove_key(self, label: str, cert_key: CertificatePublicKeyTypes) -> None:
        challenge = b"csm key match " + secrets.token_bytes(16)
        key = self._keys.private_key(label)
        try:
            if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(cert_key, ec.EllipticCurvePublicKey):
                cert_key.verify(key.sign(challenge, ec.ECDSA(hashes.SHA256())), challenge, ec.ECDSA(hashes.SHA256()))
                return
            if isinstance(key, rsa.RSAPrivateKey) and isinstance(cert_key, rsa.RSAPublicKey):
                cert_key.verify(key.sign(challenge, padding.PKCS1v15(), hashes.SHA256()), challenge,
                                padding.PKCS1v15(), hashes.SHA256())
                return
        except InvalidSignature:
            pass
        raise KeyMismatch("a test signature made with the imported key does not verify with the certificate")

    @staticmethod
    def _check_ca_certificate(cert: x509.Certificate, now: dt.datetime) -> None:
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise InvalidCaMaterial("the certificate has no basicConstraints: not a CA certificate") from None
        except ValueError as exc:
            raise InvalidCaMaterial(f"the certificate's extensions cannot be parsed ({exc})") from None
        if not bc.ca:
            raise InvalidCaMaterial("basicConstraints cA is false: not a CA certificate")
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if not ku.key_cert_sign:
                raise InvalidCaMaterial("keyUsage lacks keyCertSign")
        except x509.ExtensionNotFound:
            pass
        if key_type_of(cert.public_key()) is None:
            raise InvalidCaMaterial("the CA key must be RSA 2048/3072/4096 or EC P-256/P-384")
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise InvalidCaMaterial("the certificate is not within its validity period")

    @staticmethod
    def _check_chain(cert: x509.Certificate, chain: Sequence[x509.Certificate]) -> None:
        self_signed = cert.issuer == cert.subject
        if self_signed:
            if chain:
                raise InvalidCaMaterial("a self-signed CA takes no chain")
            links = [(cert, cert)]
        else:
            if not chain:
                raise InvalidCaMaterial("the issuer chain is missing (give `chain` or `parent`)")
            seq = [cert, *chain]
            links = list(zip(seq, seq[1:]))
            if chain[-1].issuer == chain[-1].subject:
                links.append((chain[-1], chain[-1]))
        for child, issuer in links:
            try:
                child.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                raise InvalidCaMaterial(f"{child.subject.rfc4514_string()!r} is not signed by "
                                        f"{issuer.subject.rfc4514_string()!r}") from None

    @staticmethod
    def _sign_ca_certificate(*, subject: x509.Name, public_key: CertificatePublicKeyTypes, issuer: x509.Name,
                             issuer_ski: x509.SubjectKeyIdentifier, signer: SigningKey,
                             hash_alg: hashes.SHA256 | hashes.SHA384, serial: int, not_before: dt.datetime,
                             not_after: dt.datetime, path_length: int | None,
                             urls: tuple[str | None, str | None, str | None]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                                  critical=False))
        for ext, critical in distribution_extensions(*urls):
            builder = builder.add_extension(ext, critical)
        return builder.sign(signer, hash_alg)

    def chain(self, name: str) -> tuple[x509.Certificate, ...]:
        """The CA's certificate followed by its issuers up to the root."""
        return self._cas.get_ca(name).chain

    def export_ca(self, name: str, fmt: ExportFormat = ExportFormat.PEM, *, with_chain: bool = False) -> bytes:
        """The CA certificate (and with ``with_chain`` its issuers up to the root) as PEM, DER
        (single certificate only: ValueError with a chain) or PKCS#7 certs-only."""
        ca = self._cas.get_ca(name)
        return encode_certificates(ca.chain if with_chain else (ca.certificate,), fmt)

    # -- profiles --------------------------------------------------------------------------------------------
    def put_profile(self, profile: Profile) -> Profile:
        """Create or replace a profile (its CA must exist: CaNotFound)."""
        self._cas.get_ca(profile.ca)
        self._cas.put_profile(profile)
        return profile

    def install_builtin_profiles(self, ca_name: str, *, crl_url: str | None = None, ocsp_url: str | None = None,
                                 ca_issuers_url: str | None = None) -> tuple[Profile, ...]:
        """Bind ``tls-server``, ``tls-client`` and ``tls-mutual`` to the CA (replacing any
        profiles of those names)."""
        profiles = builtin_profiles(ca_name, crl_url=crl_url, ocsp_url=ocsp_url, ca_issuers_url=ca_issuers_url)
        for p in profiles:
            self.put_profile(p)
        return profiles

    def get_profile(self, ca_name: str, name: str) -> Profile:
        return self._cas.get_profile(ca_name, name)

    def list_profiles(self, ca_name: str | None = None) -> list[Profile]:
        return self._cas.list_profiles(ca_name)

    def delete_profile(self, ca_name: str, name: str) -> None:
        self._cas.delete_profile(ca_name, name)

    # -- issuance ----------------------------------------------------------------------------------------------
    def issue(self, request: IssueRequest, *,
              before_store: Callable[[x509.Certificate], None] | None = None) -> IssuedCertificate:
        """Sign a PKCS#10 CSR under a profile. The CSR's signature is verified (InvalidCsr,
        CsrSignatureInvalid); the profile decides every extension (ProfileViolation listing all
        broken rules; nothing is signed or recorded then). Raises CaNotFound, ProfileNotFound,
        CaNotUsable, SerialExhausted; HsmError from the token.

        ``before_store`` is called with the signed certificate just before it is recorded (again
        with the new one if a serial collision makes the engine sign anew): a caller prepares
        what must be written in the certificate's own unit of work there (the CMP server stages
        its transaction row that way). If it raises, nothing is recorded and the exception
        propagates."""
        req = request
        csr = _read_csr(req.csr)
        return self._issue(ca_name=req.ca, profile_name=req.profile, subject=csr.subject,
                           public_key=csr.public_key, sans=(), extensions=csr.extensions,
                           requester=req.requester, validity=req.validity, not_after=req.not_after,
                           renewal_of=req.renewal_of, before_store=before_store)

    def issue_for_key(self, request: KeyIssueRequest, *,
                      before_store: Callable[[x509.Certificate], None] | None = None) -> IssuedCertificate:
        """Issue for a public key whose possession the caller verified (e.g. CMP POP). Same
        checks, errors and ``before_store`` as :meth:`issue` minus the CSR ones."""
        req = request
        return self._issue(ca_name=req.ca, profile_name=req.profile, subject=req.subject,
                           public_key=req.public_key, sans=req.sans, extensions=req.extensions,
                           requester=req.requester, validity=req.validity, not_after=req.not_after,
                           renewal_of=req.renewal_of, before_store=before_store)

    def issue_with_server_key(self, request: ServerKeygenRequest) -> ServerKeyBundle:
        """Server-side key generation — the LESS SAFE path, for callers that cannot make keys:
        the key pair is generated in software (not in the token, since it must be handed out),
        the certificate is issued under the profile (which must allow it), and the key is
        returned once, inside a PKCS#12 encrypted with ``request.password`` (PBES2 AES-256-CBC,
        PBKDF2-SHA256 with many rounds, SHA-256 MAC). The engine neither stores nor logs the key;
        the record notes ``server_generated_key``. Raises InvalidRequest (password shorter than
        8 characters), ProfileViolation and the errors of :meth:`issue`."""
        req = request
        if not isinstance(req.password, str) or len(req.password) < MIN_P12_PASSWORD:
            raise InvalidRequest("password", f"at least {MIN_P12_PASSWORD} characters")
        profile = self._cas.get_profile(req.ca, req.profile)
        early = []
        if not profile.allow_server_keygen:
            early.append(Violation(ViolationCode.SERVER_KEYGEN_NOT_ALLOWED, "key",
                                   "this profile does not allow server-side key generation"))
        if req.key_type not in profile.key_types:
            early.append(Violation(ViolationCode.KEY_TYPE_NOT_ALLOWED, "key", f"{req.key_type.value} is not allowed"))
        if early:
            raise ProfileViolation(profile.name, early)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if req.key_type.is_ec:
            key = ec.generate_private_key(ec.SECP384R1() if req.key_type is KeyType.EC_P384 else ec.SECP256R1())
        else:
            key = rsa.generate_private_key(65537, int(req.key_type.value.split("-")[1]))
        issued = self._issue(ca_name=req.ca, profile_name=req.profile, subject=_name(req.subject, "subject"),
                             public_key=key.public_key(), sans=req.sans, extensions=(), requester=req.requester,
                             validity=req.validity, not_after=None, renewal_of=None, server_generated=True)
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(P12_KDF_ROUNDS)
                      .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
                      .build(req.password.encode()))
        friendly = (req.friendly_name or issued.record.subject or f"{issued.record.serial:x}").encode()
        p12 = pkcs12.serialize_key_and_certificates(friendly, key, issued.certificate, list(issued.chain), encryption)
        del key
        return ServerKeyBundle(issued=issued, pkcs12=p12)

    def _issue(self, *, ca_name: str, profile_name: str, subject: x509.Name, public_key: PublicKeyTypes,
               sans: Sequence[x509.GeneralName], extensions: Sequence[x509.Extension[x509.ExtensionType]],
               requester: str, validity: dt.timedelta | None, not_after: dt.datetime | None,
               renewal_of: int | None, server_generated: bool = False,
               before_store: Callable[[x509.Certificate], None] | None = None) -> IssuedCertificate:
        ca = self._cas.get_ca(ca_name)
        profile = self._cas.get_profile(ca_name, profile_name)
        now = self.now()
        issuer = self._issuer(ca)
        if now < issuer.not_before:
            raise CaNotUsable(ca.name, "its certificate is not valid yet")
        if now >= issuer.not_after:
            raise CaNotUsable(ca.name, "its certificate has expired")
        if renewal_of is not None:
            self._certs.get(renewal_of)  # UnknownSerial if it never existed
        plan = evaluate(profile, ca_certificate=ca.certificate, subject=subject, public_key=public_key, sans=sans,
                        extensions=extensions, validity=validity, not_after=not_after, now=now,
                        server_keygen=server_generated)
        assert isinstance(public_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))  # evaluate() admits no other
        builder = (self._template(issuer, profile, plan.key_type).subject_name(plan.subject).public_key(public_key)
                   .not_valid_before(plan.not_before).not_valid_after(plan.not_after))
        for ext, critical in subject_extensions(plan, public_key=public_key):
            builder = builder.add_extension(ext, critical)
        sans_text = san_strings(plan.sans)

        def build(serial: int) -> x509.Certificate:
            return builder.serial_number(serial).sign(issuer.signer, issuer.hash_alg)

        def record(cert: x509.Certificate) -> CertificateRecord:
            return CertificateRecord(
                serial=cert.serial_number, ca_name=ca.name, profile=profile.name, requester=requester,
                subject=cert.subject.rfc4514_string(), sans=sans_text, not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc, issued_at=now, key_type=plan.key_type.value,
                der=cert.public_bytes(serialization.Encoding.DER), renewal_of=renewal_of,
                server_generated_key=server_generated)

        cert, rec = self._store_new(build, record, before_store)
        log.info("issued %#x under %s/%s for %r", rec.serial, ca.name, profile.name, requester)
        return IssuedCertificate(record=rec, certificate=cert, chain=ca.chain)

    def _record(self, cert: x509.Certificate, *, ca_name: str, profile: str, requester: str,
                sans: Sequence[x509.GeneralName], now: dt.datetime, renewal_of: int | None = None,
                server_generated: bool = False, is_ca: bool = False, plan: Plan | None = None) -> CertificateRecord:
        kt = key_type_of(cert.public_key())
        return CertificateRecord(
            serial=cert.serial_number, ca_name=ca_name, profile=profile, requester=requester,
            subject=cert.subject.rfc4514_string(), sans=san_strings(sans),
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, issued_at=now,
            key_type=kt.value if kt else "other", der=cert.public_bytes(serialization.Encoding.DER),
            renewal_of=renewal_of, server_generated_key=server_generated, is_ca=is_ca)

    def _store_new(self, build: Callable[[int], x509.Certificate],
                   make_record: Callable[[x509.Certificate], CertificateRecord],
                   before_store: Callable[[x509.Certificate], None] | None = None
                   ) -> tuple[x509.Certificate, CertificateRecord]:
        """Sign with a fresh random serial and record; on DuplicateSerial retry with another.
        ``before_store`` sees each signed certificate before its record is added."""
        for attempt in range(1, self._serial_attempts + 1):
            serial = self._serial_source()
            if not 0 < serial < 1 << SERIAL_BITS:
                raise ValueError("serial_source returned a serial outside 1..2**159-1")
            cert = build(serial)
            record = make_record(cert)
            if before_store is not None:
                before_store(cert)
            try:
                self._certs.add(record)
            except DuplicateSerial:
                log.warning("serial %#x is taken (attempt %d); retrying with a new one", serial, attempt)
                continue
            return cert, record
        raise SerialExhausted(self._serial_attempts)

    # -- inventory ------------------------------------------------------------------------------------------
    def get_certificate(self, serial: int) -> CertificateRecord:
        """Raises UnknownSerial."""
        return self._certs.get(serial)

    def search(self, query: CertificateQuery) -> list[CertificateRecord]:
        """Inventory search (``query.as_of`` defaults to now)."""
        if query.as_of is None:
            query = replace(query, as_of=self.now())
        return self._certs.search(query)

    # -- revocation -----------------------------------------------------------------------------------------
    def revoke(self, request: RevokeRequest) -> CertificateRecord:
        """Revoke by serial with an RFC 5280 reason. certificateHold can later be released or
        made permanent (revoke again with another reason); otherwise a second revocation
        raises AlreadyRevoked. Raises UnknownSerial (also if ``request.ca`` is given and the
        certificate belongs to another CA), InvalidRequest (removeFromCRL, a future or naive
        invalidity date). The next CRL and OCSP answers reflect it."""
        req = request
        reason = RevocationReason(req.reason)
        if reason is RevocationReason.REMOVE_FROM_CRL:
            raise InvalidRequest("reason", "removeFromCRL is not a revocation reason; release the hold instead")
        now = self.now()
        if req.invalidity_date is not None and (req.invalidity_date.tzinfo is None or req.invalidity_date > now):
            raise InvalidRequest("invalidity_date", "must be timezone-aware and not in the future")
        for _ in range(5):
            record = self._certs.get(req.serial)
            if req.ca is not None and record.ca_name != req.ca:
                raise UnknownSerial(req.serial)
            current = record.revocation
            if current is not None and not (current.reason is RevocationReason.CERTIFICATE_HOLD
                                            and reason is not RevocationReason.CERTIFICATE_HOLD):
                raise AlreadyRevoked(req.serial, current.reason.name)
            new = Revocation(reason=reason, revoked_at=now, revoked_by=req.requester,
                             invalidity_date=req.invalidity_date.astimezone(dt.timezone.utc).replace(microsecond=0)
                             if req.invalidity_date else None)
            try:
                updated = self._certs.set_revocation(req.serial, new, expected=current)
            except ConcurrentUpdate:
                continue
            log.info("revoked %#x of %s (%s) by %r", req.serial, record.ca_name, reason.name, req.requester)
            return updated
        raise ConcurrentUpdate(req.serial)

    def release_hold(self, serial: int, *, requester: str = "", ca: str | None = None) -> CertificateRecord:
        """Release a certificate revoked with certificateHold (it is valid again). Raises
        NotOnHold, UnknownSerial."""
        for _ in range(5):
            record = self._certs.get(serial)
            if ca is not None and record.ca_name != ca:
                raise UnknownSerial(serial)
            current = record.revocation
            if current is None or current.reason is not RevocationReason.CERTIFICATE_HOLD:
                raise NotOnHold(serial)
            try:
                updated = self._certs.set_revocation(serial, None, expected=current)
            except ConcurrentUpdate:
                continue
            log.info("released hold on %#x of %s by %r", serial, record.ca_name, requester)
            return updated
        raise ConcurrentUpdate(serial)

    # -- CRL -------------------------------------------------------------------------------------------------
    def generate_crl(self, ca_name: str) -> CrlRecord:
        """Sign a new CRL for the CA now (next CRL number, thisUpdate now, nextUpdate now +
        ``settings.crl_validity``, AKI, CRL number; entries carry the reason code except for
        unspecified, and the invalidity date if known), store it as the latest and return it.
        Usually called through :class:`ca.crl.CrlPublisher`."""
        ca = self._cas.get_ca(ca_name)
        epoch = self._certs.revocation_epoch(ca.name)  # read first: a later change forces a regeneration
        now = self.now()
        number = self._cas.next_crl_number(ca.name)
        ca_cert = ca.certificate
        next_update = now + ca.settings.crl_validity
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now).next_update(next_update)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski(ca_cert)),
                                  critical=False)
                   .add_extension(x509.CRLNumber(number), critical=False))
        for record in self._certs.list_revoked(ca.name, not_expired_at=now):
            rev = record.revocation
            assert rev is not None
            entry = x509.RevokedCertificateBuilder().serial_number(record.serial).revocation_date(rev.revoked_at)
            if rev.reason is not RevocationReason.UNSPECIFIED:
                entry = entry.add_extension(x509.CRLReason(rev.reason.to_x509()), critical=False)
            if rev.invalidity_date is not None:
                entry = entry.add_extension(x509.InvalidityDate(rev.invalidity_date.replace(tzinfo=None)),
                                            critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._key(ca.name, ca.key_label, SignatureKind.CRL), signature_hash(ca.key_type))
        record_ = CrlRecord(ca_name=ca.name, number=number, this_update=now, next_update=next_update,
                            der=crl.public_bytes(serialization.Encoding.DER), revocation_epoch=epoch)
        self._cas.save_crl(record_)
        log.info("signed CRL #%d for %s (%d entries)", number, ca.name, len(crl))
        return record_

    # -- OCSP responder certificates ---------------------------------------------------------------------
    def issue_ocsp_responder(self, ca_name: str, *, validity: dt.timedelta = dt.timedelta(days=30),
                             key_type: KeyType | None = None, key_label: str | None = None,
                             requester: str = "") -> ResponderCredential:
        """Generate a key in the token and issue a delegated OCSP responder certificate under
        the CA (digitalSignature, id-kp-OCSPSigning, id-pkix-ocsp-nocheck; lifetime clamped to
        the CA's). Recorded in the inventory with profile ``_ocsp-responder``."""
        ca = self._cas.get_ca(ca_name)
        now = self.now()
        self._require_usable(ca, now)
        ca_cert = ca.certificate
        kt = key_type or ca.key_type
        label = self._generate_key(key_label, "ocsp", ca.name, kt)
        try:
            public_key = self._keys.public_key(label)
            cn = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            base = str(cn[0].value) if cn else ca.name
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{base} OCSP Responder"[:64])])
            signer = self._key(ca.name, ca.key_label, SignatureKind.CERTIFICATE)
            not_after = min(now + validity, ca_cert.not_valid_after_utc)

            def build(serial: int) -> x509.Certificate:
                return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                        .public_key(public_key).serial_number(serial)
                        .not_valid_before(max(now - dt.timedelta(minutes=1), ca_cert.not_valid_before_utc))
                        .not_valid_after(not_after)
                        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                     key_encipherment=False, data_encipherment=False,
                                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                     encipher_only=False, decipher_only=False), critical=True)
                        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]),
                                       critical=False)
                        .add_extension(x509.OCSPNoCheck(), critical=False)
                        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                            issuer_ski(ca_cert)), critical=False)
                        .sign(signer, signature_hash(ca.key_type)))

            cert, _ = self._store_new(build, lambda c: self._record(
                c, ca_name=ca.name, profile=OCSP_PROFILE, requester=requester, sans=(), now=now))
        except BaseException:
            self._destroy_quietly(label)
            raise
        log.info("issued OCSP responder certificate %#x for %s (key %r)", cert.serial_number, ca.name, label)
        return ResponderCredential(ca_name=ca.name, key_label=label,
                                   certificate_der=cert.public_bytes(serialization.Encoding.DER))

    def responder_key(self, credential: ResponderCredential) -> SigningKey:
        """The delegated responder's token key, counting OCSP signatures under its CA. Raises
        KeyNotFound (hsm) if the key is gone."""
        return self._key(credential.ca_name, credential.key_label, SignatureKind.OCSP)

    # -- usage ------------------------------------------------------------------------------------------------
    def record_usage(self, update: UsageUpdate, *, admin: bool = False) -> UsageRecord:
        """Store "certificate ``serial`` is (not) in use on ``host``" (one statement per serial
        and host, the latest wins). Only the certificate's requester may report, unless
        ``admin``. Raises UnknownSerial, NotCertificateOwner, InvalidRequest."""
        u = update
        host = u.host.strip() if isinstance(u.host, str) else ""
        if not host or len(host) > 255 or any(ord(c) < 0x20 for c in host):
            raise InvalidRequest("host", "1..255 printable characters")
        if len(u.detail) > 1024:
            raise InvalidRequest("detail", "at most 1024 characters")
        record = self._certs.get(u.serial)
        if not admin and u.reported_by != record.requester:
            raise NotCertificateOwner(u.serial, u.reported_by)
        usage = UsageRecord(serial=u.serial, ca_name=record.ca_name, reported_by=u.reported_by, host=host,
                            reported_at=self.now(), in_use=u.in_use, detail=u.detail)
        self._certs.add_usage(usage)
        return usage

    def usage_report(self, *, ca_name: str | None = None,
                     expiring_within: dt.timedelta = dt.timedelta(days=30)) -> UsageReport:
        """Per CA, profile and requester: issued, renewed, revoked, expiring within the window;
        per CA key: signatures made by kind; the clients' usage statements."""
        if ca_name is not None:
            self._cas.get_ca(ca_name)
        now = self.now()
        return UsageReport(
            generated_at=now, expiring_within=expiring_within,
            issuance=tuple(self._certs.issuance_counts(ca_name=ca_name, now=now, expiring_within=expiring_within)),
            signatures=tuple(self._certs.signature_counts(ca_name)),
            usage=tuple(self._certs.list_usage(ca_name=ca_name)))


__all__ = [
    "CaEngine", "IssuedCertificate", "ResponderCredential", "ServerKeyBundle", "encode_certificates",
    "load_certificates", "parse_csr", "random_serial",
]
