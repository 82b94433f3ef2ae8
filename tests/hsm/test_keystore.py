"""KeyStore behaviour against a real SoftHSMv2 token (tests/conftest.py fixtures)."""
from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as px

import hsm
from hsm import (
    DecryptionFailed,
    DuplicateLabel,
    HashAlg,
    InvalidKeyMaterial,
    KeyNotExtractable,
    KeyNotFound,
    KeyStore,
    KeyType,
    MechanismUnsupported,
    SignatureScheme,
    TokenConfig,
    TokenNotInitialized,
    TokenUnavailable,
    WrongKeyType,
    WrongPin,
)
from hsm import _p11

HASHES = {HashAlg.SHA256: hashes.SHA256(), HashAlg.SHA384: hashes.SHA384(), HashAlg.SHA512: hashes.SHA512()}


@pytest.fixture(scope="module")
def rsa_key(keystore: KeyStore) -> str:
    label = "test-rsa-2048"
    if not keystore.exists(label):
        keystore.generate(label, KeyType.RSA_2048)
    return label


@pytest.fixture(scope="module")
def ec_key(keystore: KeyStore) -> str:
    label = "test-ec-p256"
    if not keystore.exists(label):
        keystore.generate(label, KeyType.EC_P256)
    return label


@pytest.fixture(scope="module")
def aes_key(keystore: KeyStore) -> str:
    label = "test-aes-256"
    if not keystore.exists(label):
        keystore.generate(label, KeyType.AES_256)
    return label


@pytest.fixture
def raw_session(keystore: KeyStore) -> Iterator[Any]:
    """A plain python-pkcs11 session on the key store's token, in the same (logged-in) context:
    what an attacker holding the PIN could do with the module directly."""
    session = _open_raw_session(keystore)
    yield session
    session.close()


def _open_raw_session(keystore: KeyStore) -> Any:
    cfg = keystore.config
    keystore.open()
    token = _p11.find_token(_p11.module_lib(cfg.module_path), cfg.token_label)
    assert token is not None
    return token.open(rw=True)


def _raw_objects(session: Any, label: str) -> dict[ObjectClass, Any]:
    return {obj[Attribute.CLASS]: obj for obj in session.get_objects({Attribute.LABEL: label})}


# -- configuration and opening ---------------------------------------------------------------------

def test_token_config_repr_never_shows_the_pin() -> None:
    cfg = TokenConfig(token_label="t", pin="s3cret-PIN-value")
    assert "s3cret-PIN-value" not in repr(cfg)
    assert "s3cret-PIN-value" not in str(cfg)
    assert "s3cret-PIN-value" not in repr(KeyStore(cfg))


def test_wrong_pin_raises_wrong_pin_without_echoing_it(make_token: Any) -> None:
    cfg = dataclasses.replace(make_token("pin"), pin="not-the-pin-4711")
    with pytest.raises(WrongPin) as info:
        KeyStore(cfg).open()
    assert "not-the-pin-4711" not in str(info.value)


def test_second_store_with_a_different_pin_in_the_same_process_is_refused(keystore: KeyStore) -> None:
    other = KeyStore(dataclasses.replace(keystore.config, pin="wrong-pin-1234"))
    with pytest.raises(WrongPin):
        other.open()


def test_unknown_token_label_raises_token_not_initialized(token_config: TokenConfig) -> None:
    cfg = dataclasses.replace(token_config, token_label="no-such-token-here")
    with pytest.raises(TokenNotInitialized):
        KeyStore(cfg).open()


def test_missing_module_raises_token_unavailable(tmp_path: Any) -> None:
    cfg = TokenConfig(module_path=str(tmp_path / "nope.so"), token_label="x", pin="1234")
    with pytest.raises(TokenUnavailable):
        KeyStore(cfg).open()


def test_status_reports_available_and_logged_in(keystore: KeyStore, token_config: TokenConfig) -> None:
    status = keystore.status()
    assert status == hsm.TokenStatus(True, token_config.token_label, token_config.module_path, True, "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.available = False  # type: ignore[misc]


def test_store_closed_then_used_again_reopens(make_token: Any) -> None:
    ks = KeyStore(make_token("reopen"))
    with ks:
        ks.generate("k", KeyType.AES_256)
    assert ks.exists("k")  # lazily re-opened
    ks.close()


def test_stores_of_one_token_share_the_login_and_caches(keystore: KeyStore, unique: str) -> None:
    twin = KeyStore(keystore.config)
    label = f"shared-{unique}"
    twin.generate(label, KeyType.AES_256)
    blob = keystore.encrypt(label, b"x")
    twin.destroy(label)  # invalidates keystore's cached handle too
    with pytest.raises(KeyNotFound):
        keystore.decrypt(label, blob)
    twin.close()
    assert keystore.status().logged_in


def test_global_lock_mode_store_works(make_token: Any) -> None:
    with KeyStore(make_token("glock"), lock_mode="global") as ks:
        assert ks.lock_mode is hsm.LockMode.GLOBAL
        ks.generate("e", KeyType.EC_P256)
        sig = ks.sign("e", b"m", SignatureScheme.ECDSA, HashAlg.SHA256)
        pub: Any = ks.public_key("e")
        pub.verify(sig, b"m", ec.ECDSA(hashes.SHA256()))


def test_keystore_pickles_to_an_unopened_equivalent(keystore: KeyStore) -> None:
    clone = pickle.loads(pickle.dumps(keystore))
    assert clone.config == keystore.config and clone.lock_mode is keystore.lock_mode


# -- generation, uniqueness, listing ---------------------------------------------------------------

@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.EC_P256, KeyType.EC_P384, KeyType.AES_256])
def test_generated_key_is_sensitive_and_not_extractable(keystore: KeyStore, unique: str, key_type: KeyType) -> None:
    label = f"gen-{key_type.value}-{unique}"
    info = keystore.generate(label, key_type)
    assert (info.label, info.key_type, info.extractable, info.sensitive) == (label, key_type, False, True)
    assert len(info.key_id) == 16
    assert keystore.get(label) == info
    keystore.destroy(label)


def test_large_rsa_keys_generate_and_sign(make_token: Any) -> None:
    with KeyStore(make_token("bigrsa")) as ks:
        for key_type, bits in ((KeyType.RSA_3072, 3072), (KeyType.RSA_4096, 4096)):
            ks.generate(key_type.value, key_type)
            pub = ks.public_key(key_type.value)
            assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == bits
            sig = ks.sign(key_type.value, b"m", SignatureScheme.RSA_PSS, HashAlg.SHA384)
            pub.verify(sig, b"m", padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())


def test_wrappable_is_only_for_aes(keystore: KeyStore, unique: str) -> None:
    with pytest.raises(ValueError):
        keystore.generate(f"w-{unique}", KeyType.EC_P256, wrappable=True)
    info = keystore.generate(f"w-{unique}", KeyType.AES_256, wrappable=True)
    assert info.extractable and info.sensitive


def test_duplicate_label_is_refused_for_every_way_of_creating(keystore: KeyStore, unique: str, aes_key: str) -> None:
    label = f"dup-{unique}"
    keystore.generate(label, KeyType.EC_P256)
    with pytest.raises(DuplicateLabel):
        keystore.generate(label, KeyType.AES_256)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(DuplicateLabel):
        keystore.import_private_key(label, pem)
    keystore.generate(f"{label}-w", KeyType.AES_256, wrappable=True)
    with pytest.raises(DuplicateLabel):
        keystore.unwrap(aes_key, keystore.wrap(aes_key, f"{label}-w"), label)
    assert [k.label for k in keystore.list_keys()].count(label) == 1


def test_invalid_labels_are_rejected(keystore: KeyStore) -> None:
    with pytest.raises(TypeError):
        keystore.generate(b"bytes", KeyType.AES_256)  # type: ignore[arg-type]
    for bad in ("", " padded", "x" * 300):
        with pytest.raises(ValueError):
            keystore.generate(bad, KeyType.AES_256)


def test_list_get_exists_destroy(keystore: KeyStore, unique: str) -> None:
    labels = {f"lst-{unique}-{kt.value}": kt for kt in (KeyType.EC_P384, KeyType.AES_256)}
    for label, kt in labels.items():
        keystore.generate(label, kt)
    listed = {k.label: k.key_type for k in keystore.list_keys()}
    assert all(listed[label] is kt for label, kt in labels.items())
    for label in labels:
        assert keystore.exists(label)
        keystore.destroy(label)
        assert not keystore.exists(label)
        with pytest.raises(KeyNotFound):
            keystore.get(label)
        with pytest.raises(KeyNotFound):
            keystore.destroy(label)
    assert not set(labels) & {k.label for k in keystore.list_keys()}


def test_destroy_removes_the_public_key_object_too(keystore: KeyStore, unique: str, raw_session: Any) -> None:
    label = f"pair-{unique}"
    keystore.generate(label, KeyType.EC_P256)
    assert set(_raw_objects(raw_session, label)) == {ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY}
    keystore.destroy(label)
    assert _raw_objects(raw_session, label) == {}


def test_key_destroyed_behind_the_stores_back_is_not_served_from_the_handle_cache(
        keystore: KeyStore, unique: str, raw_session: Any) -> None:
    label = f"stale-{unique}"
    keystore.generate(label, KeyType.AES_256)
    keystore.encrypt(label, b"warm the cache")
    for obj in raw_session.get_objects({Attribute.LABEL: label}):
        obj.destroy()
    with pytest.raises(KeyNotFound):
        keystore.encrypt(label, b"x")


def test_key_replaced_behind_the_stores_back_is_picked_up(keystore: KeyStore, unique: str, raw_session: Any) -> None:
    from pkcs11.util.ec import encode_named_curve_parameters

    label = f"replaced-{unique}"
    keystore.generate(label, KeyType.EC_P256)
    old_pub: Any = keystore.public_key(label)
    keystore.sign(label, b"warm", SignatureScheme.ECDSA, HashAlg.SHA256)  # handle cached
    for obj in raw_session.get_objects({Attribute.LABEL: label}):
        obj.destroy()
    params = raw_session.create_domain_parameters(
        pkcs11.KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
    params.generate_keypair(store=True, label=label, id=b"other-writer")
    sig = keystore.sign(label, b"m", SignatureScheme.ECDSA, HashAlg.SHA256)
    new_pub: Any = keystore.public_key(label)
    assert new_pub.public_numbers() != old_pub.public_numbers()
    new_pub.verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
    assert keystore.get(label).key_id == b"other-writer"


def test_recreated_label_uses_the_new_key(keystore: KeyStore, unique: str) -> None:
    label = f"again-{unique}"
    keystore.generate(label, KeyType.EC_P256)
    first: Any = keystore.public_key(label)
    keystore.destroy(label)
    keystore.generate(label, KeyType.EC_P256)
    second: Any = keystore.public_key(label)
    assert first.public_numbers() != second.public_numbers()
    sig = keystore.sign(label, b"m", SignatureScheme.ECDSA, HashAlg.SHA256)
    second.verify(sig, b"m", ec.ECDSA(hashes.SHA256()))


# -- nothing leaves the token ------------------------------------------------------------------------

def _assert_not_exportable(session: Any, label: str, secret_attrs: tuple[Attribute, ...], *,
                           generated: bool = False) -> None:
    objs = _raw_objects(session, label)
    key = objs.get(ObjectClass.PRIVATE_KEY) or objs[ObjectClass.SECRET_KEY]
    assert key[Attribute.EXTRACTABLE] is False
    assert key[Attribute.SENSITIVE] is True
    if generated:  # born in the token and never extractable (imported/unwrapped keys cannot claim that)
        assert key[Attribute.NEVER_EXTRACTABLE] is True and key[Attribute.ALWAYS_SENSITIVE] is True
    for attr in secret_attrs:
        with pytest.raises(px.AttributeSensitive):
            key[attr]
    kek = session.generate_key(pkcs11.KeyType.AES, 256, store=False,
                               template={Attribute.WRAP: True, Attribute.EXTRACTABLE: False})
    for mechanism in (Mechanism.AES_KEY_WRAP_PAD, Mechanism.AES_KEY_WRAP):
        with pytest.raises((px.KeyUnextractable, px.KeyNotWrappable, px.MechanismInvalid)):
            kek.wrap_key(key, mechanism=mechanism)
    kek.destroy()
    with pytest.raises(px.PKCS11Error):  # and it cannot be flipped to extractable afterwards
        key[Attribute.EXTRACTABLE] = True


RSA_SECRETS = (Attribute.PRIVATE_EXPONENT, Attribute.PRIME_1, Attribute.PRIME_2, Attribute.EXPONENT_1,
               Attribute.EXPONENT_2, Attribute.COEFFICIENT)


@pytest.mark.parametrize(("key_type", "secrets"), [
    (KeyType.RSA_2048, RSA_SECRETS), (KeyType.EC_P256, (Attribute.VALUE,)), (KeyType.AES_256, (Attribute.VALUE,)),
])
def test_generated_key_material_cannot_be_read_or_wrapped(
        keystore: KeyStore, raw_session: Any, unique: str, key_type: KeyType, secrets: tuple[Attribute, ...]) -> None:
    label = f"nx-{key_type.value}-{unique}"
    keystore.generate(label, key_type)
    _assert_not_exportable(raw_session, label, secrets, generated=True)
    if key_type is KeyType.AES_256:
        with pytest.raises(KeyNotExtractable):
            keystore.wrap(label, label)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_imported_key_material_cannot_be_read_or_wrapped(
        keystore: KeyStore, raw_session: Any, unique: str, aes_key: str, kind: str) -> None:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP384R1())
    label = f"imp-nx-{kind}-{unique}"
    info = keystore.import_private_key(label, key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert not info.extractable and info.sensitive
    _assert_not_exportable(raw_session, label, RSA_SECRETS if kind == "rsa" else (Attribute.VALUE,))
    with pytest.raises(KeyNotExtractable):
        keystore.wrap(aes_key, label)


# -- import ----------------------------------------------------------------------------------------

def _key(kind: str) -> Any:
    factories: dict[str, Any] = {"rsa2048": lambda: rsa.generate_private_key(65537, 2048),
            "rsa3072": lambda: rsa.generate_private_key(65537, 3072),
            "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "p384": lambda: ec.generate_private_key(ec.SECP384R1())}
    return factories[kind]()


@pytest.mark.parametrize("kind", ["rsa2048", "rsa3072", "p256", "p384"])
@pytest.mark.parametrize(("encoding", "fmt", "password"), [
    (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, None),
    (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, None),
    (serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, None),
    (serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, None),
    (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, "pw-ä1"),
    (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, b"pw2"),
    (serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, b"pw3"),
])
def test_imported_key_signs_like_the_original(keystore: KeyStore, unique: str, kind: str,
                                               encoding: Any, fmt: Any, password: Any) -> None:
    key = _key(kind)
    enc = (serialization.BestAvailableEncryption(password.encode() if isinstance(password, str) else password)
           if password else serialization.NoEncryption())
    label = f"imp-{kind}-{unique}"
    info = keystore.import_private_key(label, key.private_bytes(encoding, fmt, enc), password=password)
    assert info.key_type.is_rsa == (kind.startswith("rsa"))
    pub = keystore.public_key(label)
    assert pub.public_numbers() == key.public_key().public_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        sig = keystore.sign(label, b"m", SignatureScheme.RSA_PKCS1V15, HashAlg.SHA256)
        key.public_key().verify(sig, b"m", padding.PKCS1v15(), hashes.SHA256())
    else:
        sig = keystore.sign(label, b"m", SignatureScheme.ECDSA, HashAlg.SHA384)
        key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA384()))
    keystore.destroy(label)


def test_import_rejects_bad_input_without_creating_anything(keystore: KeyStore, unique: str) -> None:
    label = f"bad-{unique}"
    good = ec.generate_private_key(ec.SECP256R1())
    encrypted = good.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.BestAvailableEncryption(b"Pw-Right-77"))
    cases: list[tuple[bytes, Any]] = [
        (b"not a key", None),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", None),
        (encrypted, b"Pw-Wrong-88"),
        (encrypted, None),
        (rsa.generate_private_key(65537, 1024).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), None),
        (ec.generate_private_key(ec.SECP521R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), None),
        (ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), None),
    ]
    for data, password in cases:
        with pytest.raises(InvalidKeyMaterial) as info:
            keystore.import_private_key(label, data, password=password)
        assert "Pw-Right-77" not in str(info.value) and "Pw-Wrong-88" not in str(info.value)
    assert not keystore.exists(label)


# -- signing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("hash_alg", list(HashAlg))
@pytest.mark.parametrize("scheme", list(SignatureScheme))
def test_every_sign_scheme_and_hash_verifies_with_cryptography(
        keystore: KeyStore, rsa_key: str, ec_key: str, scheme: SignatureScheme, hash_alg: HashAlg) -> None:
    data = b"to be signed " * 50
    h = HASHES[hash_alg]
    digest = hashes.Hash(h)
    digest.update(data)
    prehashed = digest.finalize()
    label = ec_key if scheme is SignatureScheme.ECDSA else rsa_key
    pub: Any = keystore.public_key(label)
    for sig in (keystore.sign(label, data, scheme, hash_alg), keystore.sign_digest(label, prehashed, scheme, hash_alg)):
        if scheme is SignatureScheme.ECDSA:
            pub.verify(sig, data, ec.ECDSA(h))
        elif scheme is SignatureScheme.RSA_PKCS1V15:
            pub.verify(sig, data, padding.PKCS1v15(), h)
        else:
            pub.verify(sig, data, padding.PSS(padding.MGF1(h), padding.PSS.DIGEST_LENGTH), h)


def test_pss_salt_length_can_be_chosen(keystore: KeyStore, rsa_key: str) -> None:
    pub: Any = keystore.public_key(rsa_key)
    sig = keystore.sign(rsa_key, b"m", SignatureScheme.RSA_PSS, HashAlg.SHA256, salt_length=0)
    pub.verify(sig, b"m", padding.PSS(padding.MGF1(hashes.SHA256()), 0), hashes.SHA256())


def test_sign_digest_checks_the_digest_length(keystore: KeyStore, ec_key: str) -> None:
    with pytest.raises(ValueError):
        keystore.sign_digest(ec_key, b"\0" * 31, SignatureScheme.ECDSA, HashAlg.SHA256)


def test_operations_the_key_cannot_do_raise_wrong_key_type(keystore: KeyStore, rsa_key: str, ec_key: str,
                                                            aes_key: str) -> None:
    with pytest.raises(WrongKeyType):
        keystore.sign(rsa_key, b"m", SignatureScheme.ECDSA, HashAlg.SHA256)
    with pytest.raises(WrongKeyType):
        keystore.sign(ec_key, b"m", SignatureScheme.RSA_PSS, HashAlg.SHA256)
    with pytest.raises(WrongKeyType):
        keystore.sign(aes_key, b"m", SignatureScheme.ECDSA, HashAlg.SHA256)
    with pytest.raises(WrongKeyType):
        keystore.encrypt(ec_key, b"m")
    with pytest.raises(WrongKeyType):
        keystore.public_key(aes_key)
    with pytest.raises(WrongKeyType):
        keystore.private_key(aes_key)
    with pytest.raises(WrongKeyType):
        keystore.wrap(ec_key, aes_key)
    with pytest.raises(KeyNotFound):
        keystore.sign("no-such-key", b"m", SignatureScheme.ECDSA, HashAlg.SHA256)


def test_bad_argument_types_fail_early(keystore: KeyStore, aes_key: str) -> None:
    with pytest.raises(TypeError):
        keystore.encrypt(aes_key, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        keystore.generate("x", "aes-256")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        KeyStore("not a config")  # type: ignore[arg-type]


# -- AES-256-GCM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("plaintext", [b"", b"x", b"secret" * 1000])
@pytest.mark.parametrize("aad", [b"", b"secrets/db/password#v3"])
def test_aes_gcm_round_trip(keystore: KeyStore, aes_key: str, plaintext: bytes, aad: bytes) -> None:
    blob = keystore.encrypt(aes_key, plaintext, aad)
    assert len(blob) == 12 + len(plaintext) + 16
    assert keystore.decrypt(aes_key, blob, aad) == plaintext


def test_aes_gcm_output_is_standard_gcm(keystore: KeyStore, unique: str, aes_key: str) -> None:
    # Export a wrappable key the RFC 5649 way with a throw-away KEK whose value we know, then
    # decrypt the token's ciphertext with cryptography's AESGCM.
    session = _open_raw_session(keystore)
    try:
        kek_value = bytes(range(32))
        kek = session.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: pkcs11.KeyType.AES,
                                     Attribute.VALUE: kek_value, Attribute.WRAP: True, Attribute.TOKEN: False})
        label = f"gcm-{unique}"
        keystore.generate(label, KeyType.AES_256, wrappable=True)
        blob = keystore.encrypt(label, b"interop", b"ad")
        target = next(iter(session.get_objects({Attribute.LABEL: label})))
        key = aes_key_unwrap_with_padding(kek_value, kek.wrap_key(target, mechanism=Mechanism.AES_KEY_WRAP_PAD))
    finally:
        session.close()
    assert AESGCM(key).decrypt(blob[:12], blob[12:], b"ad") == b"interop"


def test_nonces_are_fresh(keystore: KeyStore, aes_key: str) -> None:
    nonces = {keystore.encrypt(aes_key, b"same")[:12] for _ in range(200)}
    assert len(nonces) == 200


def test_decryption_fails_on_aad_mismatch_tampering_wrong_key_and_truncation(
        keystore: KeyStore, aes_key: str, unique: str) -> None:
    blob = keystore.encrypt(aes_key, b"secret", b"row-1")
    other = f"other-aes-{unique}"
    keystore.generate(other, KeyType.AES_256)
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    nonce_flipped = bytearray(blob)
    nonce_flipped[0] ^= 1
    for label, data, aad in [(aes_key, blob, b"row-2"), (aes_key, blob, b""), (aes_key, bytes(flipped), b"row-1"),
                             (aes_key, bytes(nonce_flipped), b"row-1"), (other, blob, b"row-1"),
                             (aes_key, blob[:27], b"row-1"), (aes_key, blob[:-1], b"row-1")]:
        with pytest.raises(DecryptionFailed):
            keystore.decrypt(label, data, aad)
    assert keystore.decrypt(aes_key, blob, b"row-1") == b"secret"  # the session is still fine


# -- wrapping --------------------------------------------------------------------------------------

def test_wrap_unwrap_round_trip_gives_a_key_that_decrypts_the_originals_ciphertext(
        keystore: KeyStore, aes_key: str, unique: str, raw_session: Any) -> None:
    original = f"dek-{unique}"
    keystore.generate(original, KeyType.AES_256, wrappable=True)
    blob = keystore.encrypt(original, b"backed up", b"aad")
    wrapped = keystore.wrap(aes_key, original)
    assert len(wrapped) == 40
    restored = keystore.unwrap(aes_key, wrapped, f"{original}-restored")
    assert restored.key_type is KeyType.AES_256 and not restored.extractable and restored.sensitive
    assert keystore.decrypt(restored.label, blob, b"aad") == b"backed up"
    _assert_not_exportable(raw_session, restored.label, (Attribute.VALUE,))
    with pytest.raises(KeyNotExtractable):
        keystore.wrap(aes_key, restored.label)
    again = keystore.unwrap(aes_key, wrapped, f"{original}-restored-w", wrappable=True)
    assert again.extractable
    assert keystore.unwrap(aes_key, keystore.wrap(aes_key, again.label), f"{original}-3").key_type is KeyType.AES_256


def test_unwrap_refuses_wrong_kek_tampering_and_other_types(keystore: KeyStore, aes_key: str, unique: str) -> None:
    target = f"dek2-{unique}"
    other_kek = f"kek2-{unique}"
    keystore.generate(target, KeyType.AES_256, wrappable=True)
    keystore.generate(other_kek, KeyType.AES_256)
    wrapped = keystore.wrap(aes_key, target)
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        keystore.unwrap(other_kek, wrapped, f"{target}-x")
    with pytest.raises(DecryptionFailed):
        keystore.unwrap(aes_key, tampered, f"{target}-x")
    with pytest.raises(InvalidKeyMaterial):
        keystore.unwrap(aes_key, wrapped[:24], f"{target}-x")
    with pytest.raises(MechanismUnsupported):
        keystore.unwrap(aes_key, wrapped, f"{target}-x", KeyType.EC_P256)
    assert not keystore.exists(f"{target}-x")


def test_error_messages_never_contain_the_pin(keystore: KeyStore, token_config: TokenConfig, aes_key: str) -> None:
    errors: list[Exception] = []
    for call in (lambda: keystore.decrypt(aes_key, b"\0" * 40),
                 lambda: keystore.get("missing"),
                 lambda: keystore.sign(aes_key, b"", SignatureScheme.ECDSA, HashAlg.SHA256),
                 lambda: KeyStore(dataclasses.replace(token_config, token_label="nope")).open()):
        with pytest.raises(hsm.HsmError) as info:
            call()
        errors.append(info.value)
    assert all(token_config.pin not in str(e) for e in errors)


@pytest.mark.parametrize(("raised", "expected"), [
    (px.PinIncorrect(), WrongPin), (px.PinLocked(), WrongPin), (px.UserPinNotInitialized(), TokenNotInitialized),
    (px.TokenNotPresent(), TokenUnavailable), (px.DeviceRemoved(), TokenUnavailable),
    (px.SessionHandleInvalid(), TokenUnavailable), (px.MechanismInvalid(), MechanismUnsupported),
    (px.MechanismParamInvalid(), MechanismUnsupported), (px.FunctionNotSupported(), MechanismUnsupported),
    (px.KeyUnextractable(), KeyNotExtractable), (px.KeyTypeInconsistent(), WrongKeyType),
    (px.EncryptedDataInvalid(), DecryptionFailed), (px.WrappedKeyInvalid(), DecryptionFailed),
    (px.GeneralError(), hsm.HsmError), (px.PKCS11Error("Initialisation error (not initialized)."), TokenUnavailable),
])
def test_pkcs11_errors_map_to_hsm_errors(raised: Exception, expected: type[Exception]) -> None:
    mapped = _p11.map_error(raised, "doing things")
    assert type(mapped) is expected
    assert isinstance(mapped, hsm.HsmError) and not isinstance(mapped, px.PKCS11Error)
    assert mapped.__cause__ is None


def test_lock_mode_is_a_closed_vocabulary(token_config: TokenConfig) -> None:
    with pytest.raises(ValueError):
        KeyStore(token_config, lock_mode="sometimes")
    assert KeyStore(token_config, lock_mode=hsm.LockMode.GLOBAL).lock_mode is hsm.LockMode.GLOBAL
