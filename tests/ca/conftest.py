"""Fixtures for the CA engine tests: an engine over the real SoftHSM token (session ``keystore``)
and a fresh in-memory repository per test, CSR helpers, the real openssl binary, pkilint."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca import CaEngine, CaRecord, CreateIntermediateRequest, CreateRootRequest, MemoryRepository
from hsm import KeyStore, KeyType

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
CRL_URL = "http://pki.example.com/crl/{ca}.crl"
OCSP_URL = "http://pki.example.com/ocsp/{ca}"
ISSUERS_URL = "http://pki.example.com/ca/{ca}.crt"


class Clock:
    """A settable clock for the engine (aware UTC)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + self.offset

    def advance(self, delta: dt.timedelta) -> None:
        self.offset += delta


@pytest.fixture
def repo() -> MemoryRepository:
    return MemoryRepository()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(keystore: KeyStore, repo: MemoryRepository, clock: Clock) -> CaEngine:
    return CaEngine(keys=keystore, cas=repo, certificates=repo, clock=clock)


@pytest.fixture
def root(engine: CaEngine) -> CaRecord:
    """An EC P-256 root with the built-in profiles (URLs set)."""
    record = engine.create_root(CreateRootRequest(name="root", subject="CN=csm Test Root,O=csm,C=DE"))
    install(engine, "root")
    return record


@pytest.fixture
def sub(engine: CaEngine, root: CaRecord) -> CaRecord:
    """An EC P-256 intermediate under ``root`` with the built-in profiles."""
    record = engine.create_intermediate(CreateIntermediateRequest(
        name="sub", parent="root", subject="CN=csm Test Issuing CA,O=csm,C=DE",
        crl_url=CRL_URL.format(ca="root"), ocsp_url=OCSP_URL.format(ca="root"),
        ca_issuers_url=ISSUERS_URL.format(ca="root")))
    install(engine, "sub")
    return record


def install(engine: CaEngine, ca: str) -> None:
    engine.install_builtin_profiles(ca, crl_url=CRL_URL.format(ca=ca), ocsp_url=OCSP_URL.format(ca=ca),
                                    ca_issuers_url=ISSUERS_URL.format(ca=ca))


# -- CSRs -----------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def leaf_key(key_type: KeyType = KeyType.EC_P256) -> Any:
    """Client keys are the client's business: plain software keys, cached per type."""
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(65537, int(key_type.value.split("-")[1]))


def name(cn: str | None = None, **attrs: str) -> x509.Name:
    oids = {"O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "C": NameOID.COUNTRY_NAME,
            "L": NameOID.LOCALITY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
            "emailAddress": NameOID.EMAIL_ADDRESS, "title": NameOID.TITLE}
    items = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []
    items += [x509.NameAttribute(oids[k], v) for k, v in attrs.items()]
    return x509.Name(items)


def make_csr(subject: x509.Name, *, dns: Sequence[str] = (), ips: Sequence[str] = (),
             sans: Iterable[x509.GeneralName] = (), key: Any = None,
             extensions: Sequence[tuple[x509.ExtensionType, bool]] = (), pem: bool = True) -> bytes:
    import ipaddress

    key = key if key is not None else leaf_key()
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += list(sans)
    b = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical)
    csr = b.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


# -- openssl ----------------------------------------------------------------------------------------------

def openssl(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=30, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def write_pem(path: Path, *objs: Any) -> Path:
    data = b""
    for o in objs:
        data += o if isinstance(o, bytes) else o.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(data)
    return path


def openssl_verify(tmp: Path, leaf: x509.Certificate, chain: Sequence[x509.Certificate], *,
                   purpose: str | None = None, crls: Sequence[bytes] = ()) -> subprocess.CompletedProcess[str]:
    """``openssl verify`` with the self-signed member of ``chain`` as the only trust anchor."""
    roots = [c for c in chain if c.subject == c.issuer]
    inter = [c for c in chain if c.subject != c.issuer]
    args: list[str | Path] = ["verify", "-x509_strict", "-CAfile", write_pem(tmp / "anchor.pem", *roots)]
    if inter:
        args += ["-untrusted", write_pem(tmp / "untrusted.pem", *inter)]
    if purpose:
        args += ["-purpose", purpose]
    for i, crl in enumerate(crls):
        args += ["-crl_check", "-CRLfile", write_pem(tmp / f"crl{i}.pem", crl)]
    args.append(write_pem(tmp / "leaf.pem", leaf))
    return openssl(*args)


# -- pkilint (DigiCert), through its Python API (the CLIs do the same, slower) ---------------------------------

@lru_cache(maxsize=1)
def _pkilint() -> dict[str, Any]:
    from pkilint import loader, pkix
    from pkilint.pkix import certificate, crl, extension, ocsp
    from pkilint.pkix import name as pname

    cert_validator = certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(pname.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
        [certificate.create_issuer_validator_container([]), certificate.create_validity_validator_container(),
         certificate.create_subject_validator_container([]), certificate.create_extensions_validator_container([]),
         certificate.create_spki_validator_container([])])
    crl_validator = crl.create_pkix_crl_validator_container(
        [pkix.create_attribute_decoder(pname.ATTRIBUTE_TYPE_MAPPINGS),
         pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS)],
        [crl.create_issuer_validator_container([]), crl.create_validity_validator_container([]),
         crl.create_extensions_validator_container([])])
    ocsp_validator = ocsp.create_pkix_ocsp_response_validator_container(
        [ocsp.create_response_decoder(), pkix.create_attribute_decoder(pname.ATTRIBUTE_TYPE_MAPPINGS),
         pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS)], [])
    return {
        "cert": (loader.RFC5280CertificateDocumentLoader(), cert_validator),
        "crl": (loader.RFC5280CertificateListDocumentLoader(), crl_validator),
        "ocsp": (loader.RFC6960OCSPResponseDocumentLoader(), ocsp_validator),
    }


def pkilint_findings(kind: str, der: bytes) -> list[str]:
    """pkilint findings at WARNING or above for a DER certificate / CRL / OCSP response."""
    from pkilint.validation import ValidationFindingSeverity

    doc_loader, validator = _pkilint()[kind]
    doc = doc_loader.load_der_document(der, kind)
    out = []
    for result in validator.validate(doc.root):
        for fd in result.finding_descriptions:
            if fd.finding.severity <= ValidationFindingSeverity.WARNING:
                out.append(f"{fd.finding.code} ({fd.finding.severity.name}): {fd.message} @ {result.node.path}")
    return out


@pytest.fixture
def lint() -> Callable[[str, bytes], list[str]]:
    return pkilint_findings
