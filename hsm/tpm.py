"""TPM 2.0 sealing of small secrets (the token PIN) through tpm2-pytss (ESAPI).

Contract::

    sealer = TpmSealer("device:/dev/tpmrm0")       # or "swtpm:host=127.0.0.1,port=2321",
                                                   #    "tabrmd:bus_type=session", ...
    blob = sealer.seal(secret, pcrs="sha256:0,7")  # -> SealedBlob; pcrs=None: no PCR policy
    path.write_bytes(blob.to_bytes())              # versioned JSON, safe to store in a file
    secret = sealer.unseal(SealedBlob.from_bytes(path.read_bytes()))

* The secret is a KEYEDHASH *sealed data object* created under a primary key that is recreated
  from a fixed template on every call (``PRIMARY_TEMPLATES``), so nothing persists in the TPM
  and a blob stays usable for as long as the owner hierarchy's seed is unchanged (until
  ``tpm2_clear``). Only this TPM can load the blob.
* ``pcrs`` given: the object is *policy-only* (no ``userWithAuth``; ``adminWithPolicy``) with
  ``PolicyPCR`` bound to the values the selected PCRs have at sealing time; unsealing while any
  of them differs raises
  :class:`~hsm.errors.PolicyMismatch`. Selected banks must be allocated in the TPM (a policy
  over an unallocated bank would bind nothing, so :meth:`TpmSealer.seal` refuses it).
  ``pcrs=None``: the object has an empty authValue and ``userWithAuth``; anyone who can talk to
  this TPM and holds the blob can unseal it — the protection is that the blob is useless off
  this machine.
* Objects are created with ``noDA``, so failed unseals never count towards dictionary-attack
  lockout. Secret-carrying parameters travel encrypted (AES-128-CFB parameter encryption in a
  session salted to the primary key), so they never cross the TPM bus or the resource manager
  in clear.
* Each call opens its own ESAPI connection and closes it; every transient object and session is
  flushed in ``finally`` blocks (a raw swtpm has only 3 object slots and no resource manager).
  Calls on one :class:`TpmSealer` are serialised by a lock.
* Errors: TPM or resource manager unreachable -> :class:`~hsm.errors.TpmUnavailable`; PCR policy
  failure -> :class:`~hsm.errors.PolicyMismatch`; anything else (corrupt or foreign blob,
  lockout, owner hierarchy needing a password, ...) -> :class:`~hsm.errors.SealError`. Bad
  arguments raise ``TypeError``/``ValueError``. No message ever contains the secret.

Importing this module sets ``TSS2_LOG=all+none`` unless ``TSS2_LOG`` is already set: expected
failures (a PCR mismatch) would otherwise print ``WARNING:esys`` noise on stderr; every failure is
reported through the exceptions above and this module's logger instead.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from .errors import PolicyMismatch, SealError, TpmUnavailable

os.environ.setdefault("TSS2_LOG", "all+none")

from tpm2_pytss import ESAPI, TSS2_Exception  # noqa: E402  (after TSS2_LOG)
from tpm2_pytss.constants import (  # noqa: E402
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_RC,
    TPM2_SE,
    TPMA_OBJECT,
    TPMA_SESSION,
    TSS2_RC,
)
from tpm2_pytss.types import (  # noqa: E402
    TPM2B_DIGEST,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_PCR_SELECTION,
    TPMS_KEYEDHASH_PARMS,
    TPMS_SENSITIVE_CREATE,
    TPMT_KEYEDHASH_SCHEME,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMU_PUBLIC_PARMS,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

log = logging.getLogger(__name__)

#: ``format`` field of a serialised :class:`SealedBlob`.
BLOB_FORMAT: Final = "csm-tpm-sealed"
#: Current serialisation version (from_bytes rejects any other).
BLOB_VERSION: Final = 1
#: Largest secret a sealed data object holds (MAX_SYM_DATA in the TPM 2.0 PC client profile).
MAX_SECRET_SIZE: Final = 128
#: Banks accepted in a PCR selection, in canonical order.
PCR_BANKS: Final[Mapping[str, TPM2_ALG]] = MappingProxyType({
    "sha1": TPM2_ALG.SHA1, "sha256": TPM2_ALG.SHA256, "sha384": TPM2_ALG.SHA384, "sha512": TPM2_ALG.SHA512,
})
#: PCR indices 0..23 (PC client profile).
PCR_COUNT: Final = 24


def _ecc_p256_aes128cfb() -> TPM2B_PUBLIC:
    # The tpm2-tools ``tpm2_createprimary`` default ECC template: restricted storage key,
    # userWithAuth, empty auth, no policy. Same seed + same template => same key every time.
    return TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS)


#: Primary (storage) key templates by id: (hierarchy, template factory). A blob records the id it
#: was sealed under; ids are never reused for a different template.
PRIMARY_TEMPLATES: Final[Mapping[str, tuple[ESYS_TR, Callable[[], TPM2B_PUBLIC]]]] = MappingProxyType({
    "owner-ecc-p256-aes128cfb": (ESYS_TR.OWNER, _ecc_p256_aes128cfb),
})
DEFAULT_PRIMARY: Final = "owner-ecc-p256-aes128cfb"

_TCTI_RE: Final = re.compile(r"^[A-Za-z0-9_.+-]+(?::.*)?$", re.DOTALL)
_SEALED_ATTRS: Final = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA
_NULL_SYM: Final = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)


def _aes128cfb() -> TPMT_SYM_DEF:
    return TPMT_SYM_DEF(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128),
                        mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB))


# --------------------------------------------------------------------------------------------
# PCR selections


def parse_pcr_selection(spec: str) -> str:
    """Validate a PCR selection and return its canonical form.

    Grammar: ``bank ":" index ("," index)* ("+" bank ":" ...)*`` with bank one of sha1, sha256,
    sha384, sha512 and index 0..23, e.g. ``"sha256:0,7"`` or ``"sha1:0+sha256:7"``. The canonical
    form lists banks in that order and indices ascending without duplicates.
    Raises ``TypeError``/``ValueError`` (never silently drops an index, unlike the TSS parser).
    """
    if not isinstance(spec, str):
        raise TypeError(f"pcrs must be a str like 'sha256:0,7', not {type(spec).__name__}")
    banks: dict[str, set[int]] = {}
    for part in spec.strip().split("+"):
        bank, sep, indices = part.strip().partition(":")
        bank = bank.strip().lower()
        if not sep or bank not in PCR_BANKS:
            raise ValueError(f"invalid PCR selection {spec!r}: expected e.g. 'sha256:0,7' "
                             f"(banks: {', '.join(PCR_BANKS)})")
        if bank in banks:
            raise ValueError(f"invalid PCR selection {spec!r}: bank {bank} given twice")
        chosen: set[int] = set()
        for item in indices.split(","):
            item = item.strip()
            if not item.isdigit() or not 0 <= int(item) < PCR_COUNT:
                raise ValueError(f"invalid PCR selection {spec!r}: {item!r} is not a PCR index 0..{PCR_COUNT - 1}")
            chosen.add(int(item))
        banks[bank] = chosen
    return "+".join(f"{b}:{','.join(str(i) for i in sorted(banks[b]))}" for b in PCR_BANKS if b in banks)


def _selection(canonical: str) -> TPML_PCR_SELECTION:
    return TPML_PCR_SELECTION.parse(canonical)


# --------------------------------------------------------------------------------------------
# SealedBlob


@dataclass(frozen=True)
class SealedBlob:
    """A sealed secret as the TPM returned it, plus what is needed to load it again.

    ``private`` and ``public`` are the marshalled TPM2B_PRIVATE (encrypted by the primary key;
    only this TPM can load it) and TPM2B_PUBLIC. ``pcrs`` is the canonical PCR selection the
    secret is bound to, or None. ``primary`` names the entry of :data:`PRIMARY_TEMPLATES` the
    parent key is recreated from. Construction validates everything (``ValueError``/``TypeError``).
    """

    private: bytes = field(repr=False)
    public: bytes = field(repr=False)
    pcrs: str | None = None
    primary: str = DEFAULT_PRIMARY
    version: int = BLOB_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.private, bytes) or not isinstance(self.public, bytes):
            raise TypeError("private and public must be bytes")
        if self.version != BLOB_VERSION:
            raise ValueError(f"unsupported sealed blob version {self.version!r}")
        if self.primary not in PRIMARY_TEMPLATES:
            raise ValueError(f"unknown primary template {self.primary!r}")
        if self.pcrs is not None and parse_pcr_selection(self.pcrs) != self.pcrs:
            raise ValueError(f"PCR selection {self.pcrs!r} is not in canonical form")
        pub = self.tpm2b_public()  # raises ValueError when malformed
        if pub.publicArea.type != TPM2_ALG.KEYEDHASH:
            raise ValueError("the public area is not a sealed data object")
        self.tpm2b_private()

    def tpm2b_public(self) -> TPM2B_PUBLIC:
        return _unmarshal_exact(TPM2B_PUBLIC, self.public, "public")

    def tpm2b_private(self) -> TPM2B_PRIVATE:
        return _unmarshal_exact(TPM2B_PRIVATE, self.private, "private")

    def __repr__(self) -> str:
        return (f"SealedBlob(version={self.version}, primary={self.primary!r}, pcrs={self.pcrs!r}, "
                f"public=<{len(self.public)} bytes>, private=<{len(self.private)} bytes>)")

    def to_bytes(self) -> bytes:
        """UTF-8 JSON: ``{"format": "csm-tpm-sealed", "version": 1, "primary": ..., "pcrs": ...,
        "public": base64, "private": base64}`` (sorted keys, newline-terminated)."""
        doc = {
            "format": BLOB_FORMAT,
            "version": self.version,
            "primary": self.primary,
            "pcrs": self.pcrs,
            "public": base64.b64encode(self.public).decode("ascii"),
            "private": base64.b64encode(self.private).decode("ascii"),
        }
        return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBlob:
        """Parse :meth:`to_bytes` output; :class:`SealError` if it is not a valid version-1 blob."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise SealError("the sealed blob is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != BLOB_FORMAT:
            raise SealError(f"the data is not a {BLOB_FORMAT} blob")
        if doc.get("version") != BLOB_VERSION:
            raise SealError(f"unsupported sealed blob version {doc.get('version')!r} (this csm reads {BLOB_VERSION})")
        expected = {"format", "version", "primary", "pcrs", "public", "private"}
        if set(doc) != expected:
            raise SealError(f"sealed blob fields differ from version {BLOB_VERSION}: {sorted(set(doc) ^ expected)}")
        try:
            if not isinstance(doc["primary"], str) or not (doc["pcrs"] is None or isinstance(doc["pcrs"], str)):
                raise ValueError("primary/pcrs have the wrong type")
            return cls(
                private=_b64(doc["private"]), public=_b64(doc["public"]),
                pcrs=doc["pcrs"], primary=doc["primary"], version=doc["version"],
            )
        except (TypeError, ValueError) as exc:
            raise SealError(f"corrupt sealed blob: {exc}") from None


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("invalid base64") from None


def _unmarshal_exact(cls: Any, data: bytes, what: str) -> Any:
    try:
        obj, used = cls.unmarshal(data)
    except Exception:  # noqa: BLE001 - the TSS MU layer raises TSS2_Exception or ValueError
        raise ValueError(f"malformed {what} area") from None
    if used != len(data) or used == 0:
        raise ValueError(f"malformed {what} area (trailing or missing bytes)")
    return obj


# --------------------------------------------------------------------------------------------
# error mapping

_UNAVAILABLE_LAYERS: Final = frozenset({TSS2_RC.TCTI_RC_LAYER, TSS2_RC.RESMGR_RC_LAYER})
_UNAVAILABLE_BASE: Final = frozenset({
    TSS2_RC.BASE_RC_IO_ERROR, TSS2_RC.BASE_RC_NO_CONNECTION, TSS2_RC.BASE_RC_TRY_AGAIN,
})


class _PcrChanged(PolicyMismatch):
    """TPM_RC_PCR_CHANGED: a PCR moved between PolicyPCR and the command (retried once)."""


def _rc_error(rc: int) -> int:
    """The TPM error number of a TPM-layer rc, without handle/session/parameter bits."""
    if rc & TPM2_RC.FMT1:
        return int(TPM2_RC.FMT1) + (rc & 0x3F)
    return rc & 0xFFF


def _map_error(exc: TSS2_Exception, op: str, tcti: str) -> SealError:
    rc = int(exc.rc)
    layer = rc & TSS2_RC.RC_LAYER_MASK
    text = f"{op} failed: {exc} (rc 0x{rc:x})"
    if layer in _UNAVAILABLE_LAYERS or (layer != TSS2_RC.TPM_RC_LAYER and (rc & 0xFFFF) in _UNAVAILABLE_BASE):
        return TpmUnavailable(f"the TPM at {tcti} cannot be reached: {text}")
    if layer == TSS2_RC.TPM_RC_LAYER:
        err = _rc_error(rc)
        if err == TPM2_RC.PCR_CHANGED:
            return _PcrChanged(f"{op}: a selected PCR changed during the operation (rc 0x{rc:x})")
        if err == TPM2_RC.POLICY_FAIL:
            return PolicyMismatch(f"{op}: the PCR values differ from those the secret was sealed to (rc 0x{rc:x})")
        if err == TPM2_RC.INTEGRITY:
            return SealError(f"{op}: the sealed blob was not made by this TPM (or its owner seed was cleared) "
                             f"or is corrupt (rc 0x{rc:x})")
        if err == TPM2_RC.LOCKOUT:
            return SealError(f"{op}: the TPM is in dictionary-attack lockout (rc 0x{rc:x})")
        if err in (TPM2_RC.BAD_AUTH, TPM2_RC.AUTH_FAIL) and op.startswith("create primary"):
            return SealError(f"{op}: the owner hierarchy has an authorization value set; csm needs it empty "
                             f"(rc 0x{rc:x})")
    return SealError(text)


# --------------------------------------------------------------------------------------------
# TpmSealer


class TpmSealer:
    """Seals and unseals small secrets with the TPM reached through ``tcti``.

    ``tcti`` is a tpm2-tools style TCTI string (``name[:config]``); nothing is contacted until a
    method is called. ``primary`` selects the parent key template for new blobs (unseal always
    uses the template recorded in the blob).
    """

    def __init__(self, tcti: str, *, primary: str = DEFAULT_PRIMARY) -> None:
        if not isinstance(tcti, str):
            raise TypeError(f"tcti must be a str, not {type(tcti).__name__}")
        if not _TCTI_RE.match(tcti):
            raise ValueError(f"invalid TCTI string {tcti!r}: expected name[:config], e.g. device:/dev/tpmrm0")
        if primary not in PRIMARY_TEMPLATES:
            raise ValueError(f"unknown primary template {primary!r} (known: {', '.join(PRIMARY_TEMPLATES)})")
        self._tcti = tcti
        self._primary = primary
        self._lock = threading.Lock()

    @property
    def tcti(self) -> str:
        return self._tcti

    def __repr__(self) -> str:
        return f"TpmSealer({self._tcti!r})"

    # -- public operations --------------------------------------------------------------------

    def check(self) -> None:
        """Round-trip one command to the TPM; :class:`TpmUnavailable` if it cannot be reached."""
        with self._lock, self._connect() as ectx, self._op("get random", ectx):
            ectx.get_random(8)

    def seal(self, secret: bytes, pcrs: str | None = None) -> SealedBlob:
        """Seal ``secret`` (1..128 bytes), optionally to the current values of the PCRs ``pcrs``."""
        if not isinstance(secret, (bytes, bytearray)):
            raise TypeError(f"secret must be bytes, not {type(secret).__name__}")
        if not 0 < len(secret) <= MAX_SECRET_SIZE:
            raise ValueError(f"secret must be 1..{MAX_SECRET_SIZE} bytes long, not {len(secret)}")
        canonical = parse_pcr_selection(pcrs) if pcrs is not None else None
        with self._lock, self._connect() as ectx:
            if canonical is not None:
                self._require_allocated(ectx, canonical)
            with self._primary_key(ectx, self._primary) as primary:
                policy = self._pcr_policy_digest(ectx, canonical) if canonical is not None else TPM2B_DIGEST()
                # PCR-bound: user *and* admin role need the policy (no authValue path at all).
                attrs = (_SEALED_ATTRS | TPMA_OBJECT.ADMINWITHPOLICY if canonical is not None
                         else _SEALED_ATTRS | TPMA_OBJECT.USERWITHAUTH)
                template = TPM2B_PUBLIC(TPMT_PUBLIC(
                    type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256, authPolicy=policy, objectAttributes=attrs,
                    parameters=TPMU_PUBLIC_PARMS(keyedHashDetail=TPMS_KEYEDHASH_PARMS(
                        scheme=TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.NULL))),
                ))
                sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(bytes(secret))))
                # session1 authorises the (empty-auth) parent and encrypts inSensitive on the way in.
                with self._session(ectx, primary, TPM2_SE.HMAC, TPMA_SESSION.DECRYPT) as hmac, \
                        self._op("create sealed object", ectx):
                    priv, pub, *_ = ectx.create(primary, sensitive, template, session1=hmac)
        blob = SealedBlob(private=bytes(priv.marshal()), public=bytes(pub.marshal()), pcrs=canonical,
                          primary=self._primary)
        log.info("sealed a %d-byte secret with the TPM at %s (%s)", len(secret), self._tcti,
                 f"PCR policy {canonical}" if canonical else "no PCR policy")
        return blob

    def unseal(self, blob: SealedBlob) -> bytes:
        """Return the secret sealed in ``blob``; PolicyMismatch if its PCRs have changed since."""
        if not isinstance(blob, SealedBlob):
            raise TypeError(f"blob must be a SealedBlob, not {type(blob).__name__}")
        with self._lock, self._connect() as ectx:
            for attempt in (1, 2):
                try:
                    return self._unseal_once(ectx, blob)
                except _PcrChanged:
                    # A PCR moved between PolicyPCR and Unseal; one retry settles it.
                    if attempt == 1:
                        continue
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- internals ----------------------------------------------------------------------------

    def _unseal_once(self, ectx: ESAPI, blob: SealedBlob) -> bytes:
        selection = _selection(blob.pcrs) if blob.pcrs is not None else None
        with self._primary_key(ectx, blob.primary) as primary:
            with self._op("load sealed object", ectx):
                handle = ectx.load(primary, blob.tpm2b_private(), blob.tpm2b_public())
            try:
                kind = TPM2_SE.POLICY if selection is not None else TPM2_SE.HMAC
                # The session is salted to the primary and encrypts the response (the secret).
                with self._session(ectx, primary, kind, TPMA_SESSION.ENCRYPT) as session:
                    if selection is not None:
                        with self._op("policy PCR", ectx):
                            ectx.policy_pcr(session, TPM2B_DIGEST(), selection)
                    with self._op("unseal", ectx):
                        return bytes(ectx.unseal(handle, session1=session))
            finally:
                _flush(ectx, handle)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[ESAPI]:
        try:
            ectx = ESAPI(self._tcti)
        except TSS2_Exception as exc:
            raise TpmUnavailable(f"the TPM at {self._tcti} cannot be reached: {exc} (rc 0x{int(exc.rc):x})") from exc
        except (ValueError, RuntimeError, OSError) as exc:
            raise TpmUnavailable(f"the TPM at {self._tcti} cannot be reached: {exc}") from exc
        try:
            yield ectx
        finally:
            try:
                ectx.close()
            except Exception:  # noqa: BLE001 - closing must not mask the real outcome
                log.debug("closing the ESAPI context for %s failed", self._tcti, exc_info=True)

    @contextlib.contextmanager
    def _op(self, op: str, ectx: ESAPI) -> Iterator[None]:
        try:
            yield
        except TSS2_Exception as exc:
            err = _map_error(exc, op, self._tcti)
            log.debug("%s", err)  # raised to the caller, who reports it: not logged twice
            raise err from exc

    @contextlib.contextmanager
    def _primary_key(self, ectx: ESAPI, template_id: str) -> Iterator[ESYS_TR]:
        hierarchy, factory = PRIMARY_TEMPLATES[template_id]
        with self._op(f"create primary key {template_id}", ectx):
            handle, *_ = ectx.create_primary(None, factory(), primary_handle=hierarchy)
        try:
            yield handle
        finally:
            _flush(ectx, handle)

    @contextlib.contextmanager
    def _session(self, ectx: ESAPI, salt_key: ESYS_TR, kind: TPM2_SE, encrypt: TPMA_SESSION) -> Iterator[ESYS_TR]:
        with self._op("start auth session", ectx):
            session = ectx.start_auth_session(salt_key, ESYS_TR.NONE, kind, _aes128cfb(), TPM2_ALG.SHA256)
        try:
            with self._op("set session attributes", ectx):
                ectx.trsess_set_attributes(session, encrypt | TPMA_SESSION.CONTINUESESSION)
            yield session
        finally:
            _flush(ectx, session)

    def _pcr_policy_digest(self, ectx: ESAPI, canonical: str) -> TPM2B_DIGEST:
        with self._op("start trial session", ectx):
            trial = ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, _NULL_SYM, TPM2_ALG.SHA256)
        try:
            with self._op("policy PCR (trial)", ectx):
                ectx.policy_pcr(trial, TPM2B_DIGEST(), _selection(canonical))
                digest: TPM2B_DIGEST = ectx.policy_get_digest(trial)
                return digest
        finally:
            _flush(ectx, trial)

    def _require_allocated(self, ectx: ESAPI, canonical: str) -> None:
        with self._op("read PCR allocation", ectx):
            _more, data = ectx.get_capability(TPM2_CAP.PCRS, 0, 1)
        allocated: dict[int, int] = {}
        for sel in data.data.assignedPCR:
            bits = bytes(sel.pcrSelect)[: sel.sizeofSelect]
            allocated[int(sel.hash)] = int.from_bytes(bits, "little")
        for part in canonical.split("+"):
            bank, _, indices = part.partition(":")
            mask = allocated.get(int(PCR_BANKS[bank]), 0)
            missing = [i for i in map(int, indices.split(",")) if not mask >> i & 1]
            if missing:
                raise SealError(f"PCR bank {bank} is not allocated for PCR(s) {missing} in the TPM at {self._tcti}; "
                                "a policy over it would bind nothing")


def _flush(ectx: ESAPI, handle: ESYS_TR) -> None:
    try:
        ectx.flush_context(handle)
    except Exception:  # noqa: BLE001 - best effort; the original error (if any) is what matters
        log.warning("could not flush TPM handle 0x%x", int(handle), exc_info=True)
