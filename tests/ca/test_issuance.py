"""CSR issuance under profiles: every built-in profile under EC and RSA roots and an intermediate
passes openssl verify and pkilint; requests that break the profile raise ProfileViolation and
leave nothing behind; serials are random, unique and retried; server-side key generation."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import (
    AttributeRule,
    CaEngine,
    CaNotUsable,
    CaRecord,
    CertificateQuery,
    CreateRootRequest,
    CsrSignatureInvalid,
    ExtendedKeyUsage,
    InvalidCsr,
    InvalidProfile,
    InvalidRequest,
    IssueRequest,
    KeyIssueRequest,
    KeyUsageBit,
    MemoryRepository,
    Profile,
    ProfileNotFound,
    ProfileViolation,
    SanRule,
    SanType,
    SerialExhausted,
    ServerKeygenRequest,
    SubjectAttr,
    ViolationCode,
)
from hsm import KeyStore, KeyType

from .conftest import install, leaf_key, make_csr, name, openssl, openssl_verify, write_pem

PURPOSE = {"tls-server": "sslserver", "tls-client": "sslclient", "tls-mutual": "sslserver"}
EKUS = {
    "tls-server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "tls-client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "tls-mutual": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}


@pytest.fixture(params=["ec-root", "rsa-root", "intermediate"])
def issuing_ca(request: pytest.FixtureRequest, engine: CaEngine) -> str:
    if request.param == "ec-root":
        engine.create_root(CreateRootRequest(name="ec-root", subject="CN=EC Root,O=csm"))
        install(engine, "ec-root")
        return "ec-root"
    if request.param == "rsa-root":
        engine.create_root(CreateRootRequest(name="rsa-root", subject="CN=RSA Root,O=csm", key_type=KeyType.RSA_2048))
        install(engine, "rsa-root")
        return "rsa-root"
    request.getfixturevalue("sub")
    return "sub"


@pytest.mark.parametrize("profile", ["tls-server", "tls-client", "tls-mutual"])
def test_every_builtin_profile_issues_certificates_that_openssl_verifies_and_pkilint_accepts(
        engine: CaEngine, issuing_ca: str, profile: str, tmp_path: Path, lint) -> None:
    leaf_type = KeyType.RSA_2048 if profile == "tls-client" else KeyType.EC_P256
    csr = make_csr(name("app-1.example.com", O="csm", C="DE"), dns=["app-1.example.com", "app.example.com"],
                   ips=["10.0.0.7"], key=leaf_key(leaf_type))
    issued = engine.issue(IssueRequest(ca=issuing_ca, profile=profile, csr=csr, requester="alice"))
    cert = issued.certificate
    proc = openssl_verify(tmp_path, cert, issued.chain, purpose=PURPOSE[profile])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if profile == "tls-mutual":
        proc = openssl_verify(tmp_path, cert, issued.chain, purpose="sslclient")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lint("cert", issued.der()) == []
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == EKUS[profile]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    if isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        assert not ku.key_encipherment  # dropped for EC keys even where the profile lists it
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {a.access_location.value for a in aia} == {f"http://pki.example.com/ocsp/{issuing_ca}",
                                                      f"http://pki.example.com/ca/{issuing_ca}.crt"}
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == f"http://pki.example.com/crl/{issuing_ca}.crl"
    assert 64 < cert.serial_number.bit_length() <= 159
    record = engine.get_certificate(cert.serial_number)
    assert record.requester == "alice" and record.profile == profile and record.ca_name == issuing_ca
    assert "DNS:app.example.com" in record.sans and "IP:10.0.0.7" in record.sans
    assert issued.pem(include_root=True).count(b"BEGIN CERTIFICATE") == len(issued.chain) + 1


@pytest.mark.parametrize("profile", ["tls-client", "tls-mutual"])
def test_spiffe_and_urn_uri_sans_draw_only_pkilints_uri_scheme_allowlist_finding(
        engine: CaEngine, root, profile: str, lint) -> None:
    """pkilint's pkix.invalid_uri_syntax comes from validators.url, which accepts only
    ftp/ftps/git/http/https/rtsp/sftp/ssh/telnet URLs with a host; spiffe: and urn: URIs are
    valid RFC 3986 absolute URIs as RFC 5280 4.2.1.6 requires. README: "pkilint and SPIFFE IDs".
    Nothing else may be flagged; if pkilint ever accepts them, this test says so."""
    uris = ["spiffe://example.org/ns/prod/sa/payments", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"]
    csr = make_csr(name("payments.example.com"), dns=["payments.example.com"],
                   sans=[x509.UniformResourceIdentifier(u) for u in uris])
    issued = engine.issue(IssueRequest(ca="root", profile=profile, csr=csr, requester="t"))
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == uris
    findings = lint("cert", issued.der())
    assert len(findings) == len(uris), findings
    assert all(f.startswith("pkix.invalid_uri_syntax (ERROR)") and f.endswith(".uniformResourceIdentifier")
               for f in findings), findings


def test_der_csrs_are_accepted_and_the_cn_is_copied_into_the_sans(engine: CaEngine, root) -> None:
    issued = engine.issue(IssueRequest(ca="root", profile="tls-server", csr=make_csr(name("web.example.com"), pem=False),
                                       requester="t"))
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.example.com"]


def test_csr_extensions_are_never_copied_the_profile_decides(engine: CaEngine, root) -> None:
    csr = make_csr(name("x.example.com"), extensions=[
        (x509.OCSPNoCheck(), False),
        (x509.TLSFeature([x509.TLSFeatureType.status_request]), False),
        (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
    ])
    cert = engine.issue(IssueRequest(ca="root", profile="tls-server", csr=csr, requester="t")).certificate
    oids = {e.oid for e in cert.extensions}
    assert x509.OCSPNoCheck.oid not in oids and x509.TLSFeature.oid not in oids
    # the requested keyUsage was a subset of the profile's: the profile's own value is used
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def _nothing_recorded(engine: CaEngine, repo: MemoryRepository, ca: str) -> None:
    leaves = [r for r in engine.search(CertificateQuery(ca_name=ca)) if not r.is_ca and not r.profile.startswith("_")]
    assert leaves == []
    # the root's own self-signature is the only certificate its key has signed
    assert [c.count for c in repo.signature_counts(ca) if c.kind.value == "certificate"] == [1]


def test_malformed_and_forged_csrs_are_refused_and_nothing_is_recorded(engine: CaEngine, repo: MemoryRepository,
                                                                        root) -> None:
    for junk in (b"", b"not a csr", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                 b"\x30\x03\x02\x01\x00", b"A" * 70_000):
        with pytest.raises(InvalidCsr):
            engine.issue(IssueRequest(ca="root", profile="tls-server", csr=junk, requester="t"))
    der = make_csr(name("aaaa.example.com"), pem=False)
    forged = der.replace(b"aaaa.example.com", b"bbbb.example.com")
    assert forged != der
    with pytest.raises(CsrSignatureInvalid):
        engine.issue(IssueRequest(ca="root", profile="tls-server", csr=forged, requester="t"))
    _nothing_recorded(engine, repo, "root")


@pytest.mark.parametrize("case", [
    "rsa-1024", "p-521", "validity-100y", "validity-negative", "email-san-on-server", "bad-dns-syntax",
    "title-attribute", "missing-cn", "ca-requested", "eku-beyond-profile",
])
def test_requests_breaking_the_profile_raise_profile_violation_and_nothing_is_recorded(
        engine: CaEngine, repo: MemoryRepository, root, case: str) -> None:
    profile, validity = "tls-server", None
    subject = name("ok.example.com")
    kwargs: dict = {}
    expected = {
        "rsa-1024": ViolationCode.KEY_TYPE_NOT_ALLOWED, "p-521": ViolationCode.KEY_TYPE_NOT_ALLOWED,
        "validity-100y": ViolationCode.VALIDITY_TOO_LONG, "validity-negative": ViolationCode.VALIDITY_INVALID,
        "email-san-on-server": ViolationCode.SAN_TYPE_NOT_ALLOWED, "bad-dns-syntax": ViolationCode.SAN_SYNTAX,
        "title-attribute": ViolationCode.SUBJECT_ATTRIBUTE_NOT_ALLOWED,
        "missing-cn": ViolationCode.SUBJECT_ATTRIBUTE_MISSING, "ca-requested": ViolationCode.EXTENSION_NOT_ALLOWED,
        "eku-beyond-profile": ViolationCode.KEY_USAGE_NOT_ALLOWED,
    }[case]
    if case == "rsa-1024":
        kwargs["key"] = rsa.generate_private_key(65537, 1024)
    elif case == "p-521":
        kwargs["key"] = ec.generate_private_key(ec.SECP521R1())
    elif case == "validity-100y":
        validity = dt.timedelta(days=36500)
    elif case == "validity-negative":
        validity = dt.timedelta(days=-1)
    elif case == "email-san-on-server":
        kwargs["sans"] = [x509.RFC822Name("ops@example.com")]
    elif case == "bad-dns-syntax":
        kwargs["dns"] = ["under_score.example.com"]
    elif case == "title-attribute":
        subject = name("ok.example.com", title="Boss")
    elif case == "missing-cn":
        profile, subject = "tls-client", name(None, O="csm")
    elif case == "ca-requested":
        kwargs["extensions"] = [(x509.BasicConstraints(ca=True, path_length=None), True)]
    elif case == "eku-beyond-profile":
        kwargs["extensions"] = [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)]
    csr = make_csr(subject, **kwargs)
    with pytest.raises(ProfileViolation) as info:
        engine.issue(IssueRequest(ca="root", profile=profile, csr=csr, requester="mallory", validity=validity))
    assert expected in {v.code for v in info.value.violations}, info.value.violations
    assert info.value.profile == profile
    assert all(v.as_dict()["code"] for v in info.value.violations)
    _nothing_recorded(engine, repo, "root")


def test_a_violation_lists_every_broken_rule(engine: CaEngine, root) -> None:
    csr = make_csr(name("ok.example.com", title="x"), key=rsa.generate_private_key(65537, 1024),
                   sans=[x509.UniformResourceIdentifier("https://x.example.com/")])
    with pytest.raises(ProfileViolation) as info:
        engine.issue(IssueRequest(ca="root", profile="tls-server", csr=csr, requester="t",
                                  validity=dt.timedelta(days=5000)))
    codes = {v.code for v in info.value.violations}
    assert codes >= {ViolationCode.KEY_TYPE_NOT_ALLOWED, ViolationCode.SUBJECT_ATTRIBUTE_NOT_ALLOWED,
                     ViolationCode.SAN_TYPE_NOT_ALLOWED, ViolationCode.VALIDITY_TOO_LONG}


def test_custom_profile_patterns_networks_and_key_types_are_enforced(engine: CaEngine, root, tmp_path: Path,
                                                                      lint) -> None:
    profile = Profile(
        name="internal-svc", ca="root", key_types=frozenset({KeyType.EC_P256}),
        default_validity=dt.timedelta(days=7), max_validity=dt.timedelta(days=30),
        key_usage=frozenset({KeyUsageBit.DIGITAL_SIGNATURE}),
        extended_key_usage=(ExtendedKeyUsage.SERVER_AUTH, ExtendedKeyUsage.CLIENT_AUTH),
        subject={SubjectAttr.CN: AttributeRule(required=True, patterns=(r"[a-z0-9-]+\.svc\.cluster\.local",))},
        san={SanType.DNS: SanRule(patterns=(r"[a-z0-9-]+\.svc\.cluster\.local",), max_count=2),
             SanType.IP: SanRule(networks=("10.96.0.0/12",))},
        require_san=True, copy_cn_to_san=True, crl_url="http://pki.example.com/crl/root.crl")
    engine.put_profile(Profile.from_dict(json.loads(json.dumps(profile.to_dict()))))
    ok = engine.issue(IssueRequest(ca="root", profile="internal-svc", requester="t",
                                   csr=make_csr(name("db.svc.cluster.local"), ips=["10.96.0.10"])))
    assert ok.record.sans == ("DNS:db.svc.cluster.local", "IP:10.96.0.10")
    assert ok.certificate.not_valid_after_utc - ok.certificate.not_valid_before_utc <= dt.timedelta(days=7, minutes=1)
    assert lint("cert", ok.der()) == []
    proc = openssl_verify(tmp_path, ok.certificate, ok.chain)
    assert proc.returncode == 0, proc.stderr
    bad = [
        (make_csr(name("db.example.com")), ViolationCode.SUBJECT_ATTRIBUTE_MISMATCH),
        (make_csr(name("db.svc.cluster.local"), ips=["192.168.1.1"]), ViolationCode.SAN_MISMATCH),
        (make_csr(name("a.svc.cluster.local"), dns=["b.svc.cluster.local", "c.svc.cluster.local"]),
         ViolationCode.TOO_MANY_SANS),
        (make_csr(name("db.svc.cluster.local"), key=leaf_key(KeyType.RSA_2048)), ViolationCode.KEY_TYPE_NOT_ALLOWED),
    ]
    for csr, code in bad:
        with pytest.raises(ProfileViolation) as info:
            engine.issue(IssueRequest(ca="root", profile="internal-svc", csr=csr, requester="t"))
        assert code in {v.code for v in info.value.violations}
    with pytest.raises(ProfileNotFound):
        engine.issue(IssueRequest(ca="root", profile="nope", csr=make_csr(name("x")), requester="t"))


def test_profiles_serialise_to_json_and_bad_definitions_are_refused(root) -> None:
    from ca import builtin_profiles

    for p in builtin_profiles("root", ocsp_url="http://ocsp.example.com/root"):
        assert Profile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    good = builtin_profiles("root")[0].to_dict()
    with pytest.raises(InvalidProfile) as info:
        Profile.from_dict({**good, "max_validity_seconds": 60, "key_types": ["aes-256"], "crl_url": "ftp://x"})
    assert len(info.value.problems) >= 3
    with pytest.raises(InvalidProfile, match="unknown field"):
        Profile.from_dict({**good, "copy_extensions": True})
    with pytest.raises(InvalidProfile):
        Profile.from_dict({**good, "subject": {"CN": {"patterns": ["(unclosed"]}}})
    with pytest.raises(InvalidProfile):
        Profile.from_dict({**good, "key_usage": ["keyCertSign"]})


def test_validity_defaults_are_clamped_to_the_ca_but_explicit_overruns_are_refused(engine: CaEngine) -> None:
    engine.create_root(CreateRootRequest(name="short", subject="CN=Short Root", validity=dt.timedelta(days=10)))
    install(engine, "short")
    ca_end = engine.get_ca("short").certificate.not_valid_after_utc
    issued = engine.issue(IssueRequest(ca="short", profile="tls-server", csr=make_csr(name("a.example.com")),
                                       requester="t"))
    assert issued.certificate.not_valid_after_utc == ca_end
    with pytest.raises(ProfileViolation) as info:
        engine.issue(IssueRequest(ca="short", profile="tls-server", csr=make_csr(name("a.example.com")),
                                  requester="t", validity=dt.timedelta(days=30)))
    assert [v.code for v in info.value.violations] == [ViolationCode.VALIDITY_BEYOND_CA]
    explicit = engine.issue(IssueRequest(ca="short", profile="tls-server", csr=make_csr(name("a.example.com")),
                                         requester="t", not_after=ca_end - dt.timedelta(days=1)))
    assert explicit.certificate.not_valid_after_utc == ca_end - dt.timedelta(days=1)


def test_serials_are_random_159_bit_and_a_taken_serial_is_retried(keystore: KeyStore, root, engine: CaEngine) -> None:
    serials = {engine.issue(IssueRequest(ca="root", profile="tls-client", csr=make_csr(name(f"c{i}")),
                                         requester="t")).record.serial for i in range(10)}
    assert len(serials) == 10 and all(0 < s < 1 << 159 for s in serials)
    taken = next(iter(serials))
    fresh = (1 << 158) + 12345
    repo = engine.certificates
    source = iter([taken, taken, fresh])
    retrying = CaEngine(keys=keystore, cas=engine.cas, certificates=repo, serial_source=lambda: next(source))
    issued = retrying.issue(IssueRequest(ca="root", profile="tls-client", csr=make_csr(name("retry")), requester="t"))
    assert issued.record.serial == fresh == issued.certificate.serial_number
    assert repo.get(taken).subject != issued.record.subject
    stuck = CaEngine(keys=keystore, cas=engine.cas, certificates=repo, serial_source=lambda: taken,
                     serial_attempts=3)
    with pytest.raises(SerialExhausted):
        stuck.issue(IssueRequest(ca="root", profile="tls-client", csr=make_csr(name("stuck")), requester="t"))
    assert len(engine.search(CertificateQuery(ca_name="root", profile="tls-client"))) == 11


def test_server_side_keygen_returns_a_password_protected_pkcs12_and_keeps_no_key(
        engine: CaEngine, root, tmp_path: Path) -> None:
    bundle = engine.issue_with_server_key(ServerKeygenRequest(
        ca="root", profile="tls-mutual", subject="CN=legacy-app", requester="legacy", password="correct horse",
        sans=(x509.DNSName("legacy.example.com"), x509.IPAddress(ipaddress.ip_address("10.1.2.3"))),
        key_type=KeyType.RSA_2048))
    assert "correct horse" not in repr(bundle) and "pkcs12=<" in repr(bundle)
    key, cert, extra = pkcs12.load_key_and_certificates(bundle.pkcs12, b"correct horse")
    assert cert == bundle.issued.certificate and extra == [root.certificate]
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(bundle.pkcs12, b"wrong password")
    p12 = write_pem(tmp_path / "bundle.p12", bundle.pkcs12)
    out = openssl("pkcs12", "-in", p12, "-passin", "pass:correct horse", "-nodes", check=True)
    assert "PRIVATE KEY" in out.stdout and "legacy-app" in out.stdout
    record = engine.get_certificate(cert.serial_number)
    assert record.server_generated_key and record.requester == "legacy"
    with pytest.raises(InvalidRequest):
        engine.issue_with_server_key(ServerKeygenRequest(ca="root", profile="tls-mutual", subject="CN=x",
                                                         requester="t", password="short"))
    engine.put_profile(Profile.from_dict({**engine.get_profile("root", "tls-client").to_dict(),
                                          "name": "no-keygen", "allow_server_keygen": False}))
    with pytest.raises(ProfileViolation) as info:
        engine.issue_with_server_key(ServerKeygenRequest(ca="root", profile="no-keygen", subject="CN=x",
                                                         requester="t", password="long enough"))
    assert info.value.violations[0].code is ViolationCode.SERVER_KEYGEN_NOT_ALLOWED


def test_issue_for_a_key_proven_elsewhere_applies_the_same_profile(engine: CaEngine, root, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    issued = engine.issue_for_key(KeyIssueRequest(
        ca="root", profile="tls-mutual", subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onap-aai")]),
        public_key=key.public_key(), requester="cmp:ra", sans=(x509.DNSName("aai.onap"),)))
    assert issued.record.sans == ("DNS:onap-aai", "DNS:aai.onap")
    assert openssl_verify(tmp_path, issued.certificate, issued.chain).returncode == 0
    with pytest.raises(ProfileViolation):
        engine.issue_for_key(KeyIssueRequest(ca="root", profile="tls-mutual", subject=name("x"),
                                             public_key=key.public_key(), requester="t",
                                             extensions=(x509.Extension(x509.BasicConstraints.oid, True,
                                                                        x509.BasicConstraints(True, None)),)))


def test_the_pkilint_harness_reports_findings(lint) -> None:
    """Guard against a silently blind linter: a certificate with a bad URI and no SKI is flagged."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    from cryptography.hazmat.primitives import hashes, serialization

    cert = (x509.CertificateBuilder().subject_name(name("x")).issuer_name(name("x")).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier("http://x y/")], None, None, None)]), critical=False)
            .sign(key, hashes.SHA256()))
    findings = lint("cert", cert.public_bytes(serialization.Encoding.DER))
    assert any("uri" in f.lower() for f in findings), findings


def test_concurrent_issuance_from_several_threads_records_every_certificate_once(engine: CaEngine, root) -> None:
    from concurrent.futures import ThreadPoolExecutor

    csrs = [make_csr(name(f"t{i}.example.com")) for i in range(40)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        issued = list(pool.map(lambda c: engine.issue(IssueRequest(ca="root", profile="tls-server", csr=c,
                                                                   requester="threads")), csrs))
    serials = {i.record.serial for i in issued}
    assert len(serials) == 40
    assert _serials_of(engine.search(CertificateQuery(requester="threads", limit=100))) == serials
    for i in issued:
        i.certificate.verify_directly_issued_by(root.certificate)
    counts = {c.kind.value: c.count for c in engine.certificates.signature_counts("root")}
    assert counts["certificate"] == 41  # self-signature + 40


def _serials_of(records: list) -> set[int]:  # type: ignore[type-arg]
    return {r.serial for r in records}


def test_a_replaced_profile_applies_to_the_next_certificate_and_a_deleted_one_to_none(engine: CaEngine,
                                                                                      root) -> None:
    """The engine keeps a prepared builder per issuer, profile and key type: a profile written
    again (or deleted) must not leave the old one in use."""
    def profile(**kw: object) -> Profile:
        base: dict[str, object] = {
            "name": "svc", "ca": "root", "key_types": frozenset({KeyType.EC_P256, KeyType.RSA_2048}),
            "default_validity": dt.timedelta(days=7), "max_validity": dt.timedelta(days=30),
            "key_usage": frozenset({KeyUsageBit.DIGITAL_SIGNATURE, KeyUsageBit.KEY_ENCIPHERMENT}),
            "extended_key_usage": (ExtendedKeyUsage.SERVER_AUTH,), "subject": {SubjectAttr.CN: AttributeRule()},
            "san": {SanType.DNS: SanRule()}, "crl_url": "http://pki.example.com/crl/a.crl"}
        return Profile(**{**base, **kw})  # type: ignore[arg-type]

    def issue(key_type: KeyType = KeyType.EC_P256) -> x509.Certificate:
        return engine.issue(IssueRequest(ca="root", profile="svc", requester="t", csr=make_csr(
            name("a.example.com"), dns=["a.example.com"], key=leaf_key(key_type)))).certificate

    engine.put_profile(profile())
    first = issue()
    assert first.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    assert first.extensions.get_extension_for_class(x509.BasicConstraints).critical
    # the key usages follow the key type under one profile (keyEncipherment is dropped for EC keys)
    assert not first.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert issue(KeyType.RSA_2048).extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert issue().extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name == [
        x509.UniformResourceIdentifier("http://pki.example.com/crl/a.crl")]

    engine.put_profile(profile(extended_key_usage=(ExtendedKeyUsage.CLIENT_AUTH,), basic_constraints=False,
                               crl_url="http://pki.example.com/crl/b.crl"))
    second = issue()
    assert second.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH])
    assert x509.BasicConstraints.oid not in {e.oid for e in second.extensions}
    assert second.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name == [
        x509.UniformResourceIdentifier("http://pki.example.com/crl/b.crl")]

    engine.delete_profile("root", "svc")
    with pytest.raises(ProfileNotFound):
        issue()


def test_a_changed_ca_record_is_used_at_once(engine: CaEngine, repo: MemoryRepository, root) -> None:
    """The engine derives the issuer name, key id and validity once per CA record: when the
    repository hands out another record for the CA (here its certificate, re-issued for the same
    key, has expired) the next issuance follows it."""
    issued = engine.issue(IssueRequest(ca="root", profile="tls-server", requester="t",
                                       csr=make_csr(name("a.example.com"), dns=["a.example.com"])))
    assert issued.certificate.issuer == root.certificate.subject

    now = engine.now()
    old = root.certificate
    expired = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
               .public_key(old.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(engine.signing_key("root"), hashes.SHA256()))

    class Renewed:
        """The test's repository, handing out the re-issued record for ``root``."""

        def __init__(self, record: CaRecord) -> None:
            self.record = record

        def get_ca(self, name_: str) -> CaRecord:
            return self.record if name_ == "root" else repo.get_ca(name_)

        def __getattr__(self, attr: str) -> object:
            return getattr(repo, attr)

    renewed = CaEngine(keys=engine._keys, cas=Renewed(root), certificates=repo)  # type: ignore[arg-type]
    assert renewed.issue(IssueRequest(ca="root", profile="tls-server", requester="t", csr=make_csr(
        name("b.example.com"), dns=["b.example.com"]))).certificate.issuer == old.subject
    renewed._cas.record = replace(root, certificate_der=expired.public_bytes(serialization.Encoding.DER))  # type: ignore[attr-defined]
    with pytest.raises(CaNotUsable):
        renewed.issue(IssueRequest(ca="root", profile="tls-server", requester="t",
                                   csr=make_csr(name("c.example.com"), dns=["c.example.com"])))
