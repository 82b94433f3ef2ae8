"""Storage of the CMP feature: CMP profiles (with their PBM shared secrets sealed in the token)
and the SQL :class:`ca.cmp.TransactionStore`.

Shared secrets: AES-256-GCM in the token under ``csm-cmp-kek-v<n>`` (the key never leaves the
token). Ciphertext layout ``0x01 | key_version (u32 BE) | nonce | ct | tag``; the associated
data binds profile, reference and key version, so a ciphertext copied to another profile or
reference fails to decrypt. The service keeps only ciphertexts in memory too: the profile's
secrets mapping (:class:`SealedSecrets`) decrypts one secret per lookup.

Transactions: the primary key (profile, transactionID) makes the database refuse a second
transaction with the same ID (``transactionIdInUse``), also across processes. Finished
transactions are kept (replay detection) until :meth:`SqlTransactionStore.purge_finished`.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import contextvars
import dataclasses
import datetime as _dt
import enum
import functools
import json
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

import hsm
from ca.cmp import AuthKind, IssueRequest, Requester, Transaction, TransactionState
from client_sdk.cmp import BodyType, _asn1
from client_sdk.cmp import errors as cmp_errors

from ..db import RawTx, read_one, transaction, writer
from ..errors import Conflict
from .errors import CmpProfileExists, CmpProfileNotFound, InvalidCmpProfile
from .models import CmpProfileRow, CmpSecretRow, CmpTransactionRow

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CA_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REFERENCE_RE = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII without space (openssl -ref)
SECRET_MIN, SECRET_MAX = 8, 1024
MAX_TRUST_ANCHORS = 50
MAX_SECRETS = 100
MAX_TRANSACTION_ID = 128  # bytes

KEK_PREFIX = "csm-cmp-kek-v"
_FORMAT = 1
_HEADER = struct.Struct(">BI")
_DER = serialization.Encoding.DER


class RequestProtection(enum.Enum):
    """What protects the requests a profile accepts."""

    ANY = "mac-or-signature"
    SIGNATURE = "signature"
    MAC = "mac"
    NONE = "none"  # unprotected requests accepted (test set-ups only)


class ResponseProtection(enum.Enum):
    IN_KIND = "in-kind"  # MAC with the requester's secret, else the CMP signer's signature
    NONE = "none"


# Protocol options of a profile: name -> (type, default, lower bound, upper bound)
OPTIONS: dict[str, tuple[type, Any, int | None, int | None]] = {
    "implicit_confirm": (bool, True, None, None),
    "confirm_timeout": (int, 300, 10, 86400),
    "approval_required": (bool, False, None, None),
    "ra_verified_pop": (bool, False, None, None),
    "same_key_kur": (bool, False, None, None),
    "revocation_by_owner_only": (bool, True, None, None),
    "message_time_window": (int, 300, 10, 86400),
    "poll_interval": (int, 5, 1, 3600),
    "response_pbm_iterations": (int, 10_000, 100, 100_000),
}


@dataclasses.dataclass(frozen=True)
class CmpProfile:
    """A CMP alias: URL path → CA and certificate profile, and how requests are authenticated."""

    name: str
    ca: str
    cert_profile: str
    default: bool = False
    request_protection: RequestProtection = RequestProtection.ANY
    response_protection: ResponseProtection = ResponseProtection.IN_KIND
    implicit_confirm: bool = True
    confirm_timeout: int = 300
    approval_required: bool = False
    ra_verified_pop: bool = False
    same_key_kur: bool = False
    revocation_by_owner_only: bool = True
    message_time_window: int = 300
    poll_interval: int = 5
    response_pbm_iterations: int = 10_000
    trust_anchors: tuple[x509.Certificate, ...] = ()
    secret_references: tuple[str, ...] = ()  # filled by the store; the secrets themselves are write-only
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0


def validate_profile(p: CmpProfile) -> None:
    if not isinstance(p.name, str) or not NAME_RE.match(p.name):
        raise InvalidCmpProfile("name must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
    for field, value in (("ca", p.ca), ("cert_profile", p.cert_profile)):
        if not isinstance(value, str) or not CA_NAME_RE.match(value):
            raise InvalidCmpProfile(f"{field} must be 1-64 characters of letters, digits, '_', '.', '-'")
    for opt, (kind, _default, lo, hi) in OPTIONS.items():
        v = getattr(p, opt)
        if kind is bool and not isinstance(v, bool):
            raise InvalidCmpProfile(f"{opt} must be true or false")
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or \
                    (hi is not None and v > hi):
                raise InvalidCmpProfile(f"{opt} must be an integer between {lo} and {hi}")
    if len(p.trust_anchors) > MAX_TRUST_ANCHORS:
        raise InvalidCmpProfile(f"at most {MAX_TRUST_ANCHORS} trust anchors")


def check_secret(reference: object, secret: object) -> tuple[str, bytes]:
    if not isinstance(reference, str) or not REFERENCE_RE.match(reference):
        raise InvalidCmpProfile("a secret reference (senderKID) is 1-128 printable ASCII characters without spaces")
    raw = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(raw, bytes) or not SECRET_MIN <= len(raw) <= SECRET_MAX:
        raise InvalidCmpProfile(f"the shared secret for {reference!r} must be {SECRET_MIN}-{SECRET_MAX} bytes")
    return reference, raw


def parse_trust_anchors(pem: str | bytes) -> tuple[x509.Certificate, ...]:
    data = pem.encode() if isinstance(pem, str) else pem
    if not data.strip():
        return ()
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidCmpProfile("trust_anchors must be a bundle of PEM certificates") from None
    if len(certs) > MAX_TRUST_ANCHORS:
        raise InvalidCmpProfile(f"at most {MAX_TRUST_ANCHORS} trust anchors")
    return tuple(certs)


def anchors_pem(certs: Iterable[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


# ---- sealing of shared secrets ------------------------------------------------------------------------

class SecretSealer:
    """The one choke point for CMP shared secrets: AES-GCM with a token key, AAD-bound."""

    def __init__(self, keystore: Any) -> None:
        self._ks = keystore  # hsm.KeyStore or the service's LazyKeyStore
        self._version: int | None = None

    @staticmethod
    def _aad(profile: str, reference: str, version: int) -> bytes:
        return b"csm:cmp-secret:v1\x00%s\x00%s\x00%d" % (profile.encode(), reference.encode(), version)

    def _current(self) -> int:
        if self._version is None:
            label = KEK_PREFIX + "1"
            if not self._ks.exists(label):
                try:
                    self._ks.generate(label, hsm.KeyType.AES_256)
                except hsm.DuplicateLabel:
                    pass
            self._version = 1
        return self._version

    def seal(self, profile: str, reference: str, secret: bytes) -> bytes:
        v = self._current()
        blob = self._ks.encrypt(KEK_PREFIX + str(v), secret, self._aad(profile, reference, v))
        return _HEADER.pack(_FORMAT, v) + bytes(blob)

    def open(self, profile: str, reference: str, blob: bytes) -> bytes:
        fmt, v = _HEADER.unpack_from(blob)
        if fmt != _FORMAT:
            raise hsm.DecryptionFailed("unknown ciphertext format")
        return bytes(self._ks.decrypt(KEK_PREFIX + str(v), blob[_HEADER.size:], self._aad(profile, reference, v)))


class SealedSecrets(Mapping[bytes, bytes]):
    """senderKID → secret for one profile, holding only ciphertexts; a lookup decrypts in the token."""

    def __init__(self, profile: str, sealed: Mapping[str, bytes], sealer: SecretSealer) -> None:
        self._profile = profile
        self._sealed = {ref.encode(): (ref, blob) for ref, blob in sealed.items()}
        self._sealer = sealer

    def __getitem__(self, kid: bytes) -> bytes:
        ref, blob = self._sealed[kid]
        return self._sealer.open(self._profile, ref, blob)

    def __contains__(self, kid: object) -> bool:  # no decryption to answer "is there one"
        return kid in self._sealed

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._sealed)

    def __len__(self) -> int:
        return len(self._sealed)

    def __repr__(self) -> str:
        return f"SealedSecrets({self._profile!r}, references={sorted(r for r, _ in self._sealed.values())})"


# ---- profiles ---------------------------------------------------------------------------------------

def _row_to_profile(row: CmpProfileRow, refs: Iterable[str]) -> CmpProfile:
    cfg = json.loads(row.config)
    opts = {k: cfg.get(k, d) for k, (_t, d, _lo, _hi) in OPTIONS.items()}
    return CmpProfile(
        name=row.name, ca=row.ca_name, cert_profile=row.cert_profile, default=bool(row.is_default),
        request_protection=RequestProtection(cfg.get("request_protection", RequestProtection.ANY.value)),
        response_protection=ResponseProtection(cfg.get("response_protection", ResponseProtection.IN_KIND.value)),
        trust_anchors=parse_trust_anchors(row.trust_anchors or ""), secret_references=tuple(sorted(refs)),
        created_at=row.created_at, updated_at=row.updated_at, version=row.version, **opts)


def _config_json(p: CmpProfile) -> str:
    doc: dict[str, Any] = {k: getattr(p, k) for k in OPTIONS}
    doc["request_protection"] = p.request_protection.value
    doc["response_protection"] = p.response_protection.value
    return json.dumps(doc, sort_keys=True)


class SqlCmpProfileStore:
    def __init__(self, sessions: sessionmaker[Session], sealer: SecretSealer,
                 clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessions
        self._sealer = sealer
        self._clock = clock

    @staticmethod
    def _refs(s: Session, name: str) -> list[str]:
        return list(s.scalars(select(CmpSecretRow.reference).where(CmpSecretRow.profile == name)))

    def get(self, name: str) -> CmpProfile:
        with transaction(self._sessions, write=False) as s:
            row = s.get(CmpProfileRow, name)
            if row is None:
                raise CmpProfileNotFound(name)
            return _row_to_profile(row, self._refs(s, name))

    def get_default(self) -> CmpProfile | None:
        with transaction(self._sessions, write=False) as s:
            row = s.scalar(select(CmpProfileRow).where(CmpProfileRow.is_default.is_(True)).limit(1))
            return None if row is None else _row_to_profile(row, self._refs(s, row.name))

    def version(self, name: str | None) -> tuple[str, int] | None:
        """(name, version) of ``name`` (None = the default profile); a cheap freshness check."""
        with transaction(self._sessions, write=False) as s:
            stmt = select(CmpProfileRow.name, CmpProfileRow.version)
            stmt = stmt.where(CmpProfileRow.name == name) if name is not None else \
                stmt.where(CmpProfileRow.is_default.is_(True)).limit(1)
            row = s.execute(stmt).first()
            return None if row is None else (str(row[0]), int(row[1]))

    def list(self) -> list[CmpProfile]:
        with transaction(self._sessions, write=False) as s:
            rows = list(s.scalars(select(CmpProfileRow).order_by(CmpProfileRow.name)))
            refs: dict[str, list[str]] = {}
            for prof, ref in s.execute(select(CmpSecretRow.profile, CmpSecretRow.reference)):
                refs.setdefault(prof, []).append(ref)
            return [_row_to_profile(r, refs.get(r.name, ())) for r in rows]

    def sealed_secrets(self, name: str) -> SealedSecrets:
        with transaction(self._sessions, write=False) as s:
            rows = s.execute(select(CmpSecretRow.reference, CmpSecretRow.ciphertext)
                             .where(CmpSecretRow.profile == name)).all()
        return SealedSecrets(name, {str(r): bytes(b) for r, b in rows}, self._sealer)

    def create(self, profile: CmpProfile, secrets: Mapping[str, bytes | str] | None = None) -> CmpProfile:
        validate_profile(profile)
        sealed = self._seal_all(profile.name, secrets or {})
        now = self._clock()
        try:
            with transaction(self._sessions) as s:
                if s.get(CmpProfileRow, profile.name) is not None:
                    raise CmpProfileExists(profile.name)
                if profile.default:
                    s.execute(update(CmpProfileRow).values(is_default=False))
                s.add(CmpProfileRow(name=profile.name, ca_name=profile.ca, cert_profile=profile.cert_profile,
                                    is_default=profile.default, config=_config_json(profile),
                                    trust_anchors=anchors_pem(profile.trust_anchors), created_at=now,
                                    updated_at=now, version=1))
                s.flush()
                for ref, blob in sealed.items():
                    s.add(CmpSecretRow(profile=profile.name, reference=ref, ciphertext=blob, created_at=now))
        except IntegrityError:
            raise CmpProfileExists(profile.name) from None
        return self.get(profile.name)

    def update(self, name: str, changes: Mapping[str, Any], *, set_secrets: Mapping[str, bytes | str] | None = None,
               remove_secrets: Iterable[str] = (), expected_version: int | None = None) -> CmpProfile:
        """Apply ``changes`` (CmpProfile field → value), add/replace and remove secrets, in one unit."""
        allowed = {f.name for f in dataclasses.fields(CmpProfile)} - {
            "name", "secret_references", "created_at", "updated_at", "version"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidCmpProfile(f"unknown profile field(s): {', '.join(sorted(unknown))}")
        sealed = self._seal_all(name, set_secrets or {})
        removed = list(remove_secrets)
        now = self._clock()
        with transaction(self._sessions) as s:
            row = s.get(CmpProfileRow, name)
            if row is None:
                raise CmpProfileNotFound(name)
            if expected_version is not None and row.version != expected_version:
                raise Conflict(f"CMP profile {name!r} is at version {row.version}, not {expected_version}")
            current = _row_to_profile(row, ())
            new = dataclasses.replace(current, **changes)
            validate_profile(new)
            if new.default and not current.default:
                s.execute(update(CmpProfileRow).where(CmpProfileRow.name != name).values(is_default=False))
            row.ca_name, row.cert_profile, row.is_default = new.ca, new.cert_profile, new.default
            row.config = _config_json(new)
            row.trust_anchors = anchors_pem(new.trust_anchors)
            row.updated_at, row.version = now, row.version + 1
            if removed:
                s.execute(delete(CmpSecretRow).where(CmpSecretRow.profile == name,
                                                     CmpSecretRow.reference.in_(removed)))
            for ref, blob in sealed.items():
                existing = s.get(CmpSecretRow, (name, ref))
                if existing is None:
                    s.add(CmpSecretRow(profile=name, reference=ref, ciphertext=blob, created_at=now))
                else:
                    existing.ciphertext, existing.created_at = blob, now
            s.flush()
            count = s.scalar(select(func.count()).select_from(CmpSecretRow).where(CmpSecretRow.profile == name))
            if (count or 0) > MAX_SECRETS:
                raise InvalidCmpProfile(f"a profile holds at most {MAX_SECRETS} shared secrets")
        return self.get(name)

    def delete(self, name: str) -> None:
        with transaction(self._sessions) as s:
            row = s.get(CmpProfileRow, name)
            if row is None:
                raise CmpProfileNotFound(name)
            s.execute(delete(CmpSecretRow).where(CmpSecretRow.profile == name))
            s.execute(delete(CmpTransactionRow).where(CmpTransactionRow.profile == name))
            s.delete(row)

    def _seal_all(self, profile: str, secrets: Mapping[str, bytes | str]) -> dict[str, bytes]:
        if len(secrets) > MAX_SECRETS:
            raise InvalidCmpProfile(f"a profile holds at most {MAX_SECRETS} shared secrets")
        out: dict[str, bytes] = {}
        for ref, secret in secrets.items():
            r, raw = check_secret(ref, secret)
            out[r] = self._sealer.seal(profile, r, raw)
        return out


# ---- transactions -------------------------------------------------------------------------------------

def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _ts(when: _dt.datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _dt_of(ts: float | None) -> _dt.datetime | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)


def _cert_der(cert: x509.Certificate | None) -> bytes | None:
    return None if cert is None else cert.public_bytes(_DER)


def _cert(der: bytes | None) -> x509.Certificate | None:
    return None if der is None else x509.load_der_x509_certificate(der)


def _chain_der(chain: Iterable[x509.Certificate]) -> bytes:
    out = b""
    for c in chain:
        der = c.public_bytes(_DER)
        out += struct.pack(">I", len(der)) + der
    return out


def _chain(data: bytes | None) -> tuple[x509.Certificate, ...]:
    out: list[x509.Certificate] = []
    i = 0
    data = data or b""
    while i < len(data):
        (n,) = struct.unpack_from(">I", data, i)
        out.append(x509.load_der_x509_certificate(data[i + 4:i + 4 + n]))
        i += 4 + n
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def requester_json(r: Requester) -> str:
    """The stored form of a requester (cached: a client sends as the same requester every time)."""
    return json.dumps({
        "profile": r.profile, "auth": r.auth.value,
        "sender": _b64(_asn1.general_name_der(r.sender)),
        "kid": None if r.sender_kid is None else r.sender_kid.hex(),
        "cert": _b64(_cert_der(r.certificate)),
    }, sort_keys=True)


@functools.lru_cache(maxsize=1024)
def requester_from_json(text: str) -> Requester:
    """Parse a stored requester (cached: every message of a transaction names the same one)."""
    d = json.loads(text)
    gn = _asn1.general_name_from_der(_unb64(d["sender"]) or b"")
    return Requester(profile=d["profile"], auth=AuthKind(d["auth"]), sender=gn,
                     sender_kid=None if d["kid"] is None else bytes.fromhex(d["kid"]),
                     certificate=_cert(_unb64(d["cert"])))


def issue_request_json(r: IssueRequest) -> str:
    return json.dumps({
        "profile": r.profile, "body_type": r.body_type.value,
        "subject": _b64(r.subject.public_bytes()),
        "public_key": _b64(r.public_key.public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)),
        "extensions": _b64(_asn1.encode(_asn1.extensions_from_x509(r.extensions))) if r.extensions else None,
        "not_before": _ts(r.not_before), "not_after": _ts(r.not_after),
        "old_certificate": _b64(_cert_der(r.old_certificate)),
        "csr": None if r.csr is None else _b64(r.csr.public_bytes(_DER)),
    }, sort_keys=True)


def issue_request_from_json(text: str, requester: Requester) -> IssueRequest:
    d = json.loads(text)
    subject = _asn1.name_from_der(_unb64(d["subject"]) or b"")
    exts: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    if d["extensions"]:
        exts = tuple(_asn1.extensions_from_der(_unb64(d["extensions"]) or b""))
    csr = _unb64(d["csr"])
    return IssueRequest(
        profile=d["profile"], body_type=BodyType(d["body_type"]), subject=subject,
        public_key=serialization.load_der_public_key(_unb64(d["public_key"]) or b""),  # type: ignore[arg-type]
        requester=requester, extensions=exts, not_before=_dt_of(d["not_before"]), not_after=_dt_of(d["not_after"]),
        old_certificate=_cert(_unb64(d["old_certificate"])),
        csr=None if csr is None else x509.load_der_x509_csr(csr))


def _row_to_txn(row: Any) -> Transaction:
    requester = requester_from_json(row.requester)
    created = _dt_of(row.created_at)
    assert created is not None
    return Transaction(
        transaction_id=bytes.fromhex(row.transaction_id), profile=row.profile, state=TransactionState(row.state),
        requester=requester, request_type=BodyType(int(row.request_type)), server_nonce=bytes(row.server_nonce),
        created=created, cert_req_id=row.cert_req_id,
        issue_request=None if row.issue_request is None else issue_request_from_json(row.issue_request, requester),
        certificate=_cert(_bytes(row.certificate)), chain=_chain(_bytes(row.chain)),
        confirm_deadline=_dt_of(row.confirm_deadline), implicit_confirm=bool(row.implicit_confirm),
        reason=row.reason or "")


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _txn_values(t: Transaction, *, with_request: bool = True) -> dict[str, Any]:
    out = {
        "state": t.state.value, "request_type": str(t.request_type.value), "server_nonce": t.server_nonce,
        "cert_req_id": t.cert_req_id,
        "cert_serial": None if t.certificate is None else format(t.certificate.serial_number, "x"),
        "certificate": _cert_der(t.certificate), "chain": _chain_der(t.chain) if t.chain else None,
        "confirm_deadline": _ts(t.confirm_deadline), "implicit_confirm": t.implicit_confirm,
        "reason": t.reason[:1000],
    }
    if with_request:
        out["requester"] = requester_json(t.requester)
        out["issue_request"] = None if t.issue_request is None else issue_request_json(t.issue_request)
    return out


def _tid(transaction_id: bytes) -> str:
    if len(transaction_id) > MAX_TRANSACTION_ID:
        raise cmp_errors.BadRequest(f"transactionID longer than {MAX_TRANSACTION_ID} bytes")
    return transaction_id.hex()


# The protocol path (begin, lookup, update, nonce) is plain SQL on the DBAPI cursor; writes go
# through the process's shared sms.db Writer, so on SQLite they share one transaction (one fsync)
# with the certificate inserts and audit entries of concurrent requests.
_TXN_COLUMNS = ("profile", "transaction_id", "state", "request_type", "server_nonce", "requester", "created_at",
                "updated_at", "cert_req_id", "issue_request", "cert_serial", "certificate", "chain",
                "confirm_deadline", "implicit_confirm", "reason")
_TxnRow = collections.namedtuple("_TxnRow", _TXN_COLUMNS)  # type: ignore[misc]
_INSERT_TXN = (f"INSERT INTO {CmpTransactionRow.__tablename__} ({', '.join(_TXN_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_TXN_COLUMNS))})")
_SELECT_TXN = (f"SELECT {', '.join(_TXN_COLUMNS)} FROM {CmpTransactionRow.__tablename__} "
               "WHERE profile = ? AND transaction_id = ?")
_UPDATE_COLUMNS = ("state", "request_type", "server_nonce", "cert_req_id", "cert_serial", "certificate", "chain",
                   "confirm_deadline", "implicit_confirm", "reason")
_UPDATE_TXN = (f"UPDATE {CmpTransactionRow.__tablename__} SET {', '.join(c + ' = ?' for c in _UPDATE_COLUMNS)}, "
               "updated_at = ? WHERE profile = ? AND transaction_id = ?")
_SET_NONCE = (f"UPDATE {CmpTransactionRow.__tablename__} SET server_nonce = ? "
              "WHERE profile = ? AND transaction_id = ? AND state <> ?")


_EXISTS_TXN = f"SELECT 1 FROM {CmpTransactionRow.__tablename__} WHERE profile = ? AND transaction_id = ?"


class Stage:
    """The transaction row one CMP exchange has staged (:meth:`SqlTransactionStore.stage`) for
    its next database write. :meth:`take` gives the unit that writes it to whoever carries it
    (the service's work attached to the exchange, see :mod:`sms.cmp.service`); it may be taken
    again when that write is retried, and is replaced when the exchange stages anew."""

    __slots__ = ("unit", "taken", "finished")

    def __init__(self) -> None:
        self.unit: Callable[[RawTx], None] | None = None
        self.taken: Callable[[RawTx], None] | None = None
        self.finished: Transaction | None = None  # the staged row finishes its transaction

    def take(self) -> Callable[[RawTx], None] | None:
        self.taken = self.unit
        return self.unit


_STAGE: contextvars.ContextVar[Stage | None] = contextvars.ContextVar("csm_cmp_stage", default=None)


class SqlTransactionStore:
    """:class:`ca.cmp.TransactionStore` over the service database (SQLite or PostgreSQL).

    Within :meth:`exchange`, :meth:`stage` leaves the row for the exchange's next write to carry
    (the service attaches it, with the exchange's audit entry, to the certificate's insert: one
    transaction for certificate, CMP transaction and audit entry); outside, it writes at once."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessions
        self._clock = clock
        self._finished: collections.OrderedDict[tuple[str, bytes], None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _note_finished(self, t: Transaction) -> None:
        with self._lock:
            self._finished[(t.profile, t.transaction_id)] = None
            while len(self._finished) > 4096:
                self._finished.popitem(last=False)

    def _insert_unit(self, t: Transaction) -> Callable[[RawTx], None]:
        values = _txn_values(t)
        values.update(profile=t.profile, transaction_id=_tid(t.transaction_id), created_at=t.created.timestamp(),
                      updated_at=self._clock())
        row = tuple(values[c] for c in _TXN_COLUMNS)

        def insert(tx: RawTx) -> None:
            try:
                tx.execute(_INSERT_TXN, row)
            except IntegrityError:
                raise cmp_errors.TransactionIdInUse("transactionID already in use") from None

        return insert

    def _update_unit(self, t: Transaction) -> Callable[[RawTx], None]:
        values = _txn_values(t, with_request=False)  # requester and request never change
        params = (*(values[c] for c in _UPDATE_COLUMNS), self._clock(), t.profile, _tid(t.transaction_id))

        def update(tx: RawTx) -> None:
            tx.execute(_UPDATE_TXN, params)

        return update

    @staticmethod
    def _unstage() -> None:
        """A direct write of the exchange's transaction replaces what it staged."""
        stage = _STAGE.get()
        if stage is not None:
            stage.unit = stage.taken = stage.finished = None

    def begin(self, transaction_: Transaction) -> None:
        t = transaction_
        self._unstage()
        writer(self._sessions).run(self._insert_unit(t))
        if t.state is TransactionState.FINISHED:
            self._note_finished(t)

    @contextlib.contextmanager
    def exchange(self) -> Iterator[Stage]:
        """The scope of one CMP exchange: :meth:`stage` leaves its row in the yielded Stage."""
        stage = Stage()
        token = _STAGE.set(stage)
        try:
            yield stage
        finally:
            _STAGE.reset(token)

    def in_use(self, profile: str, transaction_id: bytes) -> bool:
        """Whether the ID is taken (one indexed read; none for an ID this process finished
        lately). BadRequest for an ID longer than this store keeps."""
        tid = _tid(transaction_id)
        if (profile, transaction_id) in self._finished:
            return True
        return read_one(self._sessions, _EXISTS_TXN, (profile, tid)) is not None

    def stage(self, transaction_: Transaction, *, new: bool) -> None:
        t = transaction_
        stage = _STAGE.get()
        if stage is None:
            (self.begin if new else self.update)(t)
            return
        stage.unit, stage.taken = (self._insert_unit(t) if new else self._update_unit(t)), None
        stage.finished = t if t.state is TransactionState.FINISHED else None

    def discard_staged(self) -> None:
        self._unstage()

    def flush_staged(self) -> None:
        """Called once the certificate is stored: the staged row is then committed with it (if
        that write took it), or is written now."""
        stage = _STAGE.get()
        if stage is None or stage.unit is None:
            return
        if stage.taken is not stage.unit:
            writer(self._sessions).run(stage.take())  # type: ignore[arg-type]
        if stage.finished is not None:
            self._note_finished(stage.finished)

    def lookup(self, profile: str, transaction_id: bytes) -> Transaction | None:
        if len(transaction_id) > MAX_TRANSACTION_ID:
            return None
        # one statement: atomic by itself, no BEGIN/COMMIT (and on SQLite no pool checkout)
        row = read_one(self._sessions, _SELECT_TXN, (profile, transaction_id.hex()))
        return None if row is None else _row_to_txn(_TxnRow(*row))

    def update(self, transaction_: Transaction) -> None:
        t = transaction_
        self._unstage()
        writer(self._sessions).run(self._update_unit(t))
        if t.state is TransactionState.FINISHED:
            self._note_finished(t)

    def finish(self, transaction_: Transaction) -> None:
        self.update(dataclasses.replace(transaction_, state=TransactionState.FINISHED))

    def set_server_nonce(self, profile: str, transaction_id: bytes, nonce: bytes) -> None:
        """Record our last senderNonce on an unfinished transaction (one statement, no read; none
        at all for a transaction this process has just finished)."""
        if len(transaction_id) > MAX_TRANSACTION_ID or (profile, transaction_id) in self._finished:
            return
        params = (nonce, profile, transaction_id.hex(), TransactionState.FINISHED.value)

        def unit(tx: RawTx) -> None:
            tx.execute(_SET_NONCE, params)

        writer(self._sessions).run(unit)

    # ---- service-side operations (approvals, sweeper, inspection) ----------------------------------

    def list(self, *, profile: str | None = None, state: TransactionState | None = None,
             limit: int = 100) -> list[Transaction]:
        with transaction(self._sessions, write=False) as s:
            stmt = select(CmpTransactionRow).order_by(CmpTransactionRow.created_at).limit(limit)
            if profile is not None:
                stmt = stmt.where(CmpTransactionRow.profile == profile)
            if state is not None:
                stmt = stmt.where(CmpTransactionRow.state == state.value)
            return [_row_to_txn(r) for r in s.scalars(stmt)]

    def transition(self, profile: str, transaction_id: bytes, from_state: TransactionState,
                   to_state: TransactionState, reason: str = "") -> bool:
        """Atomically move a transaction between states; False if it was not in ``from_state``."""
        with transaction(self._sessions) as s:
            res = s.execute(update(CmpTransactionRow)
                            .where(CmpTransactionRow.profile == profile,
                                   CmpTransactionRow.transaction_id == _tid(transaction_id),
                                   CmpTransactionRow.state == from_state.value)
                            .values(state=to_state.value, reason=reason[:1000], updated_at=self._clock()))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def unconfirmed_before(self, deadline: _dt.datetime, *, limit: int = 100) -> list[Transaction]:
        with transaction(self._sessions, write=False) as s:
            rows = s.scalars(select(CmpTransactionRow)
                             .where(CmpTransactionRow.state == TransactionState.WAITING_CONFIRM.value,
                                    CmpTransactionRow.confirm_deadline < deadline.timestamp())
                             .order_by(CmpTransactionRow.confirm_deadline).limit(limit))
            return [_row_to_txn(r) for r in rows]

    def purge_finished(self, older_than: _dt.datetime) -> int:
        with transaction(self._sessions) as s:
            res = s.execute(delete(CmpTransactionRow)
                            .where(CmpTransactionRow.state == TransactionState.FINISHED.value,
                                   CmpTransactionRow.updated_at < older_than.timestamp()))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def count(self, *, profile: str | None = None) -> int:
        with transaction(self._sessions, write=False) as s:
            stmt = select(func.count()).select_from(CmpTransactionRow)
            if profile is not None:
                stmt = stmt.where(CmpTransactionRow.profile == profile)
            return int(s.scalar(stmt) or 0)
