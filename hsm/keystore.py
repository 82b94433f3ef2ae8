"""KeyStore: the one choke point for private-key and master-key operations (PKCS#11).

CONTRACT (implemented by the hsm work item; other packages code against exactly this):

    ks = KeyStore(TokenConfig(module_path=..., token_label=..., pin=...))
    ks.open()                                  # lazy: also done on first use; per process (fork-safe)
    ks.generate(label, KeyType.EC_P256) -> KeyInfo          # DuplicateLabel if the label exists
    ks.generate(label, KeyType.AES_256, wrappable=False)    # wrappable=True: extractable only wrapped
    ks.import_private_key(label, pem_or_der, password=None) -> KeyInfo   # RSA/EC, becomes non-extractable
    ks.list_keys() -> list[KeyInfo]; ks.get(label) -> KeyInfo (KeyNotFound); ks.exists(label) -> bool
    ks.destroy(label)
    ks.public_key(label) -> cryptography public key
    ks.private_key(label) -> HsmRSAPrivateKey | HsmECPrivateKey  (cryptography ABC subclasses; usable in
                             CertificateBuilder/CSR/CRL/OCSP builders; private_bytes() raises)
    ks.sign(label, data, scheme: SignatureScheme, hash_alg: HashAlg) -> bytes  (DER ECDSA, raw RSA sig)
    ks.encrypt(label, plaintext, aad=b"") -> bytes   # AES-256-GCM: nonce(12) || ciphertext || tag(16)
    ks.decrypt(label, blob, aad=b"") -> bytes        # DecryptionFailed on tag/AAD mismatch
    ks.wrap(kek_label, target_label) -> bytes        # RFC 5649 (CKM_AES_KEY_WRAP_PAD)
    ks.unwrap(kek_label, wrapped, label, KeyType.AES_256) -> KeyInfo   # lands as a non-extractable token key
    ks.status() -> TokenStatus  (cheap; used by readiness)
    ks.close()

Thread-safe within a process; each process (after fork) gets its own PKCS#11 context and login.
Errors: hsm.errors.* only (pkcs11 exceptions never escape).

Additions beyond the contract (keyword-only or new methods, nothing above changed):

    KeyStore(config, *, lock_mode="os" | "global", max_sessions=32, backoff=(0.1, 2.0))
    ks.sign(..., *, salt_length=None)                 # RSA-PSS salt; default = digest length
    ks.sign_digest(label, digest, scheme, hash_alg, *, salt_length=None) -> bytes   # pre-hashed input
    ks.unwrap(..., *, wrappable=False)                # restored key may itself be wrappable again
    with KeyStore(cfg) as ks: ...                     # open() / close()

Behaviour worth knowing:

* Labels are unique among the token's objects. Creation checks before and re-checks after creating
  (with a random CKA_ID per key), so two threads or processes racing for one label never both
  succeed; in a tight race both may get DuplicateLabel.
* Key handles are cached per pooled session and invalidated on destroy (in this process) or when
  the token reports a stale handle (a key destroyed by another process): the call is retried once
  after a fresh lookup.
* A token that disappears turns every call into TokenUnavailable (never a crash); after a short,
  growing back-off (``backoff`` = (first, max) seconds) the next call or ``status()`` re-initialises
  the module and logs in again, without a new KeyStore.
* Pickling a KeyStore (multiprocessing spawn) carries its TokenConfig, PIN included, to the child;
  the child opens its own context on first use.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, Union

import pkcs11
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, GCMParams, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as px
from pkcs11.util.ec import encode_named_curve_parameters

from . import _p11
from ._p11 import DECRYPT_FAILURE, STALE_HANDLE, LockMode, PooledSession, TokenConn
from .errors import (
    DecryptionFailed,
    DuplicateLabel,
    HsmError,
    InvalidKeyMaterial,
    KeyNotExtractable,
    KeyNotFound,
    MechanismUnsupported,
    TokenUnavailable,
    WrongKeyType,
)
from .types import HashAlg, KeyInfo, KeyType, SignatureScheme, TokenConfig

if TYPE_CHECKING:
    from .keys import HsmECPrivateKey, HsmRSAPrivateKey

log = logging.getLogger(__name__)

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]
T = TypeVar("T")

NONCE_LEN: Final = 12
TAG_LEN: Final = 16
MAX_LABEL_LEN: Final = 255
_WRAPPED_AES256_LEN: Final = 40

_EC_CURVE_NAMES: Final = {KeyType.EC_P256: "secp256r1", KeyType.EC_P384: "secp384r1"}
_EC_CURVES: Final[dict[KeyType, ec.EllipticCurve]] = {KeyType.EC_P256: ec.SECP256R1(), KeyType.EC_P384: ec.SECP384R1()}
_EC_PARAMS: Final = {kt: encode_named_curve_parameters(name) for kt, name in _EC_CURVE_NAMES.items()}
_EC_BY_PARAMS: Final = {params: kt for kt, params in _EC_PARAMS.items()}
_RSA_BITS: Final = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}
_RSA_BY_BITS: Final = {bits: kt for kt, bits in _RSA_BITS.items()}

DIGEST_SIZE: Final = {HashAlg.SHA256: 32, HashAlg.SHA384: 48, HashAlg.SHA512: 64}

# Hot-path tables are keyed by the enum's value (a str with a cached hash): Enum.__hash__ is a
# Python-level function, and these lookups happen on every signature.
_HASHLIB: Final[dict[str, Callable[[bytes], Any]]] = {
    "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512,
}
_DIGEST_LEN: Final = {h.value: n for h, n in DIGEST_SIZE.items()}
_HASH_MECH: Final = {"sha256": Mechanism.SHA256, "sha384": Mechanism.SHA384, "sha512": Mechanism.SHA512}
_MGF: Final = {"sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}
_RSA_PKCS_MECH: Final = {
    "sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS, "sha512": Mechanism.SHA512_RSA_PKCS,
}
_RSA_PSS_MECH: Final = {
    "sha256": Mechanism.SHA256_RSA_PKCS_PSS, "sha384": Mechanism.SHA384_RSA_PKCS_PSS,
    "sha512": Mechanism.SHA512_RSA_PKCS_PSS,
}
_PSS_DEFAULT_PARAM: Final = {h: (_HASH_MECH[h], _MGF[h], _DIGEST_LEN[h]) for h in _HASHLIB}
# DER DigestInfo prefixes (RFC 8017 §9.2 note 1) for PKCS#1 v1.5 over a pre-computed digest.
_DIGEST_INFO: Final = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_KIND_RSA: Final = 0
_KIND_EC: Final = 1
_KIND_AES: Final = 2
_KIND: Final = {KeyType.RSA_2048: _KIND_RSA, KeyType.RSA_3072: _KIND_RSA, KeyType.RSA_4096: _KIND_RSA,
                KeyType.EC_P256: _KIND_EC, KeyType.EC_P384: _KIND_EC, KeyType.AES_256: _KIND_AES}
_ECDSA: Final = SignatureScheme.ECDSA
_PKCS1V15: Final = SignatureScheme.RSA_PKCS1V15
_PSS: Final = SignatureScheme.RSA_PSS
_M_ECDSA: Final = Mechanism.ECDSA
_M_RSA_PKCS: Final = Mechanism.RSA_PKCS
_M_RSA_PKCS_PSS: Final = Mechanism.RSA_PKCS_PSS
_M_AES_GCM: Final = Mechanism.AES_GCM
_META_ATTRS: Final = [
    Attribute.LABEL, Attribute.KEY_TYPE, Attribute.ID, Attribute.EXTRACTABLE, Attribute.SENSITIVE,
    Attribute.MODULUS, Attribute.EC_PARAMS, Attribute.VALUE_LEN,
]
# Template attributes that tpm2-pkcs11 rejects when set explicitly (see _asymmetric_templates).
_RELAXABLE: Final = (px.GeneralError, px.TemplateInconsistent, px.AttributeValueInvalid,
                     px.AttributeTypeInvalid, px.FunctionFailed)

_attach_lock = threading.Lock()


def _reset_attach_lock() -> None:
    global _attach_lock
    _attach_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_attach_lock)


@dataclass(frozen=True)
class TokenStatus:
    """Readiness of the token as seen by this process (cheap: one C_GetTokenInfo)."""

    available: bool
    token_label: str
    module: str
    logged_in: bool
    detail: str = ""


class _Meta:
    """What the process knows about one label (shared by all sessions); dropped on create/destroy."""

    __slots__ = ("key_type", "key_id", "extractable", "sensitive", "epoch", "public")

    def __init__(self, key_type: KeyType, key_id: bytes, extractable: bool, sensitive: bool, epoch: int) -> None:
        self.key_type = key_type
        self.key_id = key_id
        self.extractable = extractable
        self.sensitive = sensitive
        self.epoch = epoch
        self.public: PublicKey | None = None

    def info(self, label: str) -> KeyInfo:
        return KeyInfo(label=label, key_type=self.key_type, key_id=self.key_id,
                       extractable=self.extractable, sensitive=self.sensitive)


class _CachedKey:
    """A key object bound to one pooled session (its handle is only valid there)."""

    __slots__ = ("obj", "key_type", "kind", "epoch")

    def __init__(self, obj: Any, key_type: KeyType, epoch: int) -> None:
        self.obj = obj
        self.key_type = key_type
        self.kind = _KIND[key_type]
        self.epoch = epoch


def _check_label(label: object) -> str:
    if not isinstance(label, str):
        raise TypeError("label must be a str")
    if not label or len(label) > MAX_LABEL_LEN or label != label.strip():
        raise ValueError(f"label must be 1..{MAX_LABEL_LEN} characters without surrounding blanks")
    return label


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes")


def _int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")


def _der_octet_string(payload: bytes) -> bytes:
    n = len(payload)
    if n < 0x80:
        return b"\x04" + bytes([n]) + payload
    size = _int_bytes(n)
    return b"\x04" + bytes([0x80 | len(size)]) + size + payload


def _ec_point_bytes(value: bytes, curve: ec.EllipticCurve) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING (PKCS#11 2.40); some tokens give the raw point."""
    raw_len = 1 + 2 * ((curve.key_size + 7) // 8)
    if len(value) == raw_len and value[0] == 0x04:
        return value
    if value[:1] == b"\x04" and len(value) > 2:
        if value[1] < 0x80:
            return value[2:]
        nlen = value[1] & 0x7F
        return value[2 + nlen:]
    raise HsmError("the token returned an EC point in an unknown encoding")


def _meta_from_attrs(attrs: dict[int, Any], epoch: int) -> _Meta | None:
    """Key metadata from one C_GetAttributeValue result; None for key types csm does not use."""
    kt = attrs.get(Attribute.KEY_TYPE)
    key_type: KeyType | None = None
    if kt == P11KeyType.RSA and Attribute.MODULUS in attrs:
        key_type = _RSA_BY_BITS.get(int.from_bytes(attrs[Attribute.MODULUS], "big").bit_length())
    elif kt == P11KeyType.EC and Attribute.EC_PARAMS in attrs:
        key_type = _EC_BY_PARAMS.get(bytes(attrs[Attribute.EC_PARAMS]))
    elif kt == P11KeyType.AES and attrs.get(Attribute.VALUE_LEN) in (32, 0):
        # 0: SoftHSM leaves CKA_VALUE_LEN at 0 for unwrapped keys; unwrap() admits only 32-byte keys.
        key_type = KeyType.AES_256
    if key_type is None:
        return None
    return _Meta(key_type, bytes(attrs.get(Attribute.ID, b"")), bool(attrs.get(Attribute.EXTRACTABLE, False)),
                 bool(attrs.get(Attribute.SENSITIVE, True)), epoch)


def _is_key(obj: Any) -> bool:
    return isinstance(obj, (pkcs11.PrivateKey, pkcs11.SecretKey))


def _find(session: Any, template: dict[Attribute, Any]) -> list[Any]:
    """C_FindObjects* (caller holds ``conn.object_lock``). An object that another process destroys
    between being found and being described makes python-pkcs11 raise a stale-handle error:
    search again, a few times."""
    for attempt in range(5):
        try:
            return list(session.get_objects(template))
        except STALE_HANDLE:
            if attempt == 4:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _restore(config: TokenConfig, lock_mode: str, max_sessions: int, backoff: tuple[float, float]) -> KeyStore:
    return KeyStore(config, lock_mode=lock_mode, max_sessions=max_sessions, backoff=backoff)


class KeyStore:
    """Keys in one PKCS#11 token, addressed by unique labels. See the module docstring."""

    def __init__(self, config: TokenConfig, *, lock_mode: LockMode | str = LockMode.OS,
                 max_sessions: int = 32, backoff: tuple[float, float] = (0.1, 2.0)) -> None:
        if not isinstance(config, TokenConfig):
            raise TypeError("config must be a TokenConfig")
        self._config = config
        self._lock_mode = LockMode(lock_mode)
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError("backoff must be (first, max) with 0 < first <= max")
        self._max_sessions = max_sessions
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._conn: TokenConn | None = None
        self._pid = 0
        self._ever_opened = False

    # -- identity --------------------------------------------------------------------------------
    @property
    def config(self) -> TokenConfig:
        return self._config

    @property
    def lock_mode(self) -> LockMode:
        return self._lock_mode

    def __repr__(self) -> str:
        return (f"KeyStore(module={self._config.module_path!r}, token={self._config.token_label!r}, "
                f"lock_mode={self._lock_mode.value!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._config, self._lock_mode.value, self._max_sessions, self._backoff))

    def __enter__(self) -> KeyStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- life cycle --------------------------------------------------------------------------------
    def open(self) -> None:
        """Initialise the module in this process (if needed) and log in; idempotent.

        Raises WrongPin, TokenNotInitialized (no such token), TokenUnavailable."""
        self._connection().ensure()

    def close(self) -> None:
        """Release this store's hold on the process's login; the last store of a token closes its
        sessions and logs out. Using the store again afterwards re-opens it."""
        with _attach_lock:
            conn, self._conn = self._conn, None
            same_process = self._pid == os.getpid()
        if conn is not None and same_process:
            _p11.detach(conn)

    def _connection(self) -> TokenConn:
        conn = self._conn
        pid = os.getpid()
        if conn is not None and self._pid == pid:
            return conn
        with _attach_lock:
            if self._conn is not None and self._pid == pid:
                return self._conn
            cfg = self._config
            conn = _p11.attach(cfg.module_path, cfg.token_label, cfg.pin, lock_mode=self._lock_mode,
                               env=cfg.module_env, max_sessions=self._max_sessions, backoff=self._backoff,
                               ever_opened=self._ever_opened)
            self._conn, self._pid = conn, pid
            self._ever_opened = True
            return conn

    def status(self) -> TokenStatus:
        """Available / logged in, detecting a vanished token; never raises. A due recovery attempt
        is made here too, so a readiness probe alone brings the store back."""
        cfg = self._config

        def down(detail: str, logged_in: bool = False) -> TokenStatus:
            return TokenStatus(False, cfg.token_label, cfg.module_path, logged_in, detail)

        try:
            conn = self._connection()
            conn.ensure()
            ok = _p11.with_busy(conn, conn.token_ok)
        except HsmError as exc:
            return down(str(exc))
        if not ok:
            conn.mark_broken("token information unreadable")
            return down(f"token {cfg.token_label!r} is unavailable")
        return TokenStatus(True, cfg.token_label, cfg.module_path, conn.login is not None, "ok")

    # -- internal: sessions and lookups --------------------------------------------------------------
    def _run(self, what: str, fn: Callable[[TokenConn, PooledSession], T]) -> T:
        """Run ``fn`` with a pooled session, mapping every PKCS#11 error."""
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._connection()
        ps = conn.checkout()
        try:
            try:
                return fn(conn, ps)
            except px.PKCS11Error as exc:
                raise conn.fail(exc, ps, what) from None
        finally:
            conn.checkin(ps)

    def _load(self, conn: TokenConn, ps: PooledSession, label: str) -> _CachedKey:
        """Find ``label``'s private or secret key in ``ps`` (C_FindObjects) and cache it there."""
        epoch = conn.epochs.get(label, 0)
        for attempt in range(4):
            with conn.object_lock:
                keys = [o for o in _find(ps.session, {Attribute.LABEL: label}) if _is_key(o)]
            if len(keys) <= 1:
                break
            ids = {bytes(o[Attribute.ID]) for o in keys}
            if len(ids) == 1:
                break
            # Another thread/process is inside the create-then-verify window: wait it out.
            time.sleep(0.01 * (attempt + 1))
        else:
            raise HsmError(f"label {label!r} is carried by {len(keys)} keys; the key store keeps labels unique")
        if not keys:
            if not conn.token_ok():
                conn.mark_broken("key lookup found nothing and the token is unreadable")
                raise TokenUnavailable(f"token {conn.label!r} is unavailable")
            raise KeyNotFound(label)
        obj = keys[0]
        # One attribute read per (session, label) miss. It also catches a key that another process
        # replaced under the same label: different CKA_ID, so the shared metadata is renewed.
        fresh = _meta_from_attrs(obj.get_attributes(_META_ATTRS), epoch)
        if fresh is None:
            raise WrongKeyType(f"key {label!r} is of a type the key store does not use")
        meta: _Meta | None = conn.meta.get(label)
        if meta is None or meta.epoch != epoch or meta.key_id != fresh.key_id:
            conn.meta[label] = meta = fresh
        cached = _CachedKey(obj, meta.key_type, epoch)
        ps.keys[label] = cached
        return cached

    def _key(self, conn: TokenConn, ps: PooledSession, label: str) -> _CachedKey:
        key = ps.keys.get(label)
        if key is None or key.epoch != conn.epochs.get(label, 0):
            key = self._load(conn, ps, label)
        return key

    def _meta(self, conn: TokenConn, ps: PooledSession, label: str) -> _Meta:
        epoch = conn.epochs.get(label, 0)
        meta: _Meta | None = conn.meta.get(label)
        if meta is None or meta.epoch != epoch:
            self._load(conn, ps, label)
            meta = conn.meta[label]
        assert meta is not None
        return meta

    # -- keys: queries -------------------------------------------------------------------------------
    def get(self, label: str) -> KeyInfo:
        """The key labelled ``label`` (a fresh token lookup). Raises KeyNotFound."""
        def fn(conn: TokenConn, ps: PooledSession) -> KeyInfo:
            ps.keys.pop(label, None)
            conn.meta.pop(label, None)
            self._load(conn, ps, label)
            meta: _Meta = conn.meta[label]
            return meta.info(label)
        return self._run(f"looking up {label!r}", fn)

    def exists(self, label: str) -> bool:
        """Whether a private or secret key carries ``label`` (a fresh token lookup)."""
        try:
            self.get(label)
        except KeyNotFound:
            return False
        return True

    def list_keys(self) -> list[KeyInfo]:
        """Every private and secret key of the token that has a label and a type csm uses, by label."""
        def fn(conn: TokenConn, ps: PooledSession) -> list[KeyInfo]:
            out: list[KeyInfo] = []
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY):
                with conn.object_lock:
                    objs = _find(ps.session, {Attribute.CLASS: cls})
                for obj in objs:
                    attrs = obj.get_attributes(_META_ATTRS)
                    label = attrs.get(Attribute.LABEL) or ""
                    meta = _meta_from_attrs(attrs, 0)
                    if label and meta is not None:
                        out.append(meta.info(label))
            return sorted(out, key=lambda k: k.label)
        return self._run("listing keys", fn)

    def public_key(self, label: str) -> PublicKey:
        """The public key of an RSA or EC key as a ``cryptography`` object (cached)."""
        conn = self._conn
        if conn is not None and self._pid == os.getpid():
            cached: _Meta | None = conn.meta.get(label)
            if cached is not None and cached.public is not None and cached.epoch == conn.epochs.get(label, 0):
                return cached.public

        def fn(conn: TokenConn, ps: PooledSession) -> PublicKey:
            meta = self._meta(conn, ps, label)
            public = meta.public
            if public is None:
                private = self._key(conn, ps, label).obj
                with conn.object_lock:
                    public = meta.public = self._read_public(ps, label, meta, private)
            return public
        return self._run(f"reading the public key of {label!r}", fn)

    @staticmethod
    def _read_public(ps: PooledSession, label: str, meta: _Meta, private: Any) -> PublicKey:
        if _KIND[meta.key_type] == _KIND_AES:
            raise WrongKeyType(f"key {label!r} is an AES key and has no public key")
        template: dict[Attribute, Any] = {Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PUBLIC_KEY}
        if meta.key_id:
            template[Attribute.ID] = meta.key_id
        pubs = _find(ps.session, template)
        if _KIND[meta.key_type] == _KIND_RSA:
            source = pubs[0] if pubs else private
            attrs = source.get_attributes([Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
            return rsa.RSAPublicNumbers(int.from_bytes(attrs[Attribute.PUBLIC_EXPONENT], "big"),
                                        int.from_bytes(attrs[Attribute.MODULUS], "big")).public_key()
        curve = _EC_CURVES[meta.key_type]
        source = pubs[0] if pubs else private
        try:
            point = source[Attribute.EC_POINT]
        except (px.AttributeTypeInvalid, px.AttributeSensitive):
            raise HsmError(f"key {label!r} has no public key object in the token") from None
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, _ec_point_bytes(bytes(point), curve))

    def private_key(self, label: str) -> HsmRSAPrivateKey | HsmECPrivateKey:
        """A ``cryptography`` private-key object that signs through the token (for the X.509 builders)."""
        from .keys import HsmECPrivateKey, HsmRSAPrivateKey

        public = self.public_key(label)
        if isinstance(public, rsa.RSAPublicKey):
            return HsmRSAPrivateKey(self, label, public)
        return HsmECPrivateKey(self, label, public)

    # -- keys: creation and destruction ----------------------------------------------------------------
    def _create(self, label: str, what: str,
                create: Callable[[TokenConn, PooledSession, bytes], list[Any]]) -> KeyInfo:
        """Create-then-verify, so that a label stays unique across threads and processes."""
        _check_label(label)
        conn = self._connection()

        def fn(conn: TokenConn, ps: PooledSession) -> KeyInfo:
            with conn.object_lock:
                return create_verified(conn, ps)

        def create_verified(conn: TokenConn, ps: PooledSession) -> KeyInfo:
            session = ps.session
            if _find(session, {Attribute.LABEL: label}):
                raise DuplicateLabel(label)
            key_id = os.urandom(16)
            created = create(conn, ps, key_id)
            total = len(_find(session, {Attribute.LABEL: label}))
            if total != len(created):
                # Someone created the same label concurrently: both back off, neither keeps it.
                for obj in created:
                    try:
                        obj.destroy()
                    except px.PKCS11Error:
                        log.warning("could not remove a key that lost a label race for %r", label)
                raise DuplicateLabel(label)
            key = next(o for o in created if _is_key(o))
            meta = _meta_from_attrs(key.get_attributes(_META_ATTRS), 0)
            if meta is None:  # pragma: no cover - we just created it with a supported type
                raise HsmError(f"the token created an unexpected key for {label!r}")
            return meta.info(label)

        try:
            return self._run(what, fn)
        finally:
            conn.bump_epoch(label)

    def generate(self, label: str, key_type: KeyType, *, wrappable: bool = False) -> KeyInfo:
        """Generate a sensitive, non-extractable token key labelled ``label``.

        ``wrappable=True`` (AES-256 only): still sensitive, but extractable by wrapping under
        another token key (:meth:`wrap`, for encrypted backups). Raises DuplicateLabel,
        MechanismUnsupported (e.g. AES on tpm2-pkcs11)."""
        if not isinstance(key_type, KeyType):
            raise TypeError("key_type must be an hsm.KeyType")
        if wrappable and key_type is not KeyType.AES_256:
            raise ValueError("only AES-256 keys can be made wrappable")

        def create(conn: TokenConn, ps: PooledSession, key_id: bytes) -> list[Any]:
            session = ps.session
            if key_type is KeyType.AES_256:
                return [session.generate_key(
                    P11KeyType.AES, 256, id=key_id, label=label, store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.WRAP | MechanismFlag.UNWRAP,
                    template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: bool(wrappable),
                              Attribute.PRIVATE: True},
                )]
            return self._generate_pair(conn, session, key_type, label, key_id)

        return self._create(label, f"generating {label!r}", create)

    @staticmethod
    def _asymmetric_templates(key_type: KeyType, relaxed: bool) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
        # Strict: signing only (encrypt/decrypt/wrap/unwrap/derive False). tpm2-pkcs11 refuses to be
        # told attributes that its TPM object has anyway ("attr mismatch"), so relaxed leaves them out.
        public: dict[Attribute, Any] = {Attribute.PRIVATE: False, Attribute.VERIFY: True}
        private: dict[Attribute, Any] = {Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                         Attribute.EXTRACTABLE: False, Attribute.SIGN: True}
        if relaxed:
            for attr in (Attribute.ENCRYPT, Attribute.WRAP):
                public[attr] = pkcs11.DEFAULT
            for attr in (Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE):
                private[attr] = pkcs11.DEFAULT
        if key_type.is_ec:
            public[Attribute.EC_PARAMS] = _EC_PARAMS[key_type]
        return public, private

    def _generate_pair(self, conn: TokenConn, session: Any, key_type: KeyType, label: str,
                       key_id: bytes) -> list[Any]:
        module = conn.module
        relaxed = module.relaxed_templates
        while True:
            public, private = self._asymmetric_templates(key_type, relaxed)
            try:
                if key_type.is_rsa:
                    pub, priv = session.generate_keypair(
                        P11KeyType.RSA, _RSA_BITS[key_type], id=key_id, label=label, store=True,
                        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                        public_template=public, private_template=private)
                else:
                    pub, priv = session.generate_keypair(
                        P11KeyType.EC, id=key_id, label=label, store=True,
                        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                        public_template=public, private_template=private)
            except _RELAXABLE:
                if relaxed or not conn.token_ok():
                    raise
                relaxed = True
                continue
            if relaxed and not module.relaxed_templates:
                log.info("module %s needs relaxed key templates (capabilities left to the token)", module.path)
                module.relaxed_templates = True
            return [priv, pub]

    def import_private_key(self, label: str, data: bytes, password: bytes | str | None = None) -> KeyInfo:
        """Import an RSA (2048/3072/4096) or EC (P-256/P-384) private key given as PEM or DER,
        PKCS#8 or traditional, optionally encrypted. It becomes a sensitive, non-extractable token
        key; its public key is stored next to it. Raises InvalidKeyMaterial, DuplicateLabel."""
        data = _as_bytes(data, "data")
        pw = password.encode() if isinstance(password, str) else password
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                key = serialization.load_pem_private_key(data, password=pw)
            else:
                key = serialization.load_der_private_key(data, password=pw)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise InvalidKeyMaterial("could not read the private key (bad encoding, wrong or missing "
                                     "password, or unsupported format)") from None
        if isinstance(key, rsa.RSAPrivateKey):
            key_type = _RSA_BY_BITS.get(key.key_size)
            if key_type is None:
                raise InvalidKeyMaterial(f"RSA keys of {key.key_size} bits are not supported (2048, 3072, 4096)")
            priv_attrs, pub_attrs = self._rsa_import_attrs(key)
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            ec_type = next((kt for kt, c in _EC_CURVES.items() if c.name == key.curve.name), None)
            if ec_type is None:
                raise InvalidKeyMaterial(f"EC curve {key.curve.name} is not supported (P-256, P-384)")
            priv_attrs, pub_attrs = self._ec_import_attrs(key, ec_type)
        else:
            raise InvalidKeyMaterial("only RSA and EC private keys can be imported")
        del key

        def create(conn: TokenConn, ps: PooledSession, key_id: bytes) -> list[Any]:
            common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
            priv = ps.session.create_object({**priv_attrs, **common})
            try:
                pub = ps.session.create_object({**pub_attrs, **common})
            except px.PKCS11Error:
                priv.destroy()
                raise
            return [priv, pub]

        try:
            return self._create(label, f"importing {label!r}", create)
        finally:
            priv_attrs.clear()

    @staticmethod
    def _rsa_import_attrs(key: rsa.RSAPrivateKey) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
        n = key.private_numbers()
        pub = n.public_numbers
        priv_attrs: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: P11KeyType.RSA,
            Attribute.MODULUS: _int_bytes(pub.n), Attribute.PUBLIC_EXPONENT: _int_bytes(pub.e),
            Attribute.PRIVATE_EXPONENT: _int_bytes(n.d), Attribute.PRIME_1: _int_bytes(n.p),
            Attribute.PRIME_2: _int_bytes(n.q), Attribute.EXPONENT_1: _int_bytes(n.dmp1),
            Attribute.EXPONENT_2: _int_bytes(n.dmq1), Attribute.COEFFICIENT: _int_bytes(n.iqmp),
            Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True, Attribute.DECRYPT: False, Attribute.UNWRAP: False,
        }
        pub_attrs: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: P11KeyType.RSA,
            Attribute.MODULUS: _int_bytes(pub.n), Attribute.PUBLIC_EXPONENT: _int_bytes(pub.e),
            Attribute.PRIVATE: False, Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.WRAP: False,
        }
        return priv_attrs, pub_attrs

    @staticmethod
    def _ec_import_attrs(key: ec.EllipticCurvePrivateKey,
                         key_type: KeyType) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
        size = (key.curve.key_size + 7) // 8
        point = key.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        priv_attrs: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: P11KeyType.EC,
            Attribute.EC_PARAMS: _EC_PARAMS[key_type],
            Attribute.VALUE: _int_bytes(key.private_numbers().private_value, size),
            Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True, Attribute.DERIVE: False,
        }
        pub_attrs: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: P11KeyType.EC,
            Attribute.EC_PARAMS: _EC_PARAMS[key_type], Attribute.EC_POINT: _der_octet_string(point),
            Attribute.PRIVATE: False, Attribute.VERIFY: True,
        }
        return priv_attrs, pub_attrs

    def destroy(self, label: str) -> None:
        """Destroy every object labelled ``label`` (private, public or secret key). Raises KeyNotFound."""
        conn = self._connection()

        def fn(conn: TokenConn, ps: PooledSession) -> None:
            with conn.object_lock:
                objs = _find(ps.session, {Attribute.LABEL: label})
                for obj in objs:
                    try:
                        obj.destroy()
                    except STALE_HANDLE:
                        pass  # destroyed by someone else meanwhile: gone either way
            if not objs:
                if not conn.token_ok():
                    conn.mark_broken("destroy found nothing and the token is unreadable")
                    raise TokenUnavailable(f"token {conn.label!r} is unavailable")
                raise KeyNotFound(label)

        try:
            self._run(f"destroying {label!r}", fn)
        finally:
            conn.bump_epoch(label)

    # -- signing ----------------------------------------------------------------------------------
    def sign(self, label: str, data: bytes, scheme: SignatureScheme, hash_alg: HashAlg, *,
             salt_length: int | None = None) -> bytes:
        """Sign ``data``: RSA PKCS#1 v1.5 or PSS (combined SHA-2 mechanisms in the token; PSS with
        MGF1 of the same hash and ``salt_length`` defaulting to the digest length), or ECDSA (hash in
        Python, CKM_ECDSA in the token; DER-encoded result). Raises WrongKeyType for a scheme the
        key cannot do, KeyNotFound, TokenUnavailable."""
        if type(data) is not bytes:
            data = _as_bytes(data, "data")
        return self._sign(label, data, scheme, hash_alg, False, salt_length)

    def sign_digest(self, label: str, digest: bytes, scheme: SignatureScheme, hash_alg: HashAlg, *,
                    salt_length: int | None = None) -> bytes:
        """As :meth:`sign`, over a digest already computed with ``hash_alg`` (ValueError if its
        length does not match)."""
        digest = _as_bytes(digest, "digest")
        if type(hash_alg) is HashAlg and len(digest) != DIGEST_SIZE[hash_alg]:
            raise ValueError(f"a {hash_alg.value} digest is {DIGEST_SIZE[hash_alg]} bytes, got {len(digest)}")
        return self._sign(label, digest, scheme, hash_alg, True, salt_length)

    def _sign(self, label: str, data: bytes, scheme: SignatureScheme, hash_alg: HashAlg, prehashed: bool,
              salt_length: int | None) -> bytes:
        if type(hash_alg) is not HashAlg:
            raise TypeError("hash_alg must be an hsm.HashAlg")
        h = hash_alg._value_
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._connection()
        ps = conn.checkout()
        try:
            for attempt in (0, 1):
                try:
                    key = ps.keys.get(label)
                    if key is None or key.epoch != conn.epochs.get(label, 0):
                        key = self._load(conn, ps, label)
                    kind = key.kind
                    if kind == _KIND_EC:
                        if scheme is not _ECDSA:
                            raise WrongKeyType(f"key {label!r} is an EC key: use SignatureScheme.ECDSA")
                        raw = key.obj.sign(data if prehashed else _HASHLIB[h](data).digest(), mechanism=_M_ECDSA)
                        half = len(raw) // 2
                        return encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                                    int.from_bytes(raw[half:], "big"))
                    if kind != _KIND_RSA:
                        raise WrongKeyType(f"key {label!r} is an AES key and cannot sign")
                    if scheme is _PKCS1V15:
                        if prehashed:
                            return key.obj.sign(_DIGEST_INFO[h] + data, mechanism=_M_RSA_PKCS)  # type: ignore[no-any-return]
                        return key.obj.sign(data, mechanism=_RSA_PKCS_MECH[h])  # type: ignore[no-any-return]
                    if scheme is _PSS:
                        param = (_PSS_DEFAULT_PARAM[h] if salt_length is None
                                 else (_HASH_MECH[h], _MGF[h], int(salt_length)))
                        return key.obj.sign(  # type: ignore[no-any-return]
                            data, mechanism=_M_RSA_PKCS_PSS if prehashed else _RSA_PSS_MECH[h], mechanism_param=param)
                    raise WrongKeyType(f"key {label!r} is an RSA key: use RSA_PKCS1V15 or RSA_PSS")
                except px.PKCS11Error as exc:
                    if attempt == 0 and isinstance(exc, STALE_HANDLE) and conn.token_ok():
                        ps.keys.pop(label, None)
                        conn.meta.pop(label, None)
                        continue
                    raise conn.fail(exc, ps, f"signing with {label!r}") from None
            raise HsmError(f"signing with {label!r}: the key handle stayed invalid")  # pragma: no cover
        finally:
            conn.checkin(ps)

    # -- AES-256-GCM ------------------------------------------------------------------------------
    def encrypt(self, label: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """AES-256-GCM inside the token with a fresh random 96-bit nonce.

        Returns ``nonce (12) || ciphertext || tag (16)``, byte-compatible with
        ``cryptography``'s ``AESGCM(key).encrypt(nonce, plaintext, aad)`` behind the nonce."""
        if type(plaintext) is not bytes:
            plaintext = _as_bytes(plaintext, "plaintext")
        if type(aad) is not bytes:
            aad = _as_bytes(aad, "aad")
        nonce = os.urandom(NONCE_LEN)
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._connection()
        ps = conn.checkout()
        try:
            for attempt in (0, 1):
                try:
                    key = ps.keys.get(label)
                    if key is None or key.epoch != conn.epochs.get(label, 0):
                        key = self._load(conn, ps, label)
                    if key.kind != _KIND_AES:
                        raise WrongKeyType(f"key {label!r} is not an AES key")
                    return nonce + key.obj.encrypt(plaintext, mechanism=_M_AES_GCM,  # type: ignore[no-any-return]
                                                   mechanism_param=GCMParams(nonce, aad, 128))
                except px.PKCS11Error as exc:
                    if attempt == 0 and isinstance(exc, STALE_HANDLE) and conn.token_ok():
                        ps.keys.pop(label, None)
                        conn.meta.pop(label, None)
                        continue
                    raise conn.fail(exc, ps, f"encrypting with {label!r}") from None
            raise HsmError(f"encrypting with {label!r}: the key handle stayed invalid")  # pragma: no cover
        finally:
            conn.checkin(ps)

    def decrypt(self, label: str, blob: bytes, aad: bytes = b"") -> bytes:
        """Inverse of :meth:`encrypt`. Raises DecryptionFailed on a wrong key, a tampered blob or
        tag, or an AAD mismatch (nothing of the plaintext is returned then)."""
        if type(blob) is not bytes:
            blob = _as_bytes(blob, "blob")
        if type(aad) is not bytes:
            aad = _as_bytes(aad, "aad")
        if len(blob) < NONCE_LEN + TAG_LEN:
            raise DecryptionFailed("ciphertext too short")
        nonce, body = blob[:NONCE_LEN], blob[NONCE_LEN:]
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._connection()
        ps = conn.checkout()
        try:
            for attempt in (0, 1):
                try:
                    key = ps.keys.get(label)
                    if key is None or key.epoch != conn.epochs.get(label, 0):
                        key = self._load(conn, ps, label)
                    if key.kind != _KIND_AES:
                        raise WrongKeyType(f"key {label!r} is not an AES key")
                    return key.obj.decrypt(body, mechanism=_M_AES_GCM,  # type: ignore[no-any-return]
                                           mechanism_param=GCMParams(nonce, aad, 128))
                except px.PKCS11Error as exc:
                    if attempt == 0 and isinstance(exc, STALE_HANDLE) and conn.token_ok():
                        ps.keys.pop(label, None)
                        conn.meta.pop(label, None)
                        continue
                    if isinstance(exc, DECRYPT_FAILURE) and conn.token_ok():
                        raise DecryptionFailed(f"decrypting with {label!r}: authentication failed") from None
                    raise conn.fail(exc, ps, f"decrypting with {label!r}") from None
            raise HsmError(f"decrypting with {label!r}: the key handle stayed invalid")  # pragma: no cover
        finally:
            conn.checkin(ps)

    # -- wrapping (backups) ---------------------------------------------------------------------------
    def wrap(self, kek_label: str, target_label: str) -> bytes:
        """Wrap the AES key ``target_label`` under the AES key ``kek_label`` (RFC 5649,
        CKM_AES_KEY_WRAP_PAD). Raises KeyNotExtractable unless the target was generated
        ``wrappable=True``; WrongKeyType if the KEK is not an AES key."""
        def fn(conn: TokenConn, ps: PooledSession) -> bytes:
            kek = self._key(conn, ps, kek_label)
            if kek.key_type is not KeyType.AES_256:
                raise WrongKeyType(f"key {kek_label!r} is not an AES key and cannot wrap")
            target = self._key(conn, ps, target_label)
            meta = self._meta(conn, ps, target_label)
            if target.key_type is not KeyType.AES_256 or not meta.extractable:
                raise KeyNotExtractable(f"key {target_label!r} cannot leave the token, not even wrapped")
            return bytes(kek.obj.wrap_key(target.obj, mechanism=Mechanism.AES_KEY_WRAP_PAD))
        return self._run(f"wrapping {target_label!r} under {kek_label!r}", fn)

    def unwrap(self, kek_label: str, wrapped: bytes, label: str, key_type: KeyType = KeyType.AES_256, *,
               wrappable: bool = False) -> KeyInfo:
        """Unwrap an RFC 5649 blob made by :meth:`wrap` into a new sensitive token key labelled
        ``label`` (non-extractable unless ``wrappable``). Raises DecryptionFailed for a wrong KEK or
        a tampered blob, DuplicateLabel, MechanismUnsupported for other key types."""
        wrapped = _as_bytes(wrapped, "wrapped")
        if key_type is not KeyType.AES_256:
            raise MechanismUnsupported("only AES-256 keys can be unwrapped")
        # RFC 5649 output is the key padded to 8 bytes plus an 8-byte integrity block: a 32-byte key
        # wraps to exactly 40 bytes. Checked here because SoftHSM does not record CKA_VALUE_LEN for
        # unwrapped keys (it reads 0), so the token would not tell us afterwards.
        if len(wrapped) != _WRAPPED_AES256_LEN:
            raise InvalidKeyMaterial(f"an RFC 5649-wrapped AES-256 key is {_WRAPPED_AES256_LEN} bytes, got {len(wrapped)}")

        def create(conn: TokenConn, ps: PooledSession, key_id: bytes) -> list[Any]:
            kek = self._key(conn, ps, kek_label)
            if kek.key_type is not KeyType.AES_256:
                raise WrongKeyType(f"key {kek_label!r} is not an AES key and cannot unwrap")
            try:
                key = kek.obj.unwrap_key(
                    ObjectClass.SECRET_KEY, P11KeyType.AES, wrapped, id=key_id, label=label, store=True,
                    mechanism=Mechanism.AES_KEY_WRAP_PAD,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.WRAP | MechanismFlag.UNWRAP,
                    template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: bool(wrappable),
                              Attribute.PRIVATE: True})
            except px.PKCS11Error as exc:
                if isinstance(exc, DECRYPT_FAILURE) and conn.token_ok():
                    raise DecryptionFailed(f"unwrapping under {kek_label!r}: authentication failed") from None
                raise
            return [key]

        return self._create(label, f"unwrapping {label!r}", create)


__all__ = ["KeyStore", "LockMode", "PublicKey", "TokenStatus"]
