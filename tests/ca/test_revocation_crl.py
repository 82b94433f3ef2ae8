"""Revocation by serial with RFC 5280 reasons, hold and release, and CRLs signed in the token:
numbers increase, openssl verifies them and reports revoked certificates, pkilint accepts them,
and the publisher regenerates after a revocation and before nextUpdate."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from ca import (
    AlreadyRevoked,
    CaEngine,
    CaSettings,
    CreateRootRequest,
    CrlPublisher,
    InvalidRequest,
    IssueRequest,
    NotOnHold,
    RevocationReason,
    RevokeRequest,
    UnknownSerial,
)

from .conftest import Clock, install, make_csr, name, openssl, openssl_verify, write_pem


def _issue(engine: CaEngine, ca: str, cn: str):  # type: ignore[no-untyped-def]
    return engine.issue(IssueRequest(ca=ca, profile="tls-client", csr=make_csr(name(cn)), requester="t"))


def test_revoked_serial_appears_in_next_crl_and_openssl_reports_it_revoked(
        engine: CaEngine, root, sub, tmp_path: Path, lint) -> None:
    publisher = CrlPublisher(engine)
    good = _issue(engine, "sub", "good-client")
    bad = _issue(engine, "sub", "bad-client")
    before = publisher.current("sub")
    engine.revoke(RevokeRequest(serial=bad.record.serial, reason=RevocationReason.KEY_COMPROMISE, requester="ops"))
    after = publisher.current("sub")
    assert after.number > before.number
    crl = x509.load_der_x509_crl(after.der)
    assert crl.is_signature_valid(sub.certificate.public_key())  # type: ignore[arg-type,unused-ignore]
    entry = crl.get_revoked_certificate_by_serial_number(bad.record.serial)
    assert entry is not None and crl.get_revoked_certificate_by_serial_number(good.record.serial) is None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == after.number
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        sub.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == CaSettings().crl_validity
    # openssl: the CRL verifies against the issuing CA ...
    crl_pem = write_pem(tmp_path / "sub.crl", after.pem)
    out = openssl("crl", "-in", crl_pem, "-CAfile", write_pem(tmp_path / "sub.pem", sub.certificate), "-noout",
                  "-verify")
    assert out.returncode == 0 and "verify OK" in out.stdout + out.stderr, out.stdout + out.stderr
    # ... the revoked certificate is reported revoked, the good one verifies with CRL checking
    proc = openssl_verify(tmp_path, bad.certificate, bad.chain, crls=[after.pem])
    assert proc.returncode != 0 and "certificate revoked" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    proc = openssl_verify(tmp_path, good.certificate, good.chain, crls=[after.pem])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lint("crl", after.der) == []
    assert lint("crl", before.der) == []


def test_crl_numbers_increase_and_an_unchanged_fresh_crl_is_reused(engine: CaEngine, root, clock: Clock) -> None:
    publisher = CrlPublisher(engine)
    first = publisher.current("root")
    assert publisher.current("root") == first  # nothing changed: served from the repository
    forced = publisher.refresh("root")
    assert forced.number == first.number + 1
    # before nextUpdate minus the renewal margin it is regenerated, without any revocation
    clock.advance(CaSettings().crl_validity - CaSettings().crl_renew_before + dt.timedelta(seconds=1))
    renewed = publisher.current("root")
    assert renewed.number == forced.number + 1 and renewed.this_update > forced.this_update
    numbers = [x509.load_der_x509_crl(c.der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
               for c in (first, forced, renewed)]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3
    # a stale CRL from a slow concurrent generator never replaces a newer one
    engine.cas.save_crl(first)
    assert engine.cas.latest_crl("root") == renewed


def test_rsa_ca_crl_verifies_and_lints(engine: CaEngine, tmp_path: Path, lint) -> None:
    from hsm import KeyType

    engine.create_root(CreateRootRequest(name="rsa", subject="CN=RSA CRL Root", key_type=KeyType.RSA_2048,
                                         settings=CaSettings(crl_validity=dt.timedelta(hours=12),
                                                             crl_renew_before=dt.timedelta(hours=2))))
    install(engine, "rsa")
    issued = _issue(engine, "rsa", "rsa-client")
    engine.revoke(RevokeRequest(serial=issued.record.serial, reason=RevocationReason.SUPERSEDED))
    crl = CrlPublisher(engine).current("rsa")
    assert crl.next_update - crl.this_update == dt.timedelta(hours=12)
    proc = openssl_verify(tmp_path, issued.certificate, issued.chain, crls=[crl.pem])
    assert "certificate revoked" in proc.stdout + proc.stderr
    assert lint("crl", crl.der) == []


def test_revocation_errors_are_clear(engine: CaEngine, root, sub) -> None:
    issued = _issue(engine, "sub", "c1")
    with pytest.raises(UnknownSerial):
        engine.revoke(RevokeRequest(serial=12345))
    with pytest.raises(UnknownSerial):  # asserting the wrong CA hides the certificate
        engine.revoke(RevokeRequest(serial=issued.record.serial, ca="root"))
    with pytest.raises(InvalidRequest):
        engine.revoke(RevokeRequest(serial=issued.record.serial, reason=RevocationReason.REMOVE_FROM_CRL))
    with pytest.raises(InvalidRequest):
        engine.revoke(RevokeRequest(serial=issued.record.serial,
                                    invalidity_date=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)))
    record = engine.revoke(RevokeRequest(serial=issued.record.serial, reason=RevocationReason.AFFILIATION_CHANGED,
                                         requester="ops", ca="sub"))
    assert record.revocation is not None and record.revocation.revoked_by == "ops"
    with pytest.raises(AlreadyRevoked) as info:
        engine.revoke(RevokeRequest(serial=issued.record.serial, reason=RevocationReason.KEY_COMPROMISE))
    assert info.value.serial == issued.record.serial and info.value.reason == "AFFILIATION_CHANGED"
    with pytest.raises(NotOnHold):
        engine.release_hold(issued.record.serial)


def test_certificate_hold_can_be_released_or_made_permanent(engine: CaEngine, root, tmp_path: Path) -> None:
    publisher = CrlPublisher(engine)
    held = _issue(engine, "root", "held")
    engine.revoke(RevokeRequest(serial=held.record.serial, reason=RevocationReason.CERTIFICATE_HOLD))
    with pytest.raises(AlreadyRevoked):  # holding twice is not a change
        engine.revoke(RevokeRequest(serial=held.record.serial, reason=RevocationReason.CERTIFICATE_HOLD))
    on_hold = x509.load_der_x509_crl(publisher.current("root").der)
    entry = on_hold.get_revoked_certificate_by_serial_number(held.record.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.certificate_hold
    released = engine.release_hold(held.record.serial, requester="ops")
    assert released.revocation is None
    cleared = publisher.current("root")
    assert x509.load_der_x509_crl(cleared.der).get_revoked_certificate_by_serial_number(held.record.serial) is None
    assert openssl_verify(tmp_path, held.certificate, held.chain, crls=[cleared.pem]).returncode == 0
    # hold again, then make it permanent
    engine.revoke(RevokeRequest(serial=held.record.serial, reason=RevocationReason.CERTIFICATE_HOLD))
    final = engine.revoke(RevokeRequest(serial=held.record.serial, reason=RevocationReason.CESSATION_OF_OPERATION))
    assert final.revocation is not None and final.revocation.reason is RevocationReason.CESSATION_OF_OPERATION
    with pytest.raises(NotOnHold):
        engine.release_hold(held.record.serial)
    # unspecified carries no reason code on the CRL (RFC 5280 §5.3.1)
    plain = _issue(engine, "root", "plain")
    engine.revoke(RevokeRequest(serial=plain.record.serial))
    crl = x509.load_der_x509_crl(publisher.current("root").der)
    entry = crl.get_revoked_certificate_by_serial_number(plain.record.serial)
    assert entry is not None and len(entry.extensions) == 0
