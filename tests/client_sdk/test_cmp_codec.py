"""The CMP codec against real openssl 3.0 messages: byte-exact round trips, typed fields, PBM and
signature protection, CRMF POP, and our own messages built from typed values."""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from client_sdk import cmp
from client_sdk.cmp import builders, errors
from client_sdk.cmp.enums import BodyType, FailureInfo, HashAlgorithm, InfoType, MacAlgorithm, PKIStatus, PopKind

from .cmptools import TestPki, ec_key, name, rsa_key
from .conftest import SECRET, Captured

EXPECTED_TYPES = {
    "ir": ["ir", "ip", "certConf", "pkiconf"],
    "ir_sha512": ["ir", "ip", "certConf", "pkiconf"],
    "cr": ["cr", "cp", "certConf", "pkiconf"],
    "kur": ["kur", "kup", "certConf", "pkiconf"],
    "p10cr": ["p10cr", "cp", "certConf", "pkiconf"],
    "rr": ["rr", "rp"],
    "genm": ["genm", "genp"],
    "implicit": ["cr", "cp"],
    "poll": ["cr", "cp", "pollReq", "pollRep", "pollReq", "cp", "certConf", "pkiconf"],
    "error": ["cr", "error"],
    "reject": ["cr", "cp"],
}


def uncached(obj: Any) -> Any:
    """A deep copy of a typed value that forgets its pyasn1 origin (forces typed re-encoding)."""
    if isinstance(obj, tuple):
        return tuple(uncached(o) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: uncached(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def test_openssl_transactions_decode_to_the_expected_body_types(captured: Captured) -> None:
    for run, types in EXPECTED_TYPES.items():
        got = [cmp.PKIMessage.decode(m).body_type.asn1_name for m in captured.messages[run]]
        assert got[:len(types)] == types, run


def test_every_openssl_message_round_trips_byte_for_byte(captured: Captured) -> None:
    for label, der in captured.all():
        msg = cmp.PKIMessage.decode(der)
        assert msg.encode() == der, label


def test_typed_reencoding_reproduces_openssl_bytes(captured: Captured) -> None:
    for label, der in captured.all():
        msg = cmp.PKIMessage.decode(der)
        fresh = uncached(msg)
        assert fresh._der is None
        again = fresh.encode()
        assert cmp.PKIMessage.decode(again) == msg, label
        assert again == der, label


def test_ir_fields_are_typed(captured: Captured) -> None:
    msg = cmp.PKIMessage.decode(captured.req("ir"))
    h = msg.header
    assert h.pvno == 2
    assert h.recipient_name == name("Mock CA")
    assert h.sender_kid == b"client-ref"
    assert len(h.transaction_id or b"") == 16 and len(h.sender_nonce or b"") == 16
    assert h.recip_nonce is None
    assert isinstance(h.message_time, dt.datetime) and h.message_time.tzinfo is not None
    alg = h.protection_alg
    assert isinstance(alg, cmp.PBMParameters)
    assert (alg.owf, alg.mac, alg.iteration_count, len(alg.salt)) == \
        (HashAlgorithm.SHA256, MacAlgorithm.HMAC_SHA1, 500, 16)
    assert isinstance(msg.body, cmp.IrBody)
    req = msg.body.requests[0]
    assert req.cert_req_id == 0
    assert req.template.subject == name("client2")
    assert req.template.public_key == captured.new_key.public_key()  # type: ignore[attr-defined]
    assert req.popo is not None and req.popo.kind is PopKind.SIGNATURE


def test_sans_and_validity_from_openssl_template(captured: Captured) -> None:
    msg = cmp.PKIMessage.decode(captured.req("ir_sha512"))
    tpl = msg.body.requests[0].template  # type: ignore[attr-defined]
    san = tpl.extension(x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["test.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert tpl.not_after - tpl.not_before == dt.timedelta(days=5)


def test_pbm_of_openssl_messages_verifies_with_the_secret(captured: Captured) -> None:
    for run in ("ir", "ir_sha512"):
        for der in captured.messages[run]:
            cmp.verify_pbm(cmp.PKIMessage.decode(der), SECRET)


def test_pbm_with_hmac_sha256_and_sha512_owf_is_decoded(captured: Captured) -> None:
    alg = cmp.PKIMessage.decode(captured.req("ir_sha512")).header.protection_alg
    assert isinstance(alg, cmp.PBMParameters)
    assert (alg.owf, alg.mac) == (HashAlgorithm.SHA512, MacAlgorithm.HMAC_SHA256)


def test_pbm_with_wrong_secret_is_bad_message_check(captured: Captured) -> None:
    with pytest.raises(errors.BadMessageCheck):
        cmp.verify_pbm(cmp.PKIMessage.decode(captured.req("ir")), b"wrong")


def test_pbm_iteration_count_bounds_refuse_absurd_counts() -> None:
    hdr = builders.request_header(sender=name("a"), recipient=name("b"))
    msg = cmp.protect_with_pbm(cmp.PKIMessage(hdr, builders.genm_body()), b"k", iteration_count=200_000)
    with pytest.raises(errors.BadAlg, match="exceeds"):
        cmp.verify_pbm(cmp.PKIMessage.decode(msg.encode()), b"k")
    cmp.verify_pbm(cmp.PKIMessage.decode(msg.encode()), b"k", max_iterations=200_000)
    weak = cmp.protect_with_pbm(cmp.PKIMessage(hdr, builders.genm_body()), b"k", iteration_count=1)
    with pytest.raises(errors.BadAlg, match="below"):
        cmp.verify_pbm(weak, b"k")


def test_tampered_body_fails_pbm(captured: Captured) -> None:
    der = bytearray(captured.req("ir"))
    i = der.find(b"client2")
    der[i] ^= 0x20  # CN=Client2
    msg = cmp.PKIMessage.decode(bytes(der))
    with pytest.raises(errors.BadMessageCheck):
        cmp.verify_pbm(msg, SECRET)


def test_signature_protected_cr_verifies_against_client_cert(captured: Captured) -> None:
    msg = cmp.PKIMessage.decode(captured.req("cr"))
    assert isinstance(msg.header.protection_alg, cmp.SignatureAlgorithmId)
    assert cmp.protection_certificate(msg) == captured.client_cert
    assert msg.header.sender_kid == cmp.subject_key_id(captured.client_cert)
    cmp.verify_signature(msg, captured.client_cert)
    with pytest.raises(errors.BadMessageCheck):
        cmp.verify_signature(msg, captured.server_cert)
    with pytest.raises(errors.WrongIntegrity):
        cmp.verify_pbm(msg, SECRET)
    chain = cmp.verify_chain(captured.client_cert, trust_anchors=[captured.pki.ca_cert])
    assert chain[-1] == captured.pki.ca_cert


def test_openssl_responses_verify(captured: Captured) -> None:
    cmp.verify_pbm(cmp.PKIMessage.decode(captured.rsp("ir")), SECRET)
    for run in ("cr", "kur", "p10cr", "rr", "genm"):
        cmp.verify_signature(cmp.PKIMessage.decode(captured.rsp(run)), captured.server_cert)


def test_crmf_signature_pop_of_openssl_requests_verifies(captured: Captured) -> None:
    for run in ("ir", "cr", "kur"):
        cmp.verify_pop(cmp.PKIMessage.decode(captured.req(run)).body.requests[0])  # type: ignore[attr-defined]


def test_pop_with_other_key_or_changed_template_is_bad_pop(captured: Captured) -> None:
    req = cmp.PKIMessage.decode(captured.req("cr")).body.requests[0]  # type: ignore[attr-defined]
    other = dataclasses.replace(req, template=dataclasses.replace(req.template, subject=name("mallory")))
    with pytest.raises(errors.BadPOP):
        cmp.verify_pop(other)
    with pytest.raises(errors.BadPOP, match="missing"):
        cmp.verify_pop(dataclasses.replace(req, popo=None))
    ra = dataclasses.replace(req, popo=cmp.ProofOfPossession(PopKind.RA_VERIFIED))
    with pytest.raises(errors.BadPOP, match="raVerified"):
        cmp.verify_pop(ra)
    cmp.verify_pop(ra, accept_ra_verified=True)


def test_kur_carries_old_cert_id(captured: Captured) -> None:
    msg = cmp.PKIMessage.decode(captured.req("kur"))
    assert isinstance(msg.body, cmp.KurBody)
    oc = msg.body.requests[0].old_cert_id
    assert oc == cmp.CertId(x509.DirectoryName(captured.new_cert.issuer), captured.new_cert.serial_number)
    cmp.verify_signature(msg, captured.new_cert)


def test_rr_p10cr_genm_poll_error_bodies(captured: Captured) -> None:
    rr = cmp.PKIMessage.decode(captured.req("rr")).body
    assert isinstance(rr, cmp.RrBody)
    assert rr.requests[0].serial_number == captured.new_cert.serial_number
    assert rr.requests[0].issuer == captured.new_cert.issuer
    assert rr.requests[0].reason is cmp.RevocationReason.KEY_COMPROMISE
    rp = cmp.PKIMessage.decode(captured.rsp("rr")).body
    assert isinstance(rp, cmp.RpBody) and rp.statuses[0].status is PKIStatus.ACCEPTED
    p10 = cmp.PKIMessage.decode(captured.req("p10cr")).body
    assert isinstance(p10, cmp.P10crBody) and p10.csr.subject == name("client2")
    assert p10.csr.is_signature_valid
    genp = cmp.PKIMessage.decode(captured.rsp("genm")).body
    assert isinstance(genp, cmp.GenpBody)
    poll = [cmp.PKIMessage.decode(m) for m in captured.messages["poll"]]
    assert poll[1].body.responses[0].status.status is PKIStatus.WAITING  # type: ignore[attr-defined]
    assert isinstance(poll[2].body, cmp.PollReqBody) and poll[2].body.cert_req_ids == (0,)
    assert isinstance(poll[3].body, cmp.PollRepBody) and poll[3].body.entries[0].check_after == 0
    err = cmp.PKIMessage.decode(captured.rsp("error")).body
    assert isinstance(err, cmp.ErrorBody) and err.status_info.status is PKIStatus.REJECTION
    rej = cmp.PKIMessage.decode(captured.rsp("reject")).body
    assert isinstance(rej, cmp.CpBody)
    st = rej.responses[0].status
    assert st.status is PKIStatus.REJECTION and st.fail_info == {FailureInfo.BAD_POP}
    assert st.status_strings == ("nope",)
    e = errors.error_from_status(st)
    assert isinstance(e, errors.BadPOP) and "nope" in str(e)


def test_implicit_confirm_in_both_headers(captured: Captured) -> None:
    req, rsp = (cmp.PKIMessage.decode(m) for m in captured.messages["implicit"][:2])
    assert req.header.implicit_confirm and rsp.header.implicit_confirm
    assert not cmp.PKIMessage.decode(captured.req("cr")).header.implicit_confirm


def test_response_header_echoes_transaction_and_nonce(captured: Captured) -> None:
    req = cmp.PKIMessage.decode(captured.req("ir"))
    hdr = builders.response_header(req.header, sender=name("Mock CA"))
    assert hdr.transaction_id == req.header.transaction_id
    assert hdr.recip_nonce == req.header.sender_nonce
    assert hdr.sender_nonce not in (None, req.header.sender_nonce)
    assert hdr.recipient == req.header.sender and hdr.sender_name == name("Mock CA")
    assert hdr.recip_kid == b"client-ref"


@pytest.mark.parametrize("keyfn,pss", [(rsa_key, False), (rsa_key, True), (lambda: ec.generate_private_key(
    ec.SECP384R1()), False), (ed25519.Ed25519PrivateKey.generate, False)])
def test_our_messages_sign_verify_and_round_trip(tmp_path: Any, keyfn: Any, pss: bool) -> None:
    pki = TestPki(tmp_path)
    key = keyfn()
    cert = pki.issue(name("signer"), key.public_key())
    newkey = keyfn()
    exts = [x509.Extension(x509.SubjectAlternativeName.oid, False,
                           x509.SubjectAlternativeName([x509.DNSName("nf.example")]))]
    req = builders.cert_request(newkey, subject=name("nf"), extensions=exts, rsa_pss=pss,
                                not_before=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc),
                                not_after=dt.datetime(2060, 1, 1, tzinfo=dt.timezone.utc))
    msg = cmp.PKIMessage(builders.request_header(sender=name("signer"), recipient=pki.ca_name,
                                                 implicit_confirm=True), cmp.CrBody((req,)))
    signed = cmp.protect_with_signature(msg, key, cert=cert, chain=(pki.ca_cert,), rsa_pss=pss)
    back = cmp.PKIMessage.decode(signed.encode())
    assert back == signed
    cmp.verify_signature(back, cert)
    cmp.verify_pop(back.body.requests[0])  # type: ignore[attr-defined]
    assert back.extra_certs == (cert, pki.ca_cert)
    assert back.header.implicit_confirm
    tpl = back.body.requests[0].template  # type: ignore[attr-defined]
    assert tpl.not_after.year == 2060 and tpl.extensions == tuple(exts)


def test_server_side_builders_round_trip(tmp_path: Any) -> None:
    pki = TestPki(tmp_path)
    k = ec_key()
    cert = pki.issue(name("x"), k.public_key())
    req = cmp.PKIMessage(builders.request_header(sender=name("x"), recipient=pki.ca_name),
                         cmp.IrBody((builders.cert_request(k, subject=name("x")),)))
    bodies: list[cmp.Body] = [
        builders.cert_rep_body(BodyType.IR, [builders.granted(0, cert)], ca_pubs=[pki.ca_cert]),
        builders.cert_rep_body(BodyType.KUR, [builders.refused(0, errors.BadCertTemplate("no"))]),
        builders.cert_rep_body(BodyType.CR, [builders.waiting(0, "held")]),
        builders.pkiconf_body(),
        builders.rp_body([cmp.PKIStatusInfo.accepted()], rev_certs=[cmp.CertId.for_certificate(cert)]),
        builders.genp_body([cmp.InfoTypeAndValue.certificates(InfoType.CA_CERTS, [pki.ca_cert])]),
        builders.poll_rep_body(0, 5, "wait"),
        builders.error_body(errors.TransactionIdInUse("replayed")),
        builders.cert_conf_body(cert, accept=False, reason="bad key"),
    ]
    for body in bodies:
        rsp = cmp.protect_with_pbm(builders.response_to(req, body, sender=pki.ca_name), b"pw", iteration_count=100)
        back = cmp.PKIMessage.decode(rsp.encode())
        assert back == rsp, body
        cmp.verify_pbm(back, b"pw")
    genp = cmp.PKIMessage.decode(builders.response_to(req, bodies[5]).encode()).body
    assert genp.get(InfoType.CA_CERTS).as_certificates() == (pki.ca_cert,)  # type: ignore[attr-defined, union-attr]
    err = cmp.PKIMessage.decode(builders.error_message_for(req, errors.TransactionIdInUse("replayed")).encode())
    assert err.body.status_info.fail_info == {FailureInfo.TRANSACTION_ID_IN_USE}  # type: ignore[attr-defined]
    assert err.body.status_info.status_strings == ("replayed",)  # type: ignore[attr-defined]


def test_every_failure_bit_has_one_error_leaf_and_maps_back() -> None:
    for bit in FailureInfo:
        cls = errors.BY_FAILURE[bit]
        assert issubclass(cls, errors.CmpError) and cls.failure is bit
        si = cmp.PKIStatusInfo.from_error(cls("why"))
        assert si.fail_info == {bit}
        assert type(errors.error_from_status(si)) is cls
    si = cmp.PKIStatusInfo(PKIStatus.REJECTION, ("a",), frozenset({FailureInfo.BAD_ALG, FailureInfo.DUPLICATE_CERT_REQ}))
    hdr = builders.request_header()
    back = cmp.PKIMessage.decode(cmp.PKIMessage(hdr, cmp.ErrorBody(si)).encode()).body
    assert back.status_info == si  # type: ignore[attr-defined]


def test_unknown_protection_algorithm_decodes_and_fails_as_bad_alg(captured: Captured) -> None:
    msg = cmp.PKIMessage.decode(captured.req("cr"))
    odd = msg.replace(header=dataclasses.replace(msg.header, protection_alg=cmp.UnknownAlgorithm("1.2.3.4")))
    back = cmp.PKIMessage.decode(odd.encode())
    assert isinstance(back.header.protection_alg, cmp.UnknownAlgorithm)
    with pytest.raises(errors.BadAlg):
        cmp.verify_signature(back, captured.client_cert)


def test_unsupported_body_type_is_bad_request(captured: Captured) -> None:
    from pyasn1_alt_modules import rfc9480

    from client_sdk.cmp import _asn1
    m = _asn1.decode(captured.req("genm"), rfc9480.PKIMessage())
    body = rfc9480.PKIBody()
    body["pkiconf"] = _asn1.slot(body, "pkiconf").clone("")
    m["body"] = body
    cmp.PKIMessage.decode(_asn1.encode(m))  # pkiconf is known
    body = rfc9480.PKIBody()
    crlann = _asn1.slot(body, "crlann")
    body["crlann"] = crlann
    m["body"] = body
    with pytest.raises(errors.BadRequest, match="crlann"):
        cmp.PKIMessage.decode(_asn1.encode(m))
    assert cmp.decode_header_lenient(_asn1.encode(m)).transaction_id == \
        cmp.PKIMessage.decode(captured.req("genm")).header.transaction_id  # type: ignore[union-attr]


def test_garbage_is_bad_data_format() -> None:
    for junk in (b"", b"\x30", b"\x30\x00", b"hello", b"\x30\x03\x02\x01\x02", bytes(100)):
        with pytest.raises(errors.BadDataFormat):
            cmp.PKIMessage.decode(junk)
    with pytest.raises(errors.BadDataFormat, match="exceeds"):
        cmp.PKIMessage.decode(b"\x30" * 100, max_size=10)


def _tlvs(der: bytes) -> list[bytes]:
    """The complete TLVs inside one DER SEQUENCE (a test-only reader, independent of the codec)."""
    def tlv_at(buf: bytes, i: int) -> tuple[int, int]:  # (start of contents, end)
        n = buf[i + 1]
        if n < 0x80:
            return i + 2, i + 2 + n
        k = n & 0x7F
        return i + 2 + k, i + 2 + k + int.from_bytes(buf[i + 2:i + 2 + k], "big")

    start, end = tlv_at(der, 0)
    assert der[0] == 0x30 and end == len(der)
    out, i = [], start
    while i < end:
        _, j = tlv_at(der, i)
        out.append(der[i:j])
        i = j
    return out


def _der_sequence(*parts: bytes) -> bytes:
    content = b"".join(parts)
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return b"\x30" + length + content


def test_decoded_protected_part_and_extra_certs_are_the_received_der_slices(captured: Captured) -> None:
    seen_extra = 0
    for label, der in captured.all():
        header, body, *tail = _tlvs(der)
        msg = cmp.PKIMessage.decode(der)
        assert msg.protected_part() == _der_sequence(header, body), label
        extra = [t for t in tail if t[0] == 0xA1]  # extraCerts [1] EXPLICIT SEQUENCE OF CMPCertificate
        certs = _tlvs(extra[0][_hdr_len(extra[0]):]) if extra else []
        assert [c.public_bytes(serialization.Encoding.DER) for c in msg.extra_certs] == certs, label
        seen_extra += len(certs)
        # the typed re-encoding of the same message yields the same protected part
        assert uncached(msg).protected_part() == msg.protected_part(), label
    assert seen_extra > 0  # openssl's signed messages carry extraCerts


def _hdr_len(tlv: bytes) -> int:
    return 2 if tlv[1] < 0x80 else 2 + (tlv[1] & 0x7F)
