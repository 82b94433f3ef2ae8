"""CmpServer in-process: every check and error path, with CmpClient and hand-built messages."""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca.cmp import CmpProfileConfig, CmpServer, ResponseSigner, RootCaKeyUpdate, TransactionState
from client_sdk import cmp
from client_sdk.cmp import builders, errors
from client_sdk.cmp.enums import FailureInfo, InfoType, PKIStatus
from tests.client_sdk.cmptools import TestPki, ec_key, name

from .doubles import MemoryIssuer, MemoryTransactions

SECRET = b"in-process-secret"
REF = b"nf-ref"


class Direct:
    def __init__(self, server: CmpServer) -> None:
        self.server = server

    def send(self, request: bytes) -> bytes:
        return self.server.handle(request)


@dataclasses.dataclass
class Env:
    pki: TestPki
    issuer: MemoryIssuer
    store: MemoryTransactions
    server: CmpServer
    client_key: Any
    client_cert: x509.Certificate

    def pbm_client(self, **kw: Any) -> cmp.CmpClient:
        return cmp.CmpClient(Direct(self.server), recipient=self.pki.ca_name, secret=SECRET, reference=REF,
                             pbm_iterations=500, **kw)

    def sig_client(self, key: Any = None, cert: x509.Certificate | None = None, **kw: Any) -> cmp.CmpClient:
        return cmp.CmpClient(Direct(self.server), recipient=self.pki.ca_name, key=key or self.client_key,
                             cert=cert or self.client_cert, trusted=[self.pki.ca_cert], **kw)

    def send(self, msg: cmp.PKIMessage) -> cmp.PKIMessage:
        return cmp.PKIMessage.decode(self.server.handle(msg.encode()))

    def ir(self, **header: Any) -> cmp.PKIMessage:
        hdr = builders.request_header(recipient=self.pki.ca_name, **header)
        return cmp.PKIMessage(hdr, cmp.IrBody((builders.cert_request(ec_key(), subject=name("nf")),)))


def make_env(tmp_path: Path, **profile: Any) -> Env:
    pki = TestPki(tmp_path, "Test CA")
    sk, sc = pki.entity("srv", "Test CMP Server")
    ck, cc = pki.entity("cl", "client1")
    issuer = MemoryIssuer(pki)
    issuer.register(cc)
    store = MemoryTransactions()
    cfg = CmpProfileConfig(name="t", ca_name=pki.ca_name, shared_secrets={REF: SECRET},
                           trust_anchors=(pki.ca_cert,), response_pbm_iterations=500, **profile)
    server = CmpServer(cfg, issuer=issuer, transactions=store, signer=ResponseSigner(sk, sc, (pki.ca_cert,)))
    return Env(pki, issuer, store, server, ck, cc)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def error_of(rsp: cmp.PKIMessage) -> cmp.PKIStatusInfo:
    assert isinstance(rsp.body, cmp.ErrorBody), rsp.body
    return rsp.body.status_info


def test_client_enrolls_updates_and_revokes(env: Env) -> None:
    e = env.pbm_client().ir(ec_key(), subject=name("nf-1"))
    assert e.certificate.subject == name("nf-1") and e.ca_pubs == (env.pki.ca_cert,)
    k2 = ec_key()
    e2 = env.sig_client().cr(k2, subject=name("nf-2"))
    k3 = ec_key()
    e3 = env.sig_client(k2, e2.certificate).kur(k3)
    assert e3.certificate.subject == name("nf-2")
    env.sig_client(k3, e3.certificate).revoke(e3.certificate, cmp.RevocationReason.SUPERSEDED)
    assert env.issuer.revoked == {e3.certificate.serial_number: cmp.RevocationReason.SUPERSEDED}
    with pytest.raises(errors.CertRevoked):  # the revoked certificate can no longer authenticate
        env.sig_client(k3, e3.certificate).cr(ec_key(), subject=name("nf-3"))
    imp = env.pbm_client(implicit_confirm=True).ir(ec_key(), subject=name("nf-imp"))
    assert imp.implicitly_confirmed


def test_implicit_confirm_is_not_granted_when_the_profile_forbids_it(tmp_path: Path) -> None:
    env = make_env(tmp_path, implicit_confirm_allowed=False)
    e = env.pbm_client(implicit_confirm=True).ir(ec_key(), subject=name("nf"))
    assert not e.implicitly_confirmed


def test_signature_response_carries_confirm_wait_time(env: Env) -> None:
    rsp = env.send(cmp.protect_with_pbm(env.ir(sender_kid=REF), SECRET, iteration_count=500))
    assert isinstance(rsp.body, cmp.IpBody) and rsp.body.responses[0].status.status is PKIStatus.ACCEPTED
    assert rsp.header.confirm_wait_time is not None
    cmp.verify_pbm(rsp, SECRET)
    assert env.store.only().state is TransactionState.WAITING_CONFIRM


def test_approval_required_holds_the_request_until_approved(tmp_path: Path) -> None:
    env = make_env(tmp_path, approval_required=True, poll_interval=7)
    waits: list[float] = []

    def approve(seconds: float) -> None:
        waits.append(seconds)
        row = env.store.only()
        assert row.state is TransactionState.PENDING_APPROVAL and env.issuer.requests == []
        env.store.update(dataclasses.replace(row, state=TransactionState.APPROVED))

    e = env.pbm_client(sleep=approve).ir(ec_key(), subject=name("nf-held"))
    assert e.certificate.subject == name("nf-held") and waits == [7]
    assert env.store.only().state is TransactionState.FINISHED


def test_rejected_approval_is_a_rejection(tmp_path: Path) -> None:
    env = make_env(tmp_path, approval_required=True)

    def reject(_: float) -> None:
        env.store.update(dataclasses.replace(env.store.only(), state=TransactionState.REJECTED, reason="no way"))

    with pytest.raises(errors.NotAuthorized, match="no way"):
        env.pbm_client(sleep=reject).ir(ec_key(), subject=name("nf"))


def test_issuer_policy_refusal_is_a_rejection_in_the_ip(env: Env) -> None:
    env.issuer.refuse = errors.BadCertTemplate("subject not allowed by profile")
    rsp = env.send(cmp.protect_with_pbm(env.ir(sender_kid=REF), SECRET))
    assert isinstance(rsp.body, cmp.IpBody)
    st = rsp.body.responses[0].status
    assert st.status is PKIStatus.REJECTION and st.fail_info == {FailureInfo.BAD_CERT_TEMPLATE}
    with pytest.raises(errors.BadCertTemplate, match="subject not allowed"):
        env.pbm_client().ir(ec_key(), subject=name("nf"))


def test_internal_failures_become_system_failure_without_details(env: Env) -> None:
    env.issuer.refuse = RuntimeError("database password is hunter2")
    rsp = env.send(cmp.protect_with_pbm(env.ir(sender_kid=REF), SECRET))
    si = error_of(rsp)
    assert si.fail_info == {FailureInfo.SYSTEM_FAILURE} and "hunter2" not in str(si)
    cmp.verify_pbm(rsp, SECRET)  # still protected for the authenticated requester


@pytest.mark.parametrize("mutate,failure", [
    (lambda e, m: cmp.protect_with_pbm(m, b"wrong"), FailureInfo.BAD_MESSAGE_CHECK),
    (lambda e, m: cmp.protect_with_pbm(m, SECRET, sender_kid=b"nobody"), FailureInfo.BAD_MESSAGE_CHECK),
    (lambda e, m: m, FailureInfo.BAD_MESSAGE_CHECK),
    (lambda e, m: cmp.protect_with_pbm(m, SECRET, iteration_count=10_000_000 // 50), FailureInfo.BAD_ALG),
    (lambda e, m: cmp.protect_with_pbm(m.replace(header=dataclasses.replace(m.header, pvno=1)), SECRET),
     FailureInfo.UNSUPPORTED_VERSION),
    (lambda e, m: cmp.protect_with_pbm(m.replace(header=dataclasses.replace(
        m.header, recipient=x509.DirectoryName(name("Elsewhere")))), SECRET), FailureInfo.WRONG_AUTHORITY),
    (lambda e, m: cmp.protect_with_pbm(m.replace(header=dataclasses.replace(
        m.header, message_time=m.header.message_time - dt.timedelta(hours=1))), SECRET), FailureInfo.BAD_TIME),
    (lambda e, m: cmp.protect_with_pbm(m.replace(header=dataclasses.replace(m.header, sender_nonce=b"short")),
                                       SECRET), FailureInfo.BAD_SENDER_NONCE),
    (lambda e, m: cmp.protect_with_pbm(m.replace(header=dataclasses.replace(m.header, transaction_id=None)),
                                       SECRET), FailureInfo.BAD_REQUEST),
    (lambda e, m: cmp.protect_with_pbm(m.replace(header=dataclasses.replace(m.header, recip_nonce=b"r" * 16)),
                                       SECRET), FailureInfo.BAD_RECIPIENT_NONCE),
])
def test_header_and_protection_checks(env: Env, mutate: Any, failure: FailureInfo) -> None:
    sent = mutate(env, env.ir(sender_kid=REF))
    rsp = env.send(sent)
    assert error_of(rsp).fail_info == {failure}
    assert rsp.header.transaction_id == sent.header.transaction_id
    assert rsp.header.recip_nonce == sent.header.sender_nonce
    assert env.issuer.requests == []


def test_unauthenticated_errors_are_signed_not_maced(env: Env) -> None:
    rsp = env.send(cmp.protect_with_pbm(env.ir(sender_kid=REF), b"wrong"))
    assert cmp.protection_kind(rsp) is cmp.ProtectionKind.SIGNATURE
    cmp.verify_signature(rsp, env.server.signer.certificate)  # type: ignore[union-attr]


def test_garbage_gets_a_bad_data_format_error(env: Env) -> None:
    rsp = cmp.PKIMessage.decode(env.server.handle(b"\x30\x03\x02\x01\x02"))
    assert error_of(rsp).fail_info == {FailureInfo.BAD_DATA_FORMAT}
    good = cmp.protect_with_pbm(env.ir(sender_kid=REF), SECRET).encode()
    rsp = cmp.PKIMessage.decode(env.server.handle(good[:-5]))
    assert error_of(rsp).fail_info == {FailureInfo.BAD_DATA_FORMAT}


def test_replayed_request_is_transaction_id_in_use(env: Env) -> None:
    msg = cmp.protect_with_pbm(env.ir(sender_kid=REF), SECRET)
    assert isinstance(env.send(msg).body, cmp.IpBody)
    assert error_of(env.send(msg)).fail_info == {FailureInfo.TRANSACTION_ID_IN_USE}
    assert len(env.issuer.requests) == 1


def _enrolled(env: Env) -> tuple[cmp.PKIMessage, cmp.PKIMessage]:
    req = cmp.protect_with_pbm(env.ir(sender_kid=REF), SECRET)
    return req, env.send(req)


def _conf(env: Env, req: cmp.PKIMessage, rsp: cmp.PKIMessage, body: cmp.Body, **hdr: Any) -> cmp.PKIMessage:
    h = builders.followup_header(req.header, rsp.header)
    h = dataclasses.replace(h, **{"recip_nonce": env.store.only().server_nonce, **hdr})
    return env.send(cmp.protect_with_pbm(cmp.PKIMessage(h, body), SECRET))


def test_cert_conf_checks_hash_nonce_and_request_id(env: Env) -> None:
    req, rsp = _enrolled(env)
    cert = rsp.body.responses[0].certificate  # type: ignore[attr-defined]
    other = env.pki.issue(name("other"), ec_key().public_key())
    assert error_of(_conf(env, req, rsp, builders.cert_conf_body(other))).fail_info == {FailureInfo.BAD_CERT_ID}
    assert error_of(_conf(env, req, rsp, builders.cert_conf_body(cert), recip_nonce=b"n" * 16)).fail_info == \
        {FailureInfo.BAD_RECIPIENT_NONCE}
    assert error_of(_conf(env, req, rsp, builders.cert_conf_body(cert, cert_req_id=9))).fail_info == \
        {FailureInfo.BAD_REQUEST}
    ok = _conf(env, req, rsp, builders.cert_conf_body(cert))  # echoes the server's latest senderNonce
    assert isinstance(ok.body, cmp.PkiConfBody)
    assert env.store.only().state is TransactionState.FINISHED and env.issuer.revoked == {}
    again = _conf(env, req, rsp, builders.cert_conf_body(cert), recip_nonce=ok.header.sender_nonce)
    assert error_of(again).fail_info == {FailureInfo.TRANSACTION_ID_IN_USE}


def test_rejecting_cert_conf_and_late_cert_conf_revoke(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    req, rsp = _enrolled(env)
    cert = rsp.body.responses[0].certificate  # type: ignore[attr-defined]
    ok = _conf(env, req, rsp, builders.cert_conf_body(cert, accept=False, reason="wrong SAN"))
    assert isinstance(ok.body, cmp.PkiConfBody)
    assert cert.serial_number in env.issuer.revoked
    assert "wrong SAN" in env.store.only().reason
    (tmp_path / "late").mkdir()
    env2 = make_env(tmp_path / "late", confirm_timeout=dt.timedelta(seconds=-1))
    req, rsp = _enrolled(env2)
    cert = rsp.body.responses[0].certificate  # type: ignore[attr-defined]
    assert error_of(_conf(env2, req, rsp, builders.cert_conf_body(cert))).fail_info == {FailureInfo.BAD_REQUEST}
    assert cert.serial_number in env2.issuer.revoked


def test_client_error_message_aborts_and_revokes(env: Env) -> None:
    req, rsp = _enrolled(env)
    cert = rsp.body.responses[0].certificate  # type: ignore[attr-defined]
    ack = _conf(env, req, rsp, builders.error_body(errors.BadCertTemplate("not what I asked")))
    assert isinstance(ack.body, cmp.PkiConfBody)
    assert cert.serial_number in env.issuer.revoked


def test_kur_rules(env: Env) -> None:
    k2 = ec_key()
    e2 = env.sig_client().cr(k2, subject=name("nf-2"))
    with pytest.raises(errors.BadCertTemplate, match="new key"):
        env.sig_client(k2, e2.certificate).kur(k2)
    with pytest.raises(errors.BadCertTemplate, match="subject"):
        env.sig_client(k2, e2.certificate).kur(ec_key(), subject=name("someone-else"))
    # oldCertID naming another certificate than the signer's
    body = cmp.KurBody((builders.cert_request(ec_key(), subject=name("nf-2"), old_cert=env.client_cert),))
    msg = cmp.protect_with_signature(cmp.PKIMessage(builders.request_header(recipient=env.pki.ca_name), body),
                                     k2, cert=e2.certificate)
    assert error_of(env.send(msg)).fail_info == {FailureInfo.BAD_CERT_ID}


def test_pop_is_required(env: Env) -> None:
    msg = env.ir(sender_kid=REF)
    r = msg.body.requests[0]  # type: ignore[attr-defined]
    for pop in (None, cmp.ProofOfPossession(cmp.PopKind.RA_VERIFIED)):
        body = cmp.IrBody((dataclasses.replace(r, popo=pop),))
        fresh = cmp.PKIMessage(builders.request_header(recipient=env.pki.ca_name, sender_kid=REF), body)
        assert error_of(env.send(cmp.protect_with_pbm(fresh, SECRET))).fail_info == {FailureInfo.BAD_POP}


def test_ra_verified_pop_is_accepted_from_a_trusted_ra_signer(tmp_path: Path) -> None:
    env = make_env(tmp_path, allow_ra_verified_pop=True)
    req = builders.cert_request(ec_key().public_key(), subject=name("behind-ra"))
    req = dataclasses.replace(req, popo=cmp.ProofOfPossession(cmp.PopKind.RA_VERIFIED))
    msg = cmp.PKIMessage(builders.request_header(recipient=env.pki.ca_name), cmp.CrBody((req,)))
    rsp = env.send(cmp.protect_with_signature(msg, env.client_key, cert=env.client_cert))
    assert isinstance(rsp.body, cmp.CpBody) and rsp.body.responses[0].certificate is not None


def test_revocation_rules(env: Env) -> None:
    k2 = ec_key()
    e2 = env.sig_client().cr(k2, subject=name("nf-2"))
    with pytest.raises(errors.NotAuthorized):
        env.sig_client().revoke(e2.certificate)
    env.sig_client(k2, e2.certificate).revoke(e2.certificate)
    env.issuer.revoked.clear()
    env.issuer.revoked[e2.certificate.serial_number] = None
    rr = cmp.PKIMessage(builders.request_header(recipient=env.pki.ca_name), builders.rr_body(e2.certificate))
    # a revoked signer cannot authenticate at all
    rsp = env.send(cmp.protect_with_signature(rr, k2, cert=e2.certificate))
    assert error_of(rsp).fail_info == {FailureInfo.CERT_REVOKED}


def test_genm_answers_ca_certs_templates_key_types_and_root_update(env: Env) -> None:
    env.issuer.root_update = RootCaKeyUpdate(env.pki.ca_cert)
    items = env.sig_client().general_message(InfoType.CA_CERTS, InfoType.ROOT_CA_KEY_UPDATE,
                                             InfoType.CERT_REQ_TEMPLATE, InfoType.SIGN_KEY_PAIR_TYPES)
    kinds = [i.kind for i in items]
    assert kinds == [InfoType.CA_CERTS, InfoType.ROOT_CA_KEY_UPDATE, InfoType.CERT_REQ_TEMPLATE,
                     InfoType.SIGN_KEY_PAIR_TYPES]
    assert items[0].as_certificates() == (env.pki.ca_cert,)
    assert items[1].value is not None and items[2].value is None
    assert env.sig_client().ca_certs() == (env.pki.ca_cert,)


def test_genm_root_ca_cert_form_is_answered_with_an_absent_root_ca_key_update(env: Env) -> None:
    # RFC 9483 §4.3.2: asked with id-it-rootCaCert, answered with id-it-rootCaKeyUpdate, no value = no update
    env.issuer.root_update = None
    for asked in (InfoType.ROOT_CA_CERT, InfoType.ROOT_CA_KEY_UPDATE):
        (item,) = env.sig_client().general_message(asked)
        assert item.kind is InfoType.ROOT_CA_KEY_UPDATE and item.value is None


def test_mac_responses_reuse_one_salt_per_secret_for_a_minute(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from ca.cmp import server as server_module

    now = [1000.0]
    monkeypatch.setattr(server_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    server_module_lifetime = server_module.RESPONSE_SALT_LIFETIME

    def response_salt() -> bytes:
        rsp = env.send(cmp.protect_with_pbm(env.ir(), SECRET, sender_kid=REF, iteration_count=500))
        cmp.verify_pbm(rsp, SECRET)  # the cached BASEKEY gives a MAC that verifies with the secret
        with pytest.raises(errors.BadMessageCheck):
            cmp.verify_pbm(rsp, SECRET + b"x")
        alg = rsp.header.protection_alg
        assert isinstance(alg, cmp.PBMParameters) and alg.iteration_count == 500
        return alg.salt

    first = response_salt()
    assert len(first) == 16 and response_salt() == first
    now[0] += server_module_lifetime - 1
    assert response_salt() == first
    now[0] += 2
    second = response_salt()
    assert second != first and response_salt() == second


def test_mac_protected_kur_and_unsupported_bodies(env: Env) -> None:
    body = cmp.KurBody((builders.cert_request(ec_key(), subject=name("x"), old_cert=env.client_cert),))
    msg = cmp.protect_with_pbm(cmp.PKIMessage(builders.request_header(recipient=env.pki.ca_name), body), SECRET,
                               sender_kid=REF)
    rsp = env.send(msg)
    assert error_of(rsp).fail_info == {FailureInfo.WRONG_INTEGRITY}
    cmp.verify_pbm(rsp, SECRET)
    ip = cmp.PKIMessage(builders.request_header(recipient=env.pki.ca_name), builders.pkiconf_body())
    assert error_of(env.send(cmp.protect_with_pbm(ip, SECRET, sender_kid=REF))).fail_info == \
        {FailureInfo.WRONG_INTEGRITY}
