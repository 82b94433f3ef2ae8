"""The codec's fast paths give exactly what the plain pyasn1 paths give: the lean header decode
(names as DER), the component-wise header encoding with its caches, the received certReq DER
for POP, and the cached response parts."""
from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509
from pyasn1_alt_modules import rfc9480

from client_sdk import cmp
from client_sdk.cmp import _asn1, builders
from client_sdk.cmp.enums import HashAlgorithm, MacAlgorithm

from .cmptools import ec_key, name
from .conftest import Captured


def _full_header_encoding(h: cmp.PKIHeader) -> bytes:
    """The header encoded from its typed fields as one pyasn1 value (the reference)."""
    fresh = dataclasses.replace(h)
    return _asn1.encode(fresh.to_asn1())


def _headers() -> list[cmp.PKIHeader]:
    when = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    base = builders.request_header(sender=name("nf1.example.com"), recipient=name("CA"), sender_kid=b"ref",
                                   implicit_confirm=True, now=when)
    pbm = cmp.PBMParameters(salt=b"s" * 16, owf=HashAlgorithm.SHA256, iteration_count=500,
                            mac=MacAlgorithm.HMAC_SHA256)
    key = ec_key()
    sig = cmp.SignatureAlgorithmId.for_key(key)
    rsp = builders.response_header(base, sender=name("CA"), confirm_wait_time=when, now=when)
    return [
        base,
        dataclasses.replace(base, protection_alg=pbm),
        dataclasses.replace(base, protection_alg=sig, pvno=3, free_text=("hello", "wörld"), recip_nonce=b"n" * 16),
        dataclasses.replace(rsp, protection_alg=pbm, sender_kid=b"profile"),
        dataclasses.replace(rsp, sender=x509.UniformResourceIdentifier("https://ca.example.com/"),
                            recipient=x509.DNSName("nf.example.com"), general_info=()),
        builders.request_header(),  # empty names, nothing optional but time, tid and nonce
    ]


def test_component_wise_header_encoding_equals_the_pyasn1_encoding() -> None:
    for h in _headers():
        assert h.to_der() == _full_header_encoding(h)
        again = h.to_der()  # second time from the caches
        assert again == _full_header_encoding(h)


def test_lean_header_decode_equals_the_full_decode(captured: Captured) -> None:
    seen = 0
    for label, der in captured.all():
        msg = cmp.PKIMessage.decode(der)
        header_der = msg.header.to_der()
        full = cmp.PKIHeader.from_asn1(_asn1.decode(header_der, rfc9480.PKIHeader()))
        assert msg.header == full, label
        assert _asn1.encode(msg.header.to_asn1()) == header_der, label  # to_asn1 of a lean header
        seen += 1
    for h in _headers():
        der = h.to_der()
        assert cmp.PKIHeader.decode(der) == h
        assert cmp.PKIHeader.decode(der).to_der() == der
    assert seen > 10


def test_lean_header_refuses_a_malformed_sender() -> None:
    import pytest

    from client_sdk.cmp import errors

    h = builders.request_header(sender=name("nf"), recipient=name("CA"))
    der = h.to_der()
    sender = _asn1.general_name_der(h.sender)
    bad = der.replace(sender, b"\x85\x03abc", 1)  # [5] ediPartyName with junk (lengths differ: fix below)
    bad = _asn1.raw_sequence_der(*[p for p in _split(bad)])
    with pytest.raises(errors.BadDataFormat):
        cmp.PKIHeader.decode(bad)


def _split(der: bytes) -> list[bytes]:
    """The components of a SEQUENCE whose outer length may be stale (test helper only)."""
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = []
    while i < len(der):
        n, hl = der[i + 1], 2
        if n >= 0x80:
            k = n & 0x7F
            n, hl = int.from_bytes(der[i + 2:i + 2 + k], "big"), 2 + k
        out.append(der[i:i + hl + n])
        i += hl + n
    return out


def test_lean_body_decode_equals_the_full_decode(captured: Captured) -> None:
    """ir/cr/kur bodies: names, key and extensions parsed from their DER give the same typed
    values as the full pyasn1 decode; the POP is checked over the received certReq bytes."""
    seen = 0
    for label, der in captured.all():
        msg = cmp.PKIMessage.decode(der)
        if not isinstance(msg.body, cmp.CertReqMessagesBody):
            continue
        body_der = msg._parts[1]  # type: ignore[index]
        value = _asn1.decode(body_der, rfc9480.PKIBody())
        full = type(msg.body).from_asn1(value[msg.body_type.asn1_name])
        assert msg.body == full, label
        for lean_req, full_req in zip(msg.body.requests, full.requests):  # type: ignore[attr-defined]
            assert lean_req.cert_request_der == full_req.cert_request_der, label
            assert lean_req.cert_request_der in der, label  # the received slice
            if lean_req.popo is not None and lean_req.popo.kind.value == "signature":
                cmp.verify_pop(lean_req)
        # re-encoding a lean-decoded body (typed, certReq from its DER) reproduces the bytes
        assert _asn1.encode(msg.body.to_asn1()) == body_der, label
        seen += 1
    assert seen >= 5


def test_composed_body_encoding_equals_the_pyasn1_encoding(tmp_path: object) -> None:
    from pathlib import Path

    from client_sdk.cmp import errors
    from client_sdk.cmp.enums import BodyType, FailureInfo, PKIStatus

    from .cmptools import TestPki

    pki = TestPki(Path(str(tmp_path)), "Compose CA")
    _k, leaf = pki.entity("leaf", "leaf.example.com")
    bodies = [
        builders.cert_rep_body(BodyType.IR, [builders.granted(0, leaf)]),
        builders.cert_rep_body(BodyType.IR, [builders.granted(0, leaf)], ca_pubs=[pki.ca_cert]),
        builders.cert_rep_body(BodyType.CR, [builders.granted(7, leaf, status=PKIStatus.GRANTED_WITH_MODS,
                                                              text="changed")]),
        builders.cert_rep_body(BodyType.KUR, [builders.refused(0, errors.BadCertTemplate("no"))]),
        builders.cert_rep_body(BodyType.P10CR, [builders.waiting(0, "awaiting approval"),
                                                cmp.CertResponse(1, cmp.PKIStatusInfo.rejection(
                                                    FailureInfo.BAD_POP, "x"), rsp_info=b"info")]),
        builders.pkiconf_body(),
        builders.error_body(errors.BadRequest("bad")),
    ]
    for body in bodies:
        reference = _asn1.encode(dataclasses.replace(body).to_asn1())
        assert body.to_der() == reference, body
        assert dataclasses.replace(body).to_der() == reference  # again, from the caches


def test_lean_response_decode_equals_the_full_decode(captured: Captured) -> None:
    """ip/cp/kup: certificates (issued and caPubs) parsed from their DER give the same typed
    values as the full pyasn1 decode; the typed body re-encodes to the received bytes."""
    seen = 0
    for label, der in captured.all():
        msg = cmp.PKIMessage.decode(der)
        if not isinstance(msg.body, cmp.CertRepMessageBody):
            continue
        body_der = msg._parts[1]  # type: ignore[index]
        value = _asn1.decode(body_der, rfc9480.PKIBody())
        full = type(msg.body).from_asn1(value[msg.body_type.asn1_name])
        assert msg.body == full, label
        assert msg.body.to_der() == body_der, label
        seen += 1
    assert seen >= 5


def test_wrapping_encoded_parts_equals_the_pyasn1_encoding() -> None:
    """raw_sequence_der / explicit_der (pyasn1's tag and length writer around received or cached
    DER) give the bytes of encoding the same value as a pyasn1 SEQUENCE OF ANY / tagged ANY,
    for short, long-form and multi-byte lengths."""
    import os

    from pyasn1.type import univ

    def full_sequence(*ders: bytes) -> bytes:
        seq = univ.SequenceOf(componentType=univ.Any())
        seq.setComponentByPosition(0, univ.Any(b"".join(ders)), verifyConstraints=False, matchTags=False,
                                   matchConstraints=False)
        return _asn1.encode(seq)

    def full_explicit(spec: object, inner: bytes) -> bytes:
        value = univ.Any(inner)
        for t in spec.tagSet.superTags[1:]:  # type: ignore[attr-defined]
            value = value.subtype(explicitTag=t)
        return _asn1.encode(value)

    slots = {nt.name: nt.asn1Object for nt in rfc9480.PKIBody().componentType.namedTypes}
    for n in (1, 127, 128, 255, 256, 65535, 65536, 70000):
        inner = _asn1.encode(univ.OctetString(os.urandom(n)))
        assert _asn1.raw_sequence_der(inner) == full_sequence(inner), n
        assert _asn1.raw_sequence_der(inner, inner[:3]) == full_sequence(inner, inner[:3]), n
        for body in ("ip", "certConf", "pkiconf", "genp", "error"):
            assert _asn1.explicit_der(slots[body], inner) == full_explicit(slots[body], inner), (body, n)
    assert _asn1.raw_sequence_der() == full_sequence(b"")


def test_message_from_encoded_parts_equals_the_pyasn1_encoding(tmp_path: object) -> None:
    """PKIMessage.encode from its encoded header and body, protection and extraCerts (the
    certificates' DER under pyasn1-written tags) gives the bytes of the full pyasn1 encoding."""
    from pathlib import Path

    from .cmptools import TestPki

    pki = TestPki(Path(str(tmp_path)), "Parts CA")
    _k, leaf = pki.entity("leaf", "leaf.example.com")
    hdr = builders.request_header(recipient=pki.ca_name, sender_kid=b"ref")
    for extra in ((), (pki.ca_cert,), (leaf, pki.ca_cert)):
        for protection in (None, b"\x01" * 32, b"\x02" * 300):
            msg = cmp.PKIMessage(hdr, builders.pkiconf_body(), extra_certs=extra)
            if protection is not None:
                msg = msg.with_protection(protection)
            else:
                msg.protected_part()  # encodes header and body: encode() then uses the parts
            assert msg._parts is not None  # type: ignore[attr-defined]
            reference = _asn1.encode(dataclasses.replace(msg).to_asn1())
            assert msg.encode() == reference, (len(extra), protection)
            assert cmp.PKIMessage.decode(reference).extra_certs == extra
