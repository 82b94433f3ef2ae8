"""The engine behind the CMP server (EngineIssuer): ir/kur/rr from the SDK's CmpClient through
CmpServer into a CA whose key is in the token; profile violations come back as badCertTemplate;
the results show up in the engine's inventory, CRL and counters."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca import CaEngine, CaRecord, CertificateQuery, CrlPublisher, SignatureKind
from ca.cmp import CmpProfileConfig, CmpServer, ResponseSigner
from ca.cmp_issuer import EngineIssuer
from client_sdk import cmp
from client_sdk.cmp import errors
from tests.ca.cmp.doubles import MemoryTransactions

from .conftest import name, openssl_verify

SECRET = b"engine-cmp-secret"
REF = b"onap-ref"


class _Direct:
    def __init__(self, server: CmpServer) -> None:
        self.server = server

    def send(self, request: bytes) -> bytes:
        return self.server.handle(request)


@pytest.fixture
def server(engine: CaEngine, root: CaRecord) -> CmpServer:
    cfg = CmpProfileConfig(name="onap", ca_name=root.certificate.subject, shared_secrets={REF: SECRET},
                           trust_anchors=(root.certificate,), response_pbm_iterations=500)
    return CmpServer(cfg, issuer=EngineIssuer(engine, "root", profiles={"onap": "tls-mutual"}),
                     transactions=MemoryTransactions(),
                     signer=ResponseSigner(engine.signing_key("root"), root.certificate, ()))


def test_cmp_enrolment_update_and_revocation_go_through_the_engine(
        engine: CaEngine, root: CaRecord, server: CmpServer, tmp_path: Path) -> None:
    pbm = cmp.CmpClient(_Direct(server), recipient=root.certificate.subject, secret=SECRET, reference=REF,
                        pbm_iterations=500)
    key = ec.generate_private_key(ec.SECP256R1())
    enrolled = pbm.ir(key, subject=name("onap-sdnc"), extensions=[x509.Extension(
        x509.SubjectAlternativeName.oid, False, x509.SubjectAlternativeName([x509.DNSName("sdnc.onap.svc")]))])
    cert = enrolled.certificate
    assert openssl_verify(tmp_path, cert, (root.certificate,), purpose="sslclient").returncode == 0
    record = engine.get_certificate(cert.serial_number)
    assert record.profile == "tls-mutual" and record.requester.startswith("cmp:onap:")
    assert record.sans == ("DNS:onap-sdnc", "DNS:sdnc.onap.svc")
    # key update, signed with the current certificate: recorded as a renewal
    signed = cmp.CmpClient(_Direct(server), recipient=root.certificate.subject, key=key, cert=cert,
                           trusted=[root.certificate])
    new_key = ec.generate_private_key(ec.SECP256R1())
    updated = signed.kur(new_key).certificate
    assert engine.get_certificate(updated.serial_number).renewal_of == cert.serial_number
    # revocation by the owner
    owner = cmp.CmpClient(_Direct(server), recipient=root.certificate.subject, key=new_key, cert=updated,
                          trusted=[root.certificate])
    owner.revoke(updated, cmp.RevocationReason.SUPERSEDED)
    crl = x509.load_der_x509_crl(CrlPublisher(engine).current("root").der)
    assert crl.get_revoked_certificate_by_serial_number(updated.serial_number) is not None
    with pytest.raises(errors.CertRevoked):
        owner.cr(ec.generate_private_key(ec.SECP256R1()), subject=name("onap-other"))
    report = engine.usage_report(ca_name="root", expiring_within=dt.timedelta(days=400))
    rows = [r for r in report.issuance if r.profile == "tls-mutual"]  # PBM and signature senders differ
    assert tuple(sum(getattr(r, f) for r in rows) for f in ("issued", "renewed", "revoked")) == (2, 1, 1)
    assert any(s.kind is SignatureKind.OTHER and s.count > 0 for s in report.signatures)  # CMP protection
    assert len(engine.search(CertificateQuery(profile="tls-mutual"))) == 2


def test_a_profile_violation_is_a_bad_cert_template_rejection(root: CaRecord, server: CmpServer) -> None:
    pbm = cmp.CmpClient(_Direct(server), recipient=root.certificate.subject, secret=SECRET, reference=REF,
                        pbm_iterations=500)
    with pytest.raises(errors.BadCertTemplate, match="key"):
        pbm.ir(rsa.generate_private_key(65537, 1024), subject=name("weak-key"))
    with pytest.raises(errors.BadCertTemplate, match="subject"):
        pbm.ir(ec.generate_private_key(ec.SECP256R1()), subject=name(None, O="no common name"))
