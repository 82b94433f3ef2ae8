"""CA creation (root EC/RSA, intermediates, several side by side), import of an admin-made CA
into the token, and export of certificates and chains. Keys live in the real SoftHSM token."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from ca import (
    CaEngine,
    CaExists,
    CaNotFound,
    CaNotUsable,
    CreateIntermediateRequest,
    CreateRootRequest,
    ExportFormat,
    ImportCaRequest,
    InvalidCaMaterial,
    IssueRequest,
    KeyMismatch,
    MemoryRepository,
    RevocationReason,
    RevokeRequest,
)
from hsm import KeyNotExtractable, KeyStore, KeyType

from .conftest import install, make_csr, name, openssl, openssl_verify, write_pem


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_root_ca_key_is_generated_in_the_token_and_the_certificate_has_ca_extensions(
        engine: CaEngine, keystore: KeyStore, key_type: KeyType, tmp_path: Path, lint) -> None:
    record = engine.create_root(CreateRootRequest(name="r", subject="CN=Root Under Test,O=csm", key_type=key_type))
    cert = record.certificate
    info = keystore.get(record.key_label)
    assert info.key_type is key_type and not info.extractable and info.sensitive
    with pytest.raises(KeyNotExtractable):
        keystore.private_key(record.key_label).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert cert.serial_number.bit_length() > 64
    cert.verify_directly_issued_by(cert)
    # openssl accepts it as a trust anchor, and it signs a leaf that verifies
    install(engine, "r")
    issued = engine.issue(IssueRequest(ca="r", profile="tls-server",
                                       csr=make_csr(name("a.example.com")), requester="t"))
    proc = openssl_verify(tmp_path, issued.certificate, issued.chain, purpose="sslserver")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lint("cert", record.certificate_der) == []


def test_intermediate_chain_verifies_with_openssl_and_is_in_the_parents_inventory(
        engine: CaEngine, root, sub, tmp_path: Path, lint) -> None:
    cert = sub.certificate
    assert sub.parent == "root" and sub.chain[1] == root.certificate
    assert _ext(cert, x509.BasicConstraints).value.path_length == 0
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        _ext(root.certificate, x509.SubjectKeyIdentifier).value.digest
    record = engine.get_certificate(cert.serial_number)
    assert record.ca_name == "root" and record.is_ca
    assert lint("cert", sub.certificate_der) == []
    issued = engine.issue(IssueRequest(ca="sub", profile="tls-mutual",
                                       csr=make_csr(name("svc-a"), dns=["svc-a.example.com"]), requester="t"))
    assert issued.chain == (sub.certificate, root.certificate)
    proc = openssl_verify(tmp_path, issued.certificate, issued.chain)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # a path length of 0 allows no CA below
    with pytest.raises(CaNotUsable):
        engine.create_intermediate(CreateIntermediateRequest(name="deeper", parent="sub", subject="CN=Too Deep"))


def test_several_cas_live_side_by_side_addressed_by_name(engine: CaEngine) -> None:
    a = engine.create_root(CreateRootRequest(name="alpha", subject="CN=Alpha"))
    b = engine.create_root(CreateRootRequest(name="beta", subject="CN=Beta", key_type=KeyType.EC_P384))
    c = engine.create_intermediate(CreateIntermediateRequest(name="alpha-issuing", parent="alpha",
                                                             subject="CN=Alpha Issuing"))
    assert [r.name for r in engine.list_cas()] == ["alpha", "alpha-issuing", "beta"]
    assert len({a.key_label, b.key_label, c.key_label}) == 3
    assert engine.get_ca("beta").certificate.subject == b.certificate.subject
    with pytest.raises(CaExists):
        engine.create_root(CreateRootRequest(name="alpha", subject="CN=Again"))
    with pytest.raises(CaNotFound):
        engine.get_ca("gamma")
    with pytest.raises(CaNotFound):
        engine.create_intermediate(CreateIntermediateRequest(name="x", parent="gamma", subject="CN=X"))


def test_a_revoked_intermediate_is_listed_in_the_parents_crl(engine: CaEngine, root, sub, tmp_path: Path) -> None:
    engine.revoke(RevokeRequest(serial=sub.certificate.serial_number, reason=RevocationReason.CA_COMPROMISE))
    crl = x509.load_der_x509_crl(engine.generate_crl("root").der)
    entry = crl.get_revoked_certificate_by_serial_number(sub.certificate.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.ca_compromise


def _admin_made_ca(tmp_path: Path, key_kind: str = "ec") -> tuple[bytes, bytes, object]:
    """An admin's CA made with openssl outside csm: key (PKCS#8 PEM, encrypted) and certificate."""
    key_path, cert_path = tmp_path / "admin.key", tmp_path / "admin.pem"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_kind == "ec" else ["-newkey", "rsa:2048"]
    openssl("req", "-x509", *newkey, "-keyout", key_path, "-out", cert_path, "-days", "365", "-subj",
            "/O=Admin/CN=Admin Made CA", "-passout", "pass:admin-secret",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            check=True)
    key = serialization.load_pem_private_key(key_path.read_bytes(), b"admin-secret")
    return cert_path.read_bytes(), key_path.read_bytes(), key


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_imported_ca_key_becomes_a_non_extractable_token_key_matching_the_certificate(
        engine: CaEngine, keystore: KeyStore, tmp_path: Path, kind: str) -> None:
    cert_pem, key_pem, _ = _admin_made_ca(tmp_path, kind)
    record = engine.import_ca(ImportCaRequest(name="imported", certificate=cert_pem, private_key=key_pem,
                                              password=b"admin-secret", requester="admin"))
    assert record.imported and record.is_root
    info = keystore.get(record.key_label)
    assert not info.extractable and info.sensitive
    token_key = keystore.private_key(record.key_label)
    with pytest.raises(KeyNotExtractable):
        token_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert token_key.public_key().public_bytes(*spki) == record.certificate.public_key().public_bytes(*spki)
    # and it issues certificates that verify under the imported root
    install(engine, "imported")
    issued = engine.issue(IssueRequest(ca="imported", profile="tls-client", csr=make_csr(name("client-1")),
                                       requester="t"))
    proc = openssl_verify(tmp_path, issued.certificate, issued.chain, purpose="sslclient")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_refuses_a_key_that_does_not_match_and_leaves_no_key_behind(
        engine: CaEngine, keystore: KeyStore, tmp_path: Path) -> None:
    cert_pem, _, _ = _admin_made_ca(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    before = {k.label for k in keystore.list_keys()}
    with pytest.raises(KeyMismatch):
        engine.import_ca(ImportCaRequest(name="imported", certificate=cert_pem, private_key=other,
                                         key_label="import-mismatch-test"))
    assert {k.label for k in keystore.list_keys()} == before
    with pytest.raises(CaNotFound):
        engine.get_ca("imported")


def test_import_refuses_non_ca_certificates_bad_passwords_and_missing_chains(
        engine: CaEngine, root, tmp_path: Path) -> None:
    cert_pem, key_pem, key = _admin_made_ca(tmp_path)
    with pytest.raises(InvalidCaMaterial):
        engine.import_ca(ImportCaRequest(name="i1", certificate=cert_pem, private_key=key_pem, password=b"wrong"))
    with pytest.raises(InvalidCaMaterial):
        engine.import_ca(ImportCaRequest(name="i2", certificate=b"garbage", private_key=key_pem))
    # a leaf certificate is not a CA
    issued = engine.issue(IssueRequest(ca="root", profile="tls-client", csr=make_csr(name("leaf")), requester="t"))
    with pytest.raises(InvalidCaMaterial, match="not a CA"):
        engine.import_ca(ImportCaRequest(name="i3", certificate=issued.pem(with_chain=False), private_key=key_pem,
                                         password=b"admin-secret"))
    # a subordinate CA needs its issuer chain, and the chain must really have issued it
    sub_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    sub_cert = (x509.CertificateBuilder().subject_name(name("External Sub")).issuer_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Admin"),
                   x509.NameAttribute(NameOID.COMMON_NAME, "Admin Made CA")]))
        .public_key(sub_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    sub_pem = sub_cert.public_bytes(serialization.Encoding.PEM)
    sub_key_pem = sub_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    with pytest.raises(InvalidCaMaterial, match="chain is missing"):
        engine.import_ca(ImportCaRequest(name="i4", certificate=sub_pem, private_key=sub_key_pem))
    with pytest.raises(InvalidCaMaterial, match="not signed by"):
        engine.import_ca(ImportCaRequest(name="i5", certificate=sub_pem, private_key=sub_key_pem,
                                         chain=(engine.export_ca("root"),)))
    record = engine.import_ca(ImportCaRequest(name="i6", certificate=sub_pem, private_key=sub_key_pem,
                                              chain=(cert_pem,)))
    assert [c.subject for c in record.chain] == [sub_cert.subject, x509.load_pem_x509_certificate(cert_pem).subject]


def test_ca_certificate_and_chain_export_as_pem_der_and_pkcs7(engine: CaEngine, root, sub, tmp_path: Path) -> None:
    assert engine.export_ca("sub", ExportFormat.DER) == sub.certificate_der
    pem_chain = engine.export_ca("sub", ExportFormat.PEM, with_chain=True)
    assert x509.load_pem_x509_certificates(pem_chain) == [sub.certificate, root.certificate]
    p7 = engine.export_ca("sub", ExportFormat.PKCS7_DER, with_chain=True)
    # SignedData.certificates is a SET OF: DER orders it, so compare as sets
    assert set(pkcs7.load_der_pkcs7_certificates(p7)) == {sub.certificate, root.certificate}
    p7_pem = engine.export_ca("sub", ExportFormat.PKCS7_PEM, with_chain=True)
    assert set(pkcs7.load_pem_pkcs7_certificates(p7_pem)) == {sub.certificate, root.certificate}
    # openssl reads the PKCS#7 too
    out = openssl("pkcs7", "-inform", "DER", "-in", write_pem(tmp_path / "c.p7b", p7), "-print_certs", "-noout",
                  check=True)
    assert "csm Test Issuing CA" in out.stdout and "csm Test Root" in out.stdout
    with pytest.raises(ValueError):
        engine.export_ca("sub", ExportFormat.DER, with_chain=True)


def test_intermediate_lifetime_cannot_outlive_its_parent(engine: CaEngine) -> None:
    engine.create_root(CreateRootRequest(name="short", subject="CN=Short Root", validity=dt.timedelta(days=30)))
    from ca import InvalidRequest

    with pytest.raises(InvalidRequest):
        engine.create_intermediate(CreateIntermediateRequest(name="long", parent="short", subject="CN=Long",
                                                             validity=dt.timedelta(days=365)))


def test_engine_state_is_only_in_its_repositories(keystore: KeyStore, tmp_path: Path) -> None:
    """A second engine over the same repository and token sees and uses the same CAs."""
    repo = MemoryRepository()
    first = CaEngine(keys=keystore, cas=repo, certificates=repo)
    first.create_root(CreateRootRequest(name="shared", subject="CN=Shared Root", key_type=KeyType.EC_P384))
    install(first, "shared")
    second = CaEngine(keys=keystore, cas=repo, certificates=repo)
    issued = second.issue(IssueRequest(ca="shared", profile="tls-server", csr=make_csr(name("s.example.com")),
                                       requester="t"))
    assert isinstance(issued.chain[0].public_key(), ec.EllipticCurvePublicKey)
    assert first.get_certificate(issued.record.serial) == issued.record
    proc = openssl_verify(tmp_path, issued.certificate, issued.chain)
    assert proc.returncode == 0, proc.stderr
