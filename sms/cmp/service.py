"""The CMP service: one :class:`ca.cmp.CmpServer` per CMP profile, built from the stored profile
and the CA engine; approvals of held requests; the confirm-timeout sweeper. No Flask here.

Servers are cached per process and rebuilt when the profile's version changes (checked with one
indexed read at most once a second), so an edit made through another worker takes effect within
a second.
Responses are signed by the profile's CA key in the token (it has digitalSignature) and
counted in the CA's signature statistics as "other". A profile without trust anchors trusts the
root of its own CA for signature-protected requests (certificates the CA issued authenticate
kur, rr and further requests).
"""
from __future__ import annotations

import contextvars
import dataclasses
import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ca import CaEngine, CaNotFound, ProfileNotFound, SignatureKind
from ca.types import describe_key
from ca.cmp import (
    CmpProfileConfig,
    CmpServer,
    Requester,
    ResponseSigner,
    Transaction,
    TransactionState,
)
from ca.cmp.server import _Outcome
from ca.cmp_issuer import EngineIssuer
from client_sdk.cmp import BodyType, CertRepMessageBody, PKIMessage, RevocationReason
from client_sdk.cmp import errors as cmp_errors

from ..audit.service import AuditEvent, AuditLog
from ..db import Attached, RawTx, attach
from ..errors import ServiceUnavailable
from .errors import CmpRequestNotFound, CmpRequestNotPending, CmpUnavailable, InvalidCmpProfile
from .store import (
    CmpProfile,
    RequestProtection,
    ResponseProtection,
    SqlCmpProfileStore,
    SqlTransactionStore,
    Stage,
)

log = logging.getLogger(__name__)

_REPORT: contextvars.ContextVar[CmpReport | None] = contextvars.ContextVar("csm_cmp_report", default=None)


@dataclasses.dataclass
class CmpReport:
    """What one CMP exchange was, for the audit log (names and IDs only, never secrets)."""

    profile: str = ""
    request: str = "undecodable"
    transaction_id: str = ""
    sender: str = ""
    sender_kid: str = ""
    auth: str = ""
    response: str = ""
    status: str = ""
    failure: str = ""
    #: the exchange's audit entry (:meth:`CmpService.serve` with ``audit``) was committed with
    #: its write and says what the answer says: nothing more to record
    audited: bool = dataclasses.field(default=False, compare=False)

    def detail(self) -> dict[str, str]:
        return {f: v for f in _REPORT_FIELDS if (v := getattr(self, f))}


_REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(CmpReport) if f.name != "audited")


def _no_work(tx: RawTx, result: object) -> None:
    pass


def _no_finish(tx: RawTx) -> None:
    pass


class _ExchangeWork:
    """What one CMP exchange writes with its (first) database write - on the hot path the issued
    certificate's insert: the CMP transaction row it staged and, once the report names the
    answer (:meth:`CmpServer._answering`), its audit entry. So an ir, its certificate, its
    transaction and its audit entry commit together (one transaction, no other commit)."""

    def __init__(self, stage: Stage, report: CmpReport,
                 audit: tuple[AuditLog, Callable[[CmpReport], AuditEvent]] | None) -> None:
        self.stage = stage
        self.report = report
        self.event = audit[1] if audit is not None else None
        self.entry = audit[0].attached(self._event) if audit is not None else None
        self.entry_failed = False  # adding the entry failed a write: later writes go without it
        self.work = Attached(self._prepare, self.entry.finish if self.entry is not None else _no_finish)

    def _event(self) -> AuditEvent:
        assert self.event is not None
        return self.event(self.report)

    def _prepare(self) -> Callable[[RawTx, object], None]:
        unit = self.stage.take()
        add_entry = self.entry.prepare() if self.entry is not None and self.report.response and \
            not self.entry_failed else None
        if unit is None and add_entry is None:
            return _no_work

        def add(tx: RawTx, result: object) -> None:
            if unit is not None:
                unit(tx)
            if add_entry is not None:
                try:
                    add_entry(tx, None)  # the write's own result (a certificate's serial) is not CMP's detail
                except Exception:
                    # the write is refused; the error answer's own write (its nonce) must not fail
                    # the same way: the answer's entry is then appended by the caller (or refused)
                    self.entry_failed = True
                    raise

        return add

    def audited(self) -> bool:
        """The entry committed with the write says what the final report says."""
        if self.entry is None or self.event is None or not self.work.committed:
            return False
        return self.entry.record is not None and self.entry.record == self.event(self.report)


def _printable(kid: bytes | None) -> str:
    if not kid:
        return ""
    try:
        text = kid.decode("ascii")
        if text.isprintable():
            return text[:128]
    except UnicodeDecodeError:
        pass
    return "0x" + kid.hex()[:64]


class ReportingCmpServer(CmpServer):
    """CmpServer that notes request and outcome in the current :class:`CmpReport`."""

    def _authenticate(self, msg: PKIMessage) -> Requester:
        rep = _REPORT.get()
        if rep is not None:
            h = msg.header
            rep.request = msg.body_type.asn1_name
            rep.transaction_id = (h.transaction_id or b"").hex()[:64]
            rep.sender_kid = _printable(h.sender_kid)
            value = getattr(h.sender, "value", None)
            rep.sender = (value.rfc4514_string() if hasattr(value, "rfc4514_string") else str(value or ""))[:256]
        requester = super()._authenticate(msg)
        if rep is not None:
            rep.auth = requester.auth.value
        return requester

    @staticmethod
    def _note_answer(body: Any) -> None:
        rep = _REPORT.get()
        if rep is not None:
            rep.response = body.body_type.asn1_name
            if isinstance(body, CertRepMessageBody) and body.responses:
                st = body.responses[0].status
                rep.status = st.status.name.lower()
                if st.fail_info:
                    rep.failure = ",".join(sorted(f.name for f in st.fail_info))

    def _answering(self, body: Any) -> None:
        """The answer is known before the exchange's concluding write: the report names it, so
        the audit entry can commit with that write."""
        self._note_answer(body)

    def _respond(self, request: Any, out: _Outcome, requester: Requester | None, nonce: bytes | None = None) -> bytes:
        self._note_answer(out.body)
        return super()._respond(request, out, requester, nonce)

    def _remember_nonce(self, request: Any, response: Any) -> None:
        """As the base class, in one UPDATE instead of a read and a full-row write."""
        tid = request.transaction_id
        if tid is None or response.sender_nonce is None:
            return
        store = self.transactions
        if isinstance(store, SqlTransactionStore):
            store.set_server_nonce(self.profile.name, tid, response.sender_nonce)
        else:  # pragma: no cover - other stores
            super()._remember_nonce(request, response)

    def _unexpected(self, exc: Exception) -> cmp_errors.CmpError:
        """A service that is temporarily unavailable (e.g. the audit entry of the exchange's
        write cannot be added: nothing was stored) is answered systemUnavail: try later."""
        if isinstance(exc, ServiceUnavailable):
            return cmp_errors.SystemUnavail("the service is unavailable, try later")
        return super()._unexpected(exc)

    def _error(self, request: Any, error: cmp_errors.CmpError, requester: Requester | None,
               nonce: bytes | None = None) -> bytes:
        rep = _REPORT.get()
        if rep is not None:
            rep.failure = type(error).__name__
        return super()._error(request, error, requester, nonce)


@dataclasses.dataclass(frozen=True)
class SweepReport:
    revoked: int
    purged: int


class CmpService:
    def __init__(self, profiles: SqlCmpProfileStore, transactions: SqlTransactionStore,
                 engine: Callable[[], CaEngine], *, sweep_interval: float = 30.0,
                 retention: _dt.timedelta = _dt.timedelta(days=7), version_ttl: float = 1.0,
                 clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc)) -> None:
        self.profiles = profiles
        self.transactions = transactions
        self._engine = engine
        self._sweep_interval = sweep_interval
        self._retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._servers: dict[str, tuple[int, CmpServer]] = {}
        self._versions: dict[str, tuple[float, tuple[str, int] | None]] = {}
        self._version_ttl = version_ttl
        self._next_sweep = 0.0

    # ---- profiles (management) ------------------------------------------------------------------

    def _check_ca(self, p: CmpProfile) -> None:
        engine = self._engine()
        try:
            engine.get_ca(p.ca)
        except CaNotFound:
            raise InvalidCmpProfile(f"no CA named {p.ca!r}") from None
        try:
            engine.get_profile(p.ca, p.cert_profile)
        except ProfileNotFound:
            raise InvalidCmpProfile(f"CA {p.ca!r} has no certificate profile {p.cert_profile!r}") from None

    def create_profile(self, profile: CmpProfile, secrets: Mapping[str, bytes | str] | None = None) -> CmpProfile:
        from .store import validate_profile

        validate_profile(profile)
        self._check_ca(profile)
        out = self.profiles.create(profile, secrets)
        self.invalidate(profile.name)
        return out

    def update_profile(self, name: str, changes: Mapping[str, Any], **kw: Any) -> CmpProfile:
        if "ca" in changes or "cert_profile" in changes:
            current = self.profiles.get(name)
            self._check_ca(dataclasses.replace(current, **{k: v for k, v in changes.items()
                                                           if k in ("ca", "cert_profile")}))
        out = self.profiles.update(name, changes, **kw)
        self.invalidate(name)
        return out

    def delete_profile(self, name: str) -> None:
        self.profiles.delete(name)
        self.invalidate(name)

    def invalidate(self, name: str | None = None) -> None:
        with self._lock:
            self._versions.clear()
            if name is None:
                self._servers.clear()
            else:
                self._servers.pop(name, None)

    # ---- serving ------------------------------------------------------------------------------------

    def resolve(self, name: str | None) -> str:
        """The profile name for a request path (None = the default profile); CmpProfileNotFound."""
        from .errors import CmpProfileNotFound

        found = self.profiles.version(name)
        if found is None:
            raise CmpProfileNotFound(name or "(default)")
        return found[0]

    def server_for(self, name: str | None) -> CmpServer:
        """The CmpServer of profile ``name``; its stored version is re-checked at most once per
        ``version_ttl`` seconds (edits through this process apply at once, through others within that)."""
        from .errors import CmpProfileNotFound

        key = name or ""
        now = time.monotonic()
        hit = self._versions.get(key)
        if hit is not None and hit[0] > now:
            found: tuple[str, int] | None = hit[1]
        else:
            found = self.profiles.version(name)
            self._versions[key] = (now + self._version_ttl, found)
        if found is None:
            raise CmpProfileNotFound(name or "(default)")
        pname, version = found
        cached = self._servers.get(pname)
        if cached is not None and cached[0] == version:
            return cached[1]
        profile = self.profiles.get(pname)
        server = self._build(profile)
        with self._lock:
            self._servers[pname] = (profile.version, server)
        return server

    def _build(self, p: CmpProfile) -> CmpServer:
        engine = self._engine()
        try:
            ca = engine.get_ca(p.ca)
        except CaNotFound:
            raise CmpUnavailable(f"the CA {p.ca!r} of CMP profile {p.name!r} does not exist") from None
        chain = engine.chain(p.ca)
        signer = ResponseSigner(engine.signing_key(p.ca, SignatureKind.OTHER), ca.certificate, tuple(chain[1:]))
        secrets = self.profiles.sealed_secrets(p.name) if p.request_protection in (
            RequestProtection.ANY, RequestProtection.MAC, RequestProtection.NONE) else {}
        defaults = CmpProfileConfig(name=p.name, ca_name=ca.certificate.subject)
        cfg = CmpProfileConfig(
            name=p.name, ca_name=ca.certificate.subject, shared_secrets=secrets,
            trust_anchors=(p.trust_anchors or tuple(c for c in chain if c.subject == c.issuer))
            if p.request_protection is not RequestProtection.MAC else (),
            implicit_confirm_allowed=p.implicit_confirm, confirm_timeout=_dt.timedelta(seconds=p.confirm_timeout),
            require_protection=p.request_protection is not RequestProtection.NONE,
            protect_responses=p.response_protection is ResponseProtection.IN_KIND,
            allow_ra_verified_pop=p.ra_verified_pop, allow_same_key_kur=p.same_key_kur,
            approval_required=p.approval_required, poll_interval=p.poll_interval,
            message_time_window=_dt.timedelta(seconds=p.message_time_window),
            mac_allowed_for=frozenset() if p.request_protection is RequestProtection.SIGNATURE
            else defaults.mac_allowed_for,
            revocation_by_owner_only=p.revocation_by_owner_only, response_pbm_iterations=p.response_pbm_iterations)
        issuer = EngineIssuer(engine, p.ca, profiles={p.name: p.cert_profile})
        return ReportingCmpServer(cfg, issuer=issuer, transactions=self.transactions, signer=signer,
                                  clock=self._clock)

    def handle(self, name: str | None, request: bytes) -> tuple[bytes, CmpReport]:
        """DER in, DER out for the profile ``name`` (None = default). Raises CmpProfileNotFound /
        CmpUnavailable before any protocol processing; protocol failures are CMP answers."""
        return self.serve(self.server_for(name), request)

    def serve(self, server: CmpServer, request: bytes, *,
              audit: tuple[AuditLog, Callable[[CmpReport], AuditEvent]] | None = None) -> tuple[bytes, CmpReport]:
        """DER in, DER out on ``server`` (from :meth:`server_for`); never raises for bad input.

        The exchange's transaction row rides in the issued certificate's write. With ``audit``
        (the log and the exchange's entry as a function of the report), the entry commits with
        the exchange's concluding write when the answer is known by then; ``report.audited``
        tells whether it did (else the caller appends it, as for any read)."""
        self.maybe_sweep()  # its writes are its own, never the exchange's
        report = CmpReport(profile=server.profile.name)
        token = _REPORT.set(report)
        try:
            with self.transactions.exchange() as stage:
                work = _ExchangeWork(stage, report, audit)
                with attach(work.work):
                    der = server.handle(request)
            report.audited = work.audited()
            return der, report
        finally:
            _REPORT.reset(token)

    # ---- approvals --------------------------------------------------------------------------------

    def pending(self, profile: str | None = None, *, limit: int = 100) -> list[Transaction]:
        if profile is not None:
            self.profiles.get(profile)
        return self.transactions.list(profile=profile, state=TransactionState.PENDING_APPROVAL, limit=limit)

    def _decide(self, profile: str, tid_hex: str, to: TransactionState, reason: str) -> Transaction:
        try:
            tid = bytes.fromhex(tid_hex)
        except ValueError:
            raise CmpRequestNotFound(profile, tid_hex[:64]) from None
        txn = self.transactions.lookup(profile, tid)
        if txn is None:
            raise CmpRequestNotFound(profile, tid_hex)
        if not self.transactions.transition(profile, tid, TransactionState.PENDING_APPROVAL, to, reason):
            current = self.transactions.lookup(profile, tid)
            raise CmpRequestNotPending(profile, tid_hex, current.state.value if current else "gone")
        out = self.transactions.lookup(profile, tid)
        assert out is not None
        return out

    def approve(self, profile: str, tid_hex: str, *, by: str = "") -> Transaction:
        """The certificate is issued when the client polls next."""
        return self._decide(profile, tid_hex, TransactionState.APPROVED, f"approved by {by}"[:200] if by else "")

    def reject(self, profile: str, tid_hex: str, *, reason: str = "", by: str = "") -> Transaction:
        text = reason.strip()[:200] or "request rejected by an operator"
        return self._decide(profile, tid_hex, TransactionState.REJECTED, text)

    # ---- the confirm-timeout sweeper -------------------------------------------------------------

    def maybe_sweep(self) -> None:
        """Run :meth:`sweep` if this process has not done so for ``sweep_interval`` seconds."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        with self._lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + self._sweep_interval
        try:
            self.sweep()
        except Exception:  # noqa: BLE001 - the sweep is housekeeping; the request goes on
            log.exception("CMP confirm-timeout sweep failed")

    def sweep(self, *, limit: int = 100) -> SweepReport:
        """Revoke certificates whose certConf did not arrive before the deadline; purge finished
        transactions older than the retention period."""
        now = self._clock()
        revoked = 0
        engine: CaEngine | None = None
        for txn in self.transactions.unconfirmed_before(now, limit=limit):
            cert = txn.certificate
            if cert is None:
                continue
            try:
                profile = self.profiles.get(txn.profile)
                engine = engine or self._engine()
                issuer = EngineIssuer(engine, profile.ca, profiles={profile.name: profile.cert_profile})
                issuer.revoke(cert.serial_number, cert.issuer, RevocationReason.CESSATION_OF_OPERATION,
                              txn.requester)
                revoked += 1
            except (cmp_errors.CertRevoked, cmp_errors.BadCertId):
                pass
            except Exception:  # noqa: BLE001 - leave it for the next sweep
                log.exception("could not revoke the unconfirmed certificate %#x", cert.serial_number)
                continue
            self.transactions.transition(txn.profile, txn.transaction_id, TransactionState.WAITING_CONFIRM,
                                         TransactionState.FINISHED, "not confirmed in time; certificate revoked")
            log.info("CMP profile %s: certificate %#x not confirmed in time, revoked", txn.profile,
                     cert.serial_number)
        purged = self.transactions.purge_finished(now - self._retention)
        return SweepReport(revoked=revoked, purged=purged)


def describe(txn: Transaction) -> dict[str, Any]:
    """A held or finished request as the management API shows it (no secrets, no key material)."""
    req = txn.issue_request
    r = txn.requester
    sender = getattr(r.sender, "value", None)
    out: dict[str, Any] = {
        "profile": txn.profile, "transaction_id": txn.transaction_id.hex(), "state": txn.state.value,
        "request_type": txn.request_type.asn1_name, "created": txn.created.isoformat(),
        "requester": {"auth": r.auth.value, "sender": sender.rfc4514_string() if hasattr(sender, "rfc4514_string")
                      else str(sender or ""), "reference": _printable(r.sender_kid) or None,
                      "certificate_serial": format(r.certificate.serial_number, "x") if r.certificate else None},
        "reason": txn.reason or None,
    }
    if req is not None:
        out["subject"] = req.subject.rfc4514_string()
        out["key"] = describe_key(req.public_key)
        out["body_type"] = BodyType(req.body_type).asn1_name
    if txn.certificate is not None:
        out["certificate_serial"] = format(txn.certificate.serial_number, "x")
    return out
