"""CMP messages (RFC 4210/9480) as typed, immutable objects over pyasn1-alt-modules ``rfc9480``.

``PKIMessage.decode(der)`` parses any PKIMessage into a :class:`PKIHeader`, a typed body chosen by
:data:`BODY_TYPES` (one class per body type, like certbot's message registry) and the extraCerts
as cryptography certificates. Decoded objects remember their pyasn1 value and the message its
original bytes, so ``encode()`` of an unmodified decoded message is byte-identical and protection is
always checked over the bytes the peer sent. ``dataclasses.replace`` yields a new object that is
encoded from its typed fields.

Anything malformed or outside the closed vocabularies raises a :class:`~client_sdk.cmp.errors.CmpError`
leaf (BadDataFormat, BadRequest, ...) - never another exception type.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pyasn1.type import univ
from pyasn1_alt_modules import rfc4210, rfc4211, rfc5280, rfc9480

from . import _asn1
from .algorithms import ProtectionAlgorithm, algorithm_from_asn1, algorithm_to_asn1
from .enums import BodyType, FailureInfo, InfoType, PKIStatus, PopKind, RevocationReason
from .errors import BadDataFormat, BadRequest, CmpError

E = TypeVar("E", bound=x509.ExtensionType)

#: Messages larger than this are refused before parsing (pyasn1 is slow; bounded work per request).
MAX_MESSAGE_SIZE: Final = 1 << 20

_OLD_CERT_ID_OID: Final = "1.3.6.1.5.5.7.5.1.5"  # id-regCtrl-oldCertID
_CRL_REASON_OID: Final = "2.5.29.21"


def _cached(obj: Any, value: Any) -> Any:
    object.__setattr__(obj, "_asn1", value)
    return obj


def _from_cache(obj: Any) -> Any:
    return getattr(obj, "_asn1", None)


# ---- small values ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PKIStatusInfo:
    status: PKIStatus
    status_strings: tuple[str, ...] = ()
    fail_info: frozenset[FailureInfo] = frozenset()

    @classmethod
    def accepted(cls, *texts: str) -> PKIStatusInfo:
        return cls(PKIStatus.ACCEPTED, tuple(texts))

    @classmethod
    def rejection(cls, failure: FailureInfo | None, *texts: str) -> PKIStatusInfo:
        return cls(PKIStatus.REJECTION, tuple(texts), frozenset([failure]) if failure is not None else frozenset())

    @classmethod
    def from_error(cls, error: CmpError) -> PKIStatusInfo:
        return cls.rejection(error.failure if error.failure is not None else FailureInfo.SYSTEM_FAILURE, error.detail)

    @classmethod
    def from_asn1(cls, value: Any) -> PKIStatusInfo:
        try:
            status = PKIStatus(int(value["status"]))
        except ValueError:
            raise BadDataFormat(f"unknown PKIStatus {int(value['status'])}") from None
        texts = _asn1.free_text(value["statusString"]) if _asn1.present(value, "statusString") else ()
        bits: set[FailureInfo] = set()
        if _asn1.present(value, "failInfo"):
            for i, bit in enumerate(tuple(value["failInfo"])):
                if bit:
                    try:
                        bits.add(FailureInfo(i))
                    except ValueError:
                        raise BadDataFormat(f"unknown PKIFailureInfo bit {i}") from None
        return cls(status, texts, frozenset(bits))

    def to_asn1(self, spec: Any = None) -> Any:
        out = (spec if spec is not None else rfc9480.PKIStatusInfo()).clone()
        out["status"] = int(self.status)
        if self.status_strings:
            out["statusString"] = _asn1.free_text_into(self.status_strings, _asn1.slot(out, "statusString"))
        if self.fail_info:
            top = max(self.fail_info)
            bits = "".join("1" if FailureInfo(i) in self.fail_info else "0" for i in range(top + 1))
            out["failInfo"] = _asn1.slot(out, "failInfo").clone(binValue=bits)
        return out


@dataclasses.dataclass(frozen=True)
class InfoTypeAndValue:
    """One InfoTypeAndValue (generalInfo, genm, genp); ``value`` is the DER of infoValue."""

    info_type: x509.ObjectIdentifier
    value: bytes | None = None

    @property
    def kind(self) -> InfoType | None:
        try:
            return InfoType(self.info_type.dotted_string)
        except ValueError:
            return None

    @classmethod
    def of(cls, kind: InfoType, value: bytes | None = None) -> InfoTypeAndValue:
        return cls(kind.oid, value)

    @classmethod
    def implicit_confirm(cls) -> InfoTypeAndValue:
        return _implicit_confirm_itav()

    @classmethod
    def confirm_wait_time(cls, when: _dt.datetime) -> InfoTypeAndValue:
        return _confirm_wait_time_itav(when)

    @classmethod
    def certificates(cls, kind: InfoType, certs: Iterable[x509.Certificate]) -> InfoTypeAndValue:
        """caCerts (and other SEQUENCE OF CMPCertificate values)."""
        seq = rfc9480.CaCertsValue()
        for c in certs:
            _asn1.put_cert(seq, None, c)
        return cls.of(kind, _asn1.encode(seq))

    @classmethod
    def certificate(cls, kind: InfoType, cert: x509.Certificate) -> InfoTypeAndValue:
        return cls.of(kind, cert.public_bytes(serialization.Encoding.DER))

    def as_certificates(self) -> tuple[x509.Certificate, ...]:
        if self.value is None:
            return ()
        seq = _asn1.decode(self.value, rfc9480.CaCertsValue(), what="certificate list")
        return tuple(_asn1.cert_to_x509(c) for c in seq)

    def as_certificate(self) -> x509.Certificate | None:
        if self.value is None:
            return None
        try:
            return x509.load_der_x509_certificate(self.value)
        except ValueError:
            raise BadDataFormat("malformed certificate in InfoTypeAndValue") from None

    def as_time(self) -> _dt.datetime:
        if self.value is None:
            raise BadDataFormat("InfoTypeAndValue without value")
        return _asn1.gentime_to_datetime(_asn1.decode(self.value, rfc9480.ConfirmWaitTimeValue(), what="time"))

    @classmethod
    def from_asn1(cls, value: Any) -> InfoTypeAndValue:
        oid = x509.ObjectIdentifier(_asn1.oid_str(value["infoType"]))
        raw = bytes(value["infoValue"]) if _asn1.present(value, "infoValue") else None
        return cls(oid, raw)

    def to_asn1(self) -> Any:
        out = rfc9480.InfoTypeAndValue()
        out["infoType"] = univ.ObjectIdentifier(self.info_type.dotted_string)
        if self.value is not None:
            out["infoValue"] = univ.Any(self.value)
        return out


@functools.lru_cache(maxsize=1)
def _implicit_confirm_itav() -> InfoTypeAndValue:
    return InfoTypeAndValue.of(InfoType.IMPLICIT_CONFIRM, _asn1.encode(univ.Null("")))


@functools.lru_cache(maxsize=16)
def _confirm_wait_time_itav(when: _dt.datetime) -> InfoTypeAndValue:
    return InfoTypeAndValue.of(InfoType.CONFIRM_WAIT_TIME, _asn1.encode(_asn1.gentime_from_datetime(when)))


@dataclasses.dataclass(frozen=True)
class CertId:
    issuer: x509.GeneralName
    serial_number: int

    @classmethod
    def for_certificate(cls, cert: x509.Certificate) -> CertId:
        return cls(x509.DirectoryName(cert.issuer), cert.serial_number)

    @classmethod
    def from_asn1(cls, value: Any) -> CertId:
        return cls(_asn1.general_name_to_x509(value["issuer"]), int(value["serialNumber"]))

    def to_asn1(self, spec: Any = None) -> Any:
        out = (spec if spec is not None else rfc4211.CertId()).clone()
        out["issuer"] = _asn1.general_name_from_x509(self.issuer)
        out["serialNumber"] = self.serial_number
        return out


# ---- header ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PKIHeader:
    """PKIHeader (RFC 4210 §5.1.1). sender/recipient are GeneralNames (usually DirectoryName)."""

    sender: x509.GeneralName
    recipient: x509.GeneralName
    pvno: int = 2
    message_time: _dt.datetime | None = None
    protection_alg: ProtectionAlgorithm | None = None
    sender_kid: bytes | None = None
    recip_kid: bytes | None = None
    transaction_id: bytes | None = None
    sender_nonce: bytes | None = None
    recip_nonce: bytes | None = None
    free_text: tuple[str, ...] = ()
    general_info: tuple[InfoTypeAndValue, ...] = ()

    @property
    def sender_name(self) -> x509.Name | None:
        return self.sender.value if isinstance(self.sender, x509.DirectoryName) else None

    @property
    def recipient_name(self) -> x509.Name | None:
        return self.recipient.value if isinstance(self.recipient, x509.DirectoryName) else None

    def info(self, kind: InfoType) -> InfoTypeAndValue | None:
        for itav in self.general_info:
            if itav.info_type.dotted_string == kind.value:
                return itav
        return None

    @property
    def implicit_confirm(self) -> bool:
        return self.info(InfoType.IMPLICIT_CONFIRM) is not None

    @property
    def confirm_wait_time(self) -> _dt.datetime | None:
        itav = self.info(InfoType.CONFIRM_WAIT_TIME)
        return itav.as_time() if itav is not None else None

    @classmethod
    def from_asn1(cls, value: Any) -> PKIHeader:
        """From a pyasn1 PKIHeader, or from one decoded with :data:`LEAN_HEADER_SPEC` (then the
        result is not cached as a pyasn1 value: :meth:`to_asn1` decodes the remembered DER)."""
        def opt_octets(name: str) -> bytes | None:
            return _asn1.octets(value[name]) if _asn1.present(value, name) else None

        def party(name: str) -> x509.GeneralName:
            v = value[name]
            if isinstance(v, univ.Any):  # lean spec: the GeneralName's DER as received
                return _asn1.general_name_from_der(bytes(v))
            return _asn1.general_name_to_x509(v)

        lean = isinstance(value["sender"], univ.Any)
        hdr = cls(
            pvno=int(value["pvno"]),
            sender=party("sender"),
            recipient=party("recipient"),
            message_time=_asn1.gentime_to_datetime(value["messageTime"]) if _asn1.present(value, "messageTime") else None,
            protection_alg=(_protection_alg_from_der(bytes(value["protectionAlg"])) if lean
                            else algorithm_from_asn1(value["protectionAlg"]))
            if _asn1.present(value, "protectionAlg") else None,
            sender_kid=opt_octets("senderKID"),
            recip_kid=opt_octets("recipKID"),
            transaction_id=opt_octets("transactionID"),
            sender_nonce=opt_octets("senderNonce"),
            recip_nonce=opt_octets("recipNonce"),
            free_text=_asn1.free_text(value["freeText"]) if _asn1.present(value, "freeText") else (),
            general_info=(_general_info_from_der(bytes(value["generalInfo"])) if lean
                          else tuple(InfoTypeAndValue.from_asn1(i) for i in value["generalInfo"]))
            if _asn1.present(value, "generalInfo") else (),
        )
        if lean:
            return hdr
        return _cached(hdr, value)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, der: bytes) -> PKIHeader:
        """A PKIHeader from its DER (names go straight to cryptography, no pyasn1 pass over them);
        :meth:`to_der` of the result returns ``der``."""
        hdr = cls.from_asn1(_asn1.decode(der, LEAN_HEADER_SPEC.clone(), what="PKIHeader"))
        object.__setattr__(hdr, "_der", der)
        return hdr

    def to_der(self) -> bytes:
        """DER of this header: the received bytes of a decoded header; otherwise encoded once,
        component by component (constant components - names, protectionAlg, generalInfo - from
        small caches), which is byte-identical to encoding :meth:`to_asn1`."""
        der: bytes | None = getattr(self, "_der", None)
        if der is not None:
            return der
        parts = [_pvno_der(self.pvno), _asn1.general_name_der(self.sender), _asn1.general_name_der(self.recipient)]
        if self.message_time is not None:
            parts.append(_message_time_der(self.message_time))
        if self.protection_alg is not None:
            parts.append(_protection_alg_der(self.protection_alg))
        for name, val in (("senderKID", self.sender_kid), ("recipKID", self.recip_kid),
                          ("transactionID", self.transaction_id), ("senderNonce", self.sender_nonce),
                          ("recipNonce", self.recip_nonce)):
            if val is not None:
                parts.append(_asn1.encode(_HEADER_SLOTS[name].clone(val)))
        if self.free_text:
            parts.append(_asn1.encode(_asn1.free_text_into(self.free_text, _HEADER_SLOTS["freeText"])))
        if self.general_info:
            parts.append(_general_info_der(self.general_info))
        der = _asn1.raw_sequence_der(*parts)
        object.__setattr__(self, "_der", der)
        return der

    def to_asn1(self) -> Any:
        cached = _from_cache(self)
        if cached is not None:
            return cached
        der: bytes | None = getattr(self, "_der", None)
        if der is not None:  # decoded (lean) or already encoded: the exact same value
            value = _asn1.decode(der, rfc9480.PKIHeader(), what="PKIHeader")
            _cached(self, value)
            return value
        h = rfc9480.PKIHeader()
        h["pvno"] = self.pvno
        h["sender"] = _asn1.general_name_from_x509(self.sender)
        h["recipient"] = _asn1.general_name_from_x509(self.recipient)
        if self.message_time is not None:
            h["messageTime"] = _asn1.gentime_from_datetime(self.message_time, _asn1.slot(h, "messageTime"))
        if self.protection_alg is not None:
            h["protectionAlg"] = algorithm_to_asn1(self.protection_alg, _asn1.slot(h, "protectionAlg"))
        for name, val in (("senderKID", self.sender_kid), ("recipKID", self.recip_kid),
                          ("transactionID", self.transaction_id), ("senderNonce", self.sender_nonce),
                          ("recipNonce", self.recip_nonce)):
            if val is not None:
                h[name] = _asn1.slot(h, name).clone(val)
        if self.free_text:
            h["freeText"] = _asn1.free_text_into(self.free_text, _asn1.slot(h, "freeText"))
        if self.general_info:
            gi = _asn1.slot(h, "generalInfo")
            for itav in self.general_info:
                gi.append(itav.to_asn1())
            h["generalInfo"] = gi
        _cached(self, h)  # built once per (immutable) header: protection and encoding both need it
        return h


def _lean_sequence(spec: Any, replace: dict[str, Any]) -> Any:
    """A SEQUENCE type like ``spec`` whose components named in ``replace`` have other types
    (e.g. ``univ.Any`` for a component that is only needed as DER)."""
    from pyasn1.type import namedtype

    fields = []
    for nt in spec.componentType.namedTypes:
        kind = namedtype.OptionalNamedType if nt.isOptional else \
            namedtype.DefaultedNamedType if nt.isDefaulted else namedtype.NamedType
        fields.append(kind(nt.name, replace.get(nt.name, nt.asn1Object)))
    lean = type("Lean" + type(spec).__name__, (univ.Sequence,), {
        "componentType": namedtype.NamedTypes(*fields), "tagSet": spec.tagSet, "subtypeSpec": spec.subtypeSpec})
    return lean()


class _TaggedAny(univ.Any):  # type: ignore[misc]
    """A context-tagged ``univ.Any`` that matches only its own tag (a plain Any also matches any
    tag by default, which makes several optional ones in one SEQUENCE ambiguous to pyasn1)."""

    @property
    def tagMap(self) -> Any:
        from pyasn1.type import tagmap

        return tagmap.TagMap({self.tagSet: self})


def _tagged_any(spec: Any, name: str) -> Any:
    """An Any with the tag of ``spec``'s (context-tagged) component ``name``: decodes to the
    component's content octets (for an EXPLICIT tag, the inner value's DER)."""
    from pyasn1.type import tag

    t = spec.componentType[name].asn1Object.tagSet.superTags[-1]
    return _TaggedAny().subtype(implicitTag=tag.Tag(t.tagClass, tag.tagFormatConstructed, t.tagId))


#: PKIHeader with sender and recipient (GeneralName CHOICEs) left as DER - a pyasn1 pass over a
#: distinguished name costs more than the rest of the header; cryptography parses them - and
#: protectionAlg and generalInfo as the DER inside their EXPLICIT tags, parsed through small
#: caches (the same values recur: a peer reusing its PBM salt, implicitConfirm).
LEAN_HEADER_SPEC: Final = _lean_sequence(rfc9480.PKIHeader(), {
    "sender": univ.Any(), "recipient": univ.Any(),
    "protectionAlg": _tagged_any(rfc9480.PKIHeader(), "protectionAlg"),
    "generalInfo": _tagged_any(rfc9480.PKIHeader(), "generalInfo")})
_HEADER_SLOTS: Final = {nt.name: nt.asn1Object for nt in rfc9480.PKIHeader().componentType.namedTypes}
# generalInfo's SEQUENCE OF InfoTypeAndValue without its [8] tag (the lean header strips it)
_GENERAL_INFO_SPEC: Final = univ.SequenceOf(
    componentType=rfc9480.InfoTypeAndValue(), subtypeSpec=_HEADER_SLOTS["generalInfo"].subtypeSpec)


@functools.lru_cache(maxsize=256)
def _protection_alg_from_der(der: bytes) -> ProtectionAlgorithm:
    return algorithm_from_asn1(_asn1.decode(der, rfc5280.AlgorithmIdentifier(), what="protectionAlg"))


@functools.lru_cache(maxsize=64)
def _general_info_from_der(der: bytes) -> tuple[InfoTypeAndValue, ...]:
    seq = _asn1.decode(der, _GENERAL_INFO_SPEC.clone(), what="generalInfo")
    return tuple(InfoTypeAndValue.from_asn1(i) for i in seq)


@functools.lru_cache(maxsize=8)
def _pvno_der(pvno: int) -> bytes:
    return _asn1.encode(_HEADER_SLOTS["pvno"].clone(pvno))


@functools.lru_cache(maxsize=16)
def _message_time_der(when: _dt.datetime) -> bytes:
    return _asn1.encode(_asn1.gentime_from_datetime(when, _HEADER_SLOTS["messageTime"]))


@functools.lru_cache(maxsize=64)
def _cached_alg_der(alg: ProtectionAlgorithm) -> bytes:
    return _asn1.encode(algorithm_to_asn1(alg, _HEADER_SLOTS["protectionAlg"]))


def _protection_alg_der(alg: ProtectionAlgorithm) -> bytes:
    try:
        return _cached_alg_der(alg)  # a server reuses its response salt: the same PBM parameters
    except TypeError:  # unhashable parameters
        return _asn1.encode(algorithm_to_asn1(alg, _HEADER_SLOTS["protectionAlg"]))


@functools.lru_cache(maxsize=64)
def _general_info_der(items: tuple[InfoTypeAndValue, ...]) -> bytes:
    gi = _HEADER_SLOTS["generalInfo"].clone()
    for itav in items:
        gi.append(itav.to_asn1())
    return _asn1.encode(gi)


# ---- CRMF -----------------------------------------------------------------------------------

def _template_validity(value: Any) -> tuple[_dt.datetime | None, _dt.datetime | None]:
    """A CertTemplate's notBefore / notAfter; BadDataFormat for the fields RFC 4211 5 forbids here."""
    p = _asn1.present
    nb = na = None
    if p(value, "validity"):
        v = value["validity"]
        nb = _asn1.time_to_datetime(v["notBefore"]) if p(v, "notBefore") else None
        na = _asn1.time_to_datetime(v["notAfter"]) if p(v, "notAfter") else None
    if p(value, "signingAlg") or p(value, "issuerUID") or p(value, "subjectUID"):
        raise BadDataFormat("CertTemplate must not carry signingAlg, issuerUID or subjectUID")
    return nb, na


@dataclasses.dataclass(frozen=True)
class CertTemplate:
    """CRMF CertTemplate (RFC 4211 §5) with cryptography types; every field optional."""

    subject: x509.Name | None = None
    public_key: PublicKeyTypes | None = None
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    not_before: _dt.datetime | None = None
    not_after: _dt.datetime | None = None
    issuer: x509.Name | None = None
    serial_number: int | None = None
    version: int | None = None

    def extension(self, ext_type: type[E]) -> E | None:
        """The value of the requested extension of ``ext_type``, or None."""
        for ext in self.extensions:
            if isinstance(ext.value, ext_type):
                return ext.value
        return None

    @classmethod
    def from_asn1(cls, value: Any) -> CertTemplate:
        p = _asn1.present
        nb, na = _template_validity(value)
        tpl = cls(
            subject=_asn1.name_to_x509(value["subject"]) if p(value, "subject") else None,
            public_key=_asn1.spki_to_key(value["publicKey"]) if p(value, "publicKey") else None,
            extensions=tuple(_asn1.extensions_to_x509(value["extensions"])) if p(value, "extensions") else (),
            not_before=nb,
            not_after=na,
            issuer=_asn1.name_to_x509(value["issuer"]) if p(value, "issuer") else None,
            serial_number=int(value["serialNumber"]) if p(value, "serialNumber") else None,
            version=int(value["version"]) if p(value, "version") else None,
        )
        return _cached(tpl, value)  # type: ignore[no-any-return]

    @classmethod
    def from_lean(cls, value: Any) -> CertTemplate:
        """From a value of :data:`LEAN_TEMPLATE_SPEC`: names, key and extensions as DER, handed to
        cryptography directly (no pyasn1 pass over them). Same checks and errors as
        :meth:`from_asn1`; the result is encoded from its typed fields."""
        p = _asn1.present
        nb, na = _template_validity(value)
        # [5] subject / [3] issuer are EXPLICIT (Name is a CHOICE): the content is the Name's DER;
        # [6] publicKey / [9] extensions are IMPLICIT: the content is that of the SEQUENCE
        return cls(
            subject=_asn1.name_from_der(bytes(value["subject"])) if p(value, "subject") else None,
            public_key=_asn1.spki_der_to_key(_asn1.raw_sequence_der(bytes(value["publicKey"])))
            if p(value, "publicKey") else None,
            extensions=tuple(_asn1.extensions_from_der(_asn1.raw_sequence_der(bytes(value["extensions"]))))
            if p(value, "extensions") else (),
            not_before=nb,
            not_after=na,
            issuer=_asn1.name_from_der(bytes(value["issuer"])) if p(value, "issuer") else None,
            serial_number=int(value["serialNumber"]) if p(value, "serialNumber") else None,
            version=int(value["version"]) if p(value, "version") else None,
        )

    def to_asn1(self, spec: Any = None) -> Any:
        cached = _from_cache(self)
        out = (spec if spec is not None else rfc4211.CertTemplate()).clone()
        if cached is not None:
            return _asn1.retag(cached, out)
        if self.version is not None:
            out["version"] = self.version
        if self.serial_number is not None:
            out["serialNumber"] = self.serial_number
        if self.issuer is not None:
            out["issuer"] = _asn1.name_from_x509(self.issuer, _asn1.slot(out, "issuer"))
        if self.not_before is not None or self.not_after is not None:
            v = _asn1.slot(out, "validity")
            if self.not_before is not None:
                v["notBefore"] = _asn1.time_from_datetime(self.not_before, _asn1.slot(v, "notBefore"))
            if self.not_after is not None:
                v["notAfter"] = _asn1.time_from_datetime(self.not_after, _asn1.slot(v, "notAfter"))
            out["validity"] = v
        if self.subject is not None:
            out["subject"] = _asn1.name_from_x509(self.subject, _asn1.slot(out, "subject"))
        if self.public_key is not None:
            out["publicKey"] = _asn1.key_to_spki(self.public_key, _asn1.slot(out, "publicKey"))
        if self.extensions:
            out["extensions"] = _asn1.extensions_from_x509(self.extensions, _asn1.slot(out, "extensions"))
        return out


@dataclasses.dataclass(frozen=True)
class ProofOfPossession:
    """ProofOfPossession. For ``SIGNATURE``: the algorithm, signature and, when the template lacked
    subject or key, the DER of POPOSigningKeyInput (then the signature is over that)."""

    kind: PopKind
    algorithm: ProtectionAlgorithm | None = None
    signature: bytes | None = None
    signing_key_input: bytes | None = None

    @classmethod
    def from_asn1(cls, value: Any) -> ProofOfPossession:
        kind = PopKind(value.getName())
        if kind is not PopKind.SIGNATURE:
            return _cached(cls(kind), value)  # type: ignore[no-any-return]
        sk = value["signature"]
        inp = _asn1.encode(_asn1.retag(sk["poposkInput"], rfc4211.POPOSigningKeyInput())) \
            if _asn1.present(sk, "poposkInput") else None
        pop = cls(kind, algorithm_from_asn1(sk["algorithmIdentifier"]), _asn1.octets(sk["signature"]), inp)
        return _cached(pop, value)  # type: ignore[no-any-return]

    def to_asn1(self) -> Any:
        cached = _from_cache(self)
        if cached is not None:
            return cached
        out = rfc4211.ProofOfPossession()
        if self.kind is PopKind.RA_VERIFIED:
            out["raVerified"] = _asn1.slot(out, "raVerified").clone("")
            return out
        if self.kind is not PopKind.SIGNATURE:
            raise ValueError(f"building {self.kind.value} POP is not supported")
        if self.algorithm is None or self.signature is None:
            raise ValueError("signature POP needs algorithm and signature")
        sk = _asn1.slot(out, "signature")
        if self.signing_key_input is not None:
            inp = _asn1.decode(self.signing_key_input, rfc4211.POPOSigningKeyInput(), what="POPOSigningKeyInput")
            sk["poposkInput"] = _asn1.retag(inp, _asn1.slot(sk, "poposkInput"))
        sk["algorithmIdentifier"] = algorithm_to_asn1(self.algorithm)
        sk["signature"] = univ.BitString.fromOctetString(self.signature)
        out["signature"] = sk
        return out


@dataclasses.dataclass(frozen=True)
class Control:
    """A CRMF control or regInfo entry (AttributeTypeAndValue) with its DER value."""

    type: x509.ObjectIdentifier
    value: bytes

    @classmethod
    def old_cert_id(cls, cert_id: CertId) -> Control:
        return cls(x509.ObjectIdentifier(_OLD_CERT_ID_OID), _asn1.encode(cert_id.to_asn1(rfc4211.OldCertId())))


@dataclasses.dataclass(frozen=True)
class CertReqMsg:
    """One CertReqMsg: certReqId, template, controls, POP."""

    cert_req_id: int
    template: CertTemplate
    popo: ProofOfPossession | None = None
    controls: tuple[Control, ...] = ()
    reg_info: tuple[Control, ...] = ()

    @property
    def old_cert_id(self) -> CertId | None:
        for c in self.controls:
            if c.type.dotted_string == _OLD_CERT_ID_OID:
                return CertId.from_asn1(_asn1.decode(c.value, rfc4211.OldCertId(), what="oldCertID"))
        return None

    def cert_request_asn1(self) -> Any:
        cached = _from_cache(self)
        if cached is not None:
            return cached["certReq"]
        der: bytes | None = getattr(self, "_cert_request_der", None)
        if der is not None:
            return _asn1.decode(der, rfc4211.CertRequest(), what="CertRequest")
        cr = rfc4211.CertRequest()
        cr["certReqId"] = self.cert_req_id
        cr["certTemplate"] = self.template.to_asn1(rfc4211.CertTemplate())
        if self.controls:
            ctl = cr["controls"]  # filled in place: rfc4211.Controls' sizeSpec defeats re-assignment
            for c in self.controls:
                a = rfc4211.AttributeTypeAndValue()
                a["type"] = univ.ObjectIdentifier(c.type.dotted_string)
                a["value"] = univ.Any(c.value)
                ctl.append(a)
        return cr

    @property
    def cert_request_der(self) -> bytes:
        """DER of the CertRequest - what a signature POP signs (RFC 4211 §4.1); the received bytes
        of a decoded request."""
        der: bytes | None = getattr(self, "_cert_request_der", None)
        if der is not None:
            return der
        return _asn1.encode(self.cert_request_asn1())

    @classmethod
    def from_lean(cls, value: Any) -> CertReqMsg:
        """From a value of :data:`LEAN_CERT_REQ_MSG_SPEC`: certReq arrives as DER (kept: the POP is
        verified over exactly these bytes) and is decoded with the lean template."""
        cr_der = bytes(value["certReq"])
        cr = _asn1.decode(cr_der, LEAN_CERT_REQUEST_SPEC.clone(), what="CertRequest")
        msg = cls._from_parts(value, cr, CertTemplate.from_lean(cr["certTemplate"]))
        object.__setattr__(msg, "_cert_request_der", cr_der)
        return msg

    @classmethod
    def _from_parts(cls, value: Any, cr: Any, template: CertTemplate) -> CertReqMsg:
        def attrs(seq: Any) -> tuple[Control, ...]:
            return tuple(Control(x509.ObjectIdentifier(_asn1.oid_str(a["type"])), bytes(a["value"])) for a in seq)

        return cls(
            cert_req_id=int(cr["certReqId"]),
            template=template,
            popo=ProofOfPossession.from_asn1(value["popo"]) if _asn1.present(value, "popo") else None,
            controls=attrs(cr["controls"]) if _asn1.present(cr, "controls") else (),
            reg_info=attrs(value["regInfo"]) if _asn1.present(value, "regInfo") else (),
        )

    @classmethod
    def from_asn1(cls, value: Any) -> CertReqMsg:
        cr = value["certReq"]
        msg = cls._from_parts(value, cr, CertTemplate.from_asn1(cr["certTemplate"]))
        return _cached(msg, value)  # type: ignore[no-any-return]

    def to_asn1(self) -> Any:
        cached = _from_cache(self)
        if cached is not None:
            return cached
        out = rfc4211.CertReqMsg()
        out["certReq"] = self.cert_request_asn1()
        if self.popo is not None:
            out["popo"] = self.popo.to_asn1()
        if self.reg_info:
            ri = _asn1.slot(out, "regInfo")
            for c in self.reg_info:
                a = rfc4211.AttributeTypeAndValue()
                a["type"] = univ.ObjectIdentifier(c.type.dotted_string)
                a["value"] = univ.Any(c.value)
                ri.append(a)
            out["regInfo"] = ri
        return out


#: CertTemplate with issuer/subject/publicKey/extensions left as DER (cryptography parses them).
LEAN_TEMPLATE_SPEC: Final = _lean_sequence(rfc4211.CertTemplate(), {
    n: _tagged_any(rfc4211.CertTemplate(), n) for n in ("issuer", "subject", "publicKey", "extensions")})
LEAN_CERT_REQUEST_SPEC: Final = _lean_sequence(rfc4211.CertRequest(), {"certTemplate": LEAN_TEMPLATE_SPEC})
#: CertReqMsg with certReq as DER: the POP signs exactly those bytes, no re-encoding needed.
LEAN_CERT_REQ_MSG_SPEC: Final = _lean_sequence(rfc4211.CertReqMsg(), {"certReq": univ.Any()})


def _lean_choice(spec: Any, replace: dict[str, Any]) -> Any:
    """A CHOICE type like ``spec`` whose alternatives named in ``replace`` have other types."""
    from pyasn1.type import namedtype

    fields = [namedtype.NamedType(nt.name, replace.get(nt.name, nt.asn1Object)) for nt in spec.componentType.namedTypes]
    lean = type("Lean" + type(spec).__name__, (univ.Choice,), {
        "componentType": namedtype.NamedTypes(*fields), "tagSet": spec.tagSet, "subtypeSpec": spec.subtypeSpec})
    return lean()


def _sequence_of(component: Any, like: Any) -> Any:
    """SEQUENCE OF ``component`` with the tags and size constraint of ``like``."""
    return univ.SequenceOf(componentType=component, tagSet=like.tagSet, subtypeSpec=like.subtypeSpec)


_CRM_SLOTS = {nt.name: nt.asn1Object for nt in rfc9480.CertRepMessage().componentType.namedTypes}
#: CertResponse whose certificate (certOrEncCert's [0] alternative) is left as its DER for
#: cryptography (a pyasn1 pass over a certificate is the slowest part of reading an ip/cp/kup).
LEAN_CERT_RESPONSE_SPEC: Final = _lean_sequence(rfc9480.CertResponse(), {
    "certifiedKeyPair": _lean_sequence(rfc9480.CertifiedKeyPair(), {
        "certOrEncCert": _lean_choice(rfc9480.CertOrEncCert(), {
            "certificate": _tagged_any(rfc9480.CertOrEncCert(), "certificate")})})})
#: CertRepMessage with caPubs as DER and :data:`LEAN_CERT_RESPONSE_SPEC` responses.
LEAN_CERT_REP_SPEC: Final = _lean_sequence(rfc9480.CertRepMessage(), {
    "caPubs": _sequence_of(univ.Any(), _CRM_SLOTS["caPubs"]),
    "response": _sequence_of(LEAN_CERT_RESPONSE_SPEC, _CRM_SLOTS["response"])})


def _lean_body_spec() -> Any:
    """PKIBody with the ir/cr/kur alternatives made of :data:`LEAN_CERT_REQ_MSG_SPEC` and the
    ip/cp/kup ones of :data:`LEAN_CERT_REP_SPEC` (same tags)."""
    spec = rfc9480.PKIBody()
    replace = {}
    for nt in spec.componentType.namedTypes:
        obj = nt.asn1Object
        if nt.name in ("ir", "cr", "kur"):
            replace[nt.name] = _sequence_of(LEAN_CERT_REQ_MSG_SPEC, obj)
        elif nt.name in ("ip", "cp", "kup"):
            replace[nt.name] = LEAN_CERT_REP_SPEC.clone(tagSet=obj.tagSet)
    return _lean_choice(spec, replace)


# ---- bodies ---------------------------------------------------------------------------------

class Body:
    """Base of typed PKIBody contents. Subclasses are frozen dataclasses registered per BodyType."""

    body_type: ClassVar[BodyType]

    @classmethod
    def from_asn1(cls: type[B], value: Any) -> B:
        raise NotImplementedError

    def content_asn1(self, spec: Any) -> Any:
        """The body content as a value of ``spec`` (the tagged PKIBody alternative)."""
        raise NotImplementedError

    def to_der(self) -> bytes:
        """DER of the PKIBody holding this content (built once; see :meth:`content_der`)."""
        der: bytes | None = getattr(self, "_body_der", None)
        if der is None:
            content = self.content_der()
            if content is None:
                der = _asn1.encode(self.to_asn1())
            else:
                der = _asn1.explicit_der(_BODY_SLOTS[self.body_type.asn1_name], content)
            object.__setattr__(self, "_body_der", der)
        return der

    def content_der(self) -> bytes | None:
        """DER of the body content composed from pre-encoded parts, or None (then the content is
        encoded as one pyasn1 value). Must equal the pyasn1 encoding byte for byte."""
        return None

    def to_asn1(self) -> Any:
        body = rfc9480.PKIBody()
        cached = _from_cache(self)
        name = self.body_type.asn1_name
        if cached is None:
            cached = self.content_asn1(_asn1.slot(body, name))
            _cached(self, cached)  # built once per (immutable) body
        body[name] = cached
        return body


B = TypeVar("B", bound=Body)

#: BodyType → typed body class; decoding dispatches through this table.
BODY_TYPES: dict[BodyType, type[Body]] = {}


def register(cls: type[B]) -> type[B]:
    BODY_TYPES[cls.body_type] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class CertReqMessagesBody(Body):
    requests: tuple[CertReqMsg, ...]

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        if len(value) < 1:
            raise BadDataFormat("CertReqMessages must not be empty")
        if isinstance(value.componentType, type(LEAN_CERT_REQ_MSG_SPEC)):  # lean: built from typed values
            return cls(tuple(CertReqMsg.from_lean(m) for m in value))
        return _cached(cls(tuple(CertReqMsg.from_asn1(m) for m in value)), value)

    def content_asn1(self, spec: Any) -> Any:
        for r in self.requests:
            spec.append(r.to_asn1())
        return spec


@register
@dataclasses.dataclass(frozen=True)
class IrBody(CertReqMessagesBody):
    body_type: ClassVar[BodyType] = BodyType.IR


@register
@dataclasses.dataclass(frozen=True)
class CrBody(CertReqMessagesBody):
    body_type: ClassVar[BodyType] = BodyType.CR


@register
@dataclasses.dataclass(frozen=True)
class KurBody(CertReqMessagesBody):
    body_type: ClassVar[BodyType] = BodyType.KUR


@register
@dataclasses.dataclass(frozen=True)
class P10crBody(Body):
    body_type: ClassVar[BodyType] = BodyType.P10CR
    csr: x509.CertificateSigningRequest

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        from pyasn1_alt_modules import rfc2986

        der = _asn1.encode(_asn1.retag(value, rfc2986.CertificationRequest()))
        try:
            csr = x509.load_der_x509_csr(der)
            csr.subject  # noqa: B018 - force parsing now
        except ValueError:
            raise BadDataFormat("malformed PKCS#10 request") from None
        return _cached(cls(csr), value)

    def content_asn1(self, spec: Any) -> Any:
        from pyasn1_alt_modules import rfc2986

        plain = _asn1.decode(self.csr.public_bytes(serialization.Encoding.DER), rfc2986.CertificationRequest(),
                             what="PKCS#10 request")
        return _asn1.retag(plain, spec)


@dataclasses.dataclass(frozen=True)
class CertResponse:
    cert_req_id: int
    status: PKIStatusInfo
    certificate: x509.Certificate | None = None
    rsp_info: bytes | None = None

    @classmethod
    def from_asn1(cls, value: Any) -> CertResponse:
        """From a pyasn1 CertResponse or a :data:`LEAN_CERT_RESPONSE_SPEC` value (the certificate
        as DER; then the result is encoded from its typed fields)."""
        cert = None
        lean = isinstance(value, type(LEAN_CERT_RESPONSE_SPEC))
        if _asn1.present(value, "certifiedKeyPair"):
            ckp = value["certifiedKeyPair"]
            coe = ckp["certOrEncCert"]
            if coe.getName() != "certificate":
                raise BadRequest("encrypted certificates are not supported")
            cert = _asn1.cert_from_der(bytes(coe["certificate"])) if lean else _asn1.cert_to_x509(coe["certificate"])
        out = cls(
            cert_req_id=int(value["certReqId"]),
            status=PKIStatusInfo.from_asn1(value["status"]),
            certificate=cert,
            rsp_info=_asn1.octets(value["rspInfo"]) if _asn1.present(value, "rspInfo") else None,
        )
        return out if lean else _cached(out, value)

    def to_asn1(self) -> Any:
        cached = _from_cache(self)
        if cached is not None:
            return cached
        out = rfc9480.CertResponse()
        out["certReqId"] = self.cert_req_id
        out["status"] = self.status.to_asn1()
        if self.certificate is not None:
            ckp = _asn1.slot(out, "certifiedKeyPair")
            coe = _asn1.slot(ckp, "certOrEncCert")
            _asn1.put_cert(coe, "certificate", self.certificate)
            ckp["certOrEncCert"] = coe
            out["certifiedKeyPair"] = ckp
        if self.rsp_info is not None:
            out["rspInfo"] = self.rsp_info
        return out


@functools.lru_cache(maxsize=64)
def _status_der(status: PKIStatusInfo) -> bytes:
    return _asn1.encode(status.to_asn1())


@functools.lru_cache(maxsize=64)
def _int_der(n: int) -> bytes:
    return _asn1.encode(univ.Integer(n))


_CERT_RESPONSE_SLOTS: Final = {nt.name: nt.asn1Object for nt in rfc9480.CertResponse().componentType.namedTypes}
_CERT_OR_ENC_CERT: Final = _CERT_RESPONSE_SLOTS["certifiedKeyPair"].componentType["certOrEncCert"].asn1Object \
    .componentType["certificate"].asn1Object
_CERT_REP_SLOTS: Final = {nt.name: nt.asn1Object for nt in rfc9480.CertRepMessage().componentType.namedTypes}


def _cert_response_der(r: CertResponse) -> bytes:
    """CertResponse from parts: cached certReqId and status, the certificate as its DER."""
    parts = [_int_der(r.cert_req_id), _status_der(r.status)]
    if r.certificate is not None:  # CertifiedKeyPair { certOrEncCert (CHOICE: no tag of its own) }
        parts.append(_asn1.raw_sequence_der(_asn1.cert_der_in(r.certificate, _CERT_OR_ENC_CERT)))
    if r.rsp_info is not None:
        parts.append(_asn1.encode(univ.OctetString(r.rsp_info)))
    return _asn1.raw_sequence_der(*parts)


@dataclasses.dataclass(frozen=True)
class CertRepMessageBody(Body):
    responses: tuple[CertResponse, ...]
    ca_pubs: tuple[x509.Certificate, ...] = ()

    def content_der(self) -> bytes | None:
        if _from_cache(self) is not None:  # decoded: its own value
            return None
        parts = []
        if self.ca_pubs:  # [1] EXPLICIT SEQUENCE OF CMPCertificate (a CHOICE: the certificates' DER)
            cmp_cert = _CERT_REP_SLOTS["caPubs"].componentType
            parts.append(_asn1.explicit_der(_CERT_REP_SLOTS["caPubs"], _asn1.raw_sequence_der(
                *(_asn1.cert_der_in(c, cmp_cert) for c in self.ca_pubs))))
        parts.append(_asn1.raw_sequence_der(*(_cert_response_der(r) for r in self.responses)))
        return _asn1.raw_sequence_der(*parts)

    def response_for(self, cert_req_id: int) -> CertResponse | None:
        for r in self.responses:
            if r.cert_req_id == cert_req_id:
                return r
        return None

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        if isinstance(value, type(LEAN_CERT_REP_SPEC)):  # certificates as DER: built from typed values
            ca_pubs = tuple(_asn1.cert_from_der(bytes(c)) for c in value["caPubs"]) \
                if _asn1.present(value, "caPubs") else ()
            return cls(tuple(CertResponse.from_asn1(r) for r in value["response"]), ca_pubs)
        ca_pubs = tuple(_asn1.cert_to_x509(c) for c in value["caPubs"]) if _asn1.present(value, "caPubs") else ()
        return _cached(cls(tuple(CertResponse.from_asn1(r) for r in value["response"]), ca_pubs), value)

    def content_asn1(self, spec: Any) -> Any:
        if self.ca_pubs:
            cp = _asn1.slot(spec, "caPubs")
            for c in self.ca_pubs:
                _asn1.put_cert(cp, None, c)
            spec["caPubs"] = cp
        resp = _asn1.slot(spec, "response")
        for r in self.responses:
            resp.append(r.to_asn1())
        spec["response"] = resp
        return spec


@register
@dataclasses.dataclass(frozen=True)
class IpBody(CertRepMessageBody):
    body_type: ClassVar[BodyType] = BodyType.IP


@register
@dataclasses.dataclass(frozen=True)
class CpBody(CertRepMessageBody):
    body_type: ClassVar[BodyType] = BodyType.CP


@register
@dataclasses.dataclass(frozen=True)
class KupBody(CertRepMessageBody):
    body_type: ClassVar[BodyType] = BodyType.KUP


@dataclasses.dataclass(frozen=True)
class CertStatus:
    cert_hash: bytes
    cert_req_id: int
    status_info: PKIStatusInfo | None = None
    hash_alg: x509.ObjectIdentifier | None = None

    @property
    def accepted(self) -> bool:
        return self.status_info is None or self.status_info.status in (PKIStatus.ACCEPTED,
                                                                        PKIStatus.GRANTED_WITH_MODS)


@register
@dataclasses.dataclass(frozen=True)
class CertConfBody(Body):
    body_type: ClassVar[BodyType] = BodyType.CERTCONF
    statuses: tuple[CertStatus, ...] = ()

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        out = []
        for s in value:
            out.append(CertStatus(
                cert_hash=_asn1.octets(s["certHash"]),
                cert_req_id=int(s["certReqId"]),
                status_info=PKIStatusInfo.from_asn1(s["statusInfo"]) if _asn1.present(s, "statusInfo") else None,
                hash_alg=x509.ObjectIdentifier(_asn1.oid_str(s["hashAlg"]["algorithm"]))
                if _asn1.present(s, "hashAlg") else None,
            ))
        return _cached(cls(tuple(out)), value)

    def content_asn1(self, spec: Any) -> Any:
        for st in self.statuses:
            s = rfc9480.CertStatus()
            s["certHash"] = st.cert_hash
            s["certReqId"] = st.cert_req_id
            if st.status_info is not None:
                s["statusInfo"] = st.status_info.to_asn1()
            if st.hash_alg is not None:
                ha = _asn1.slot(s, "hashAlg")
                ha["algorithm"] = univ.ObjectIdentifier(st.hash_alg.dotted_string)
                s["hashAlg"] = ha
            spec.append(s)
        return spec


@register
@dataclasses.dataclass(frozen=True)
class PkiConfBody(Body):
    body_type: ClassVar[BodyType] = BodyType.PKICONF

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        return _cached(cls(), value)

    def content_asn1(self, spec: Any) -> Any:
        return spec.clone("")


@dataclasses.dataclass(frozen=True)
class RevDetails:
    """One revocation request: the certificate (issuer + serial in the template) and reason."""

    template: CertTemplate
    reason: RevocationReason | None = None

    @property
    def serial_number(self) -> int | None:
        return self.template.serial_number

    @property
    def issuer(self) -> x509.Name | None:
        return self.template.issuer

    @classmethod
    def for_certificate(cls, cert: x509.Certificate, reason: RevocationReason | None = None) -> RevDetails:
        return cls(CertTemplate(issuer=cert.issuer, serial_number=cert.serial_number), reason)


@register
@dataclasses.dataclass(frozen=True)
class RrBody(Body):
    body_type: ClassVar[BodyType] = BodyType.RR
    requests: tuple[RevDetails, ...]

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        out = []
        if len(value) < 1:
            raise BadDataFormat("RevReqContent must not be empty")
        for d in value:
            reason = None
            if _asn1.present(d, "crlEntryDetails"):
                for ext in d["crlEntryDetails"]:
                    if _asn1.oid_str(ext["extnID"]) == _CRL_REASON_OID:
                        code = _asn1.decode(_asn1.octets(ext["extnValue"]), rfc5280.CRLReason(), what="CRLReason")
                        try:
                            reason = RevocationReason(int(code))
                        except ValueError:
                            raise BadDataFormat(f"unknown CRLReason {int(code)}") from None
                    elif bool(ext["critical"]):
                        raise BadRequest(f"unsupported critical CRL entry extension {_asn1.oid_str(ext['extnID'])}")
            out.append(RevDetails(CertTemplate.from_asn1(d["certDetails"]), reason))
        return _cached(cls(tuple(out)), value)

    def content_asn1(self, spec: Any) -> Any:
        for r in self.requests:
            d = rfc4210.RevDetails()
            d["certDetails"] = r.template.to_asn1(rfc4211.CertTemplate())
            if r.reason is not None:
                exts = rfc5280.Extensions()
                e = rfc5280.Extension()
                e["extnID"] = univ.ObjectIdentifier(_CRL_REASON_OID)
                e["critical"] = False
                e["extnValue"] = univ.OctetString(_asn1.encode(rfc5280.CRLReason(int(r.reason))))
                exts.append(e)
                d["crlEntryDetails"] = exts
            spec.append(d)
        return spec


@register
@dataclasses.dataclass(frozen=True)
class RpBody(Body):
    body_type: ClassVar[BodyType] = BodyType.RP
    statuses: tuple[PKIStatusInfo, ...]
    rev_certs: tuple[CertId, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        return _cached(cls(
            tuple(PKIStatusInfo.from_asn1(s) for s in value["status"]),
            tuple(CertId.from_asn1(c) for c in value["revCerts"]) if _asn1.present(value, "revCerts") else (),
            tuple(_asn1.crl_to_x509(c) for c in value["crls"]) if _asn1.present(value, "crls") else (),
        ), value)

    def content_asn1(self, spec: Any) -> Any:
        st = _asn1.slot(spec, "status")
        for s in self.statuses:
            st.append(s.to_asn1(rfc4210.PKIStatusInfo()))
        spec["status"] = st
        if self.rev_certs:
            rc = _asn1.slot(spec, "revCerts")
            for c in self.rev_certs:
                rc.append(c.to_asn1())
            spec["revCerts"] = rc
        if self.crls:
            cl = _asn1.slot(spec, "crls")
            for crl in self.crls:
                cl.append(_asn1.decode(crl.public_bytes(serialization.Encoding.DER), rfc5280.CertificateList(),
                                       what="CRL"))
            spec["crls"] = cl
        return spec


@dataclasses.dataclass(frozen=True)
class GenBody(Body):
    items: tuple[InfoTypeAndValue, ...] = ()

    def get(self, kind: InfoType) -> InfoTypeAndValue | None:
        for i in self.items:
            if i.info_type.dotted_string == kind.value:
                return i
        return None

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        return _cached(cls(tuple(InfoTypeAndValue.from_asn1(i) for i in value)), value)

    def content_asn1(self, spec: Any) -> Any:
        for i in self.items:
            spec.append(i.to_asn1())
        return spec


@register
@dataclasses.dataclass(frozen=True)
class GenmBody(GenBody):
    body_type: ClassVar[BodyType] = BodyType.GENM


@register
@dataclasses.dataclass(frozen=True)
class GenpBody(GenBody):
    body_type: ClassVar[BodyType] = BodyType.GENP


@register
@dataclasses.dataclass(frozen=True)
class PollReqBody(Body):
    body_type: ClassVar[BodyType] = BodyType.POLLREQ
    cert_req_ids: tuple[int, ...]

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        return _cached(cls(tuple(int(r["certReqId"]) for r in value)), value)

    def content_asn1(self, spec: Any) -> Any:
        for i in self.cert_req_ids:
            r = rfc4210.PollReqContent.CertReq()
            r["certReqId"] = i
            spec.append(r)
        return spec


@dataclasses.dataclass(frozen=True)
class PollRepEntry:
    cert_req_id: int
    check_after: int
    reason: tuple[str, ...] = ()


@register
@dataclasses.dataclass(frozen=True)
class PollRepBody(Body):
    body_type: ClassVar[BodyType] = BodyType.POLLREP
    entries: tuple[PollRepEntry, ...]

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        return _cached(cls(tuple(PollRepEntry(
            int(e["certReqId"]), int(e["checkAfter"]),
            _asn1.free_text(e["reason"]) if _asn1.present(e, "reason") else ()) for e in value)), value)

    def content_asn1(self, spec: Any) -> Any:
        for e in self.entries:
            item = spec.componentType.clone()
            item["certReqId"] = e.cert_req_id
            item["checkAfter"] = e.check_after
            if e.reason:
                item["reason"] = _asn1.free_text_into(e.reason, _asn1.slot(item, "reason"))
            spec.append(item)
        return spec


@register
@dataclasses.dataclass(frozen=True)
class ErrorBody(Body):
    body_type: ClassVar[BodyType] = BodyType.ERROR
    status_info: PKIStatusInfo
    error_code: int | None = None
    error_details: tuple[str, ...] = ()

    @classmethod
    def from_asn1(cls, value: Any) -> Any:
        return _cached(cls(
            PKIStatusInfo.from_asn1(value["pKIStatusInfo"]),
            int(value["errorCode"]) if _asn1.present(value, "errorCode") else None,
            _asn1.free_text(value["errorDetails"]) if _asn1.present(value, "errorDetails") else (),
        ), value)

    def content_asn1(self, spec: Any) -> Any:
        spec["pKIStatusInfo"] = self.status_info.to_asn1()
        if self.error_code is not None:
            spec["errorCode"] = self.error_code
        if self.error_details:
            spec["errorDetails"] = _asn1.free_text_into(self.error_details, _asn1.slot(spec, "errorDetails"))
        return spec


# ---- the message ----------------------------------------------------------------------------

_RAW_SEQUENCE = univ.SequenceOf(componentType=univ.Any())
LEAN_BODY_SPEC: Final = _lean_body_spec()
_BODY_SLOTS: Final = {nt.name: nt.asn1Object for nt in rfc9480.PKIBody().componentType.namedTypes}


_PROTECTION_SPEC = rfc9480.PKIMessage().componentType["protection"].asn1Object
_EXTRA_CERTS_SPEC = rfc9480.PKIMessage().componentType["extraCerts"].asn1Object
# extraCerts with each CMPCertificate left as DER (same tags and SIZE constraint)
_RAW_EXTRA_CERTS = univ.SequenceOf(componentType=univ.Any(), tagSet=_EXTRA_CERTS_SPEC.tagSet,
                                   subtypeSpec=_EXTRA_CERTS_SPEC.subtypeSpec)


def _decode_tail(rest: list[bytes]) -> tuple[bytes | None, tuple[x509.Certificate, ...]]:
    """The optional ``[0] protection`` and ``[1] extraCerts`` after header and body."""
    protection: bytes | None = None
    extra: tuple[x509.Certificate, ...] = ()
    if len(rest) == 2:
        protection = _asn1.octets(_asn1.decode(rest.pop(0), _PROTECTION_SPEC.clone(), what="protection"))
    elif rest:  # one of the two: the tags tell (a mismatch fails fast on this small spec)
        try:
            protection = _asn1.octets(_asn1.decode(rest[0], _PROTECTION_SPEC.clone(), what="protection"))
            rest.pop(0)
        except BadDataFormat:
            pass
    if rest:
        certs = _asn1.decode(rest.pop(0), _RAW_EXTRA_CERTS.clone(), what="extraCerts")
        extra = tuple(_asn1.cert_from_der(bytes(c)) for c in certs)
    return protection, extra




@dataclasses.dataclass(frozen=True)
class PKIMessage:
    """A CMP PKIMessage. ``protection`` is the raw BIT STRING content (MAC or signature)."""

    header: PKIHeader
    body: Body
    protection: bytes | None = None
    extra_certs: tuple[x509.Certificate, ...] = ()
    _der: bytes | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _protected_part: bytes | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    # DER of header and body once encoded for the protection, reused by encode() (built once)
    _parts: tuple[bytes, bytes] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def body_type(self) -> BodyType:
        return self.body.body_type

    @classmethod
    def decode(cls, der: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> PKIMessage:
        """Parse DER bytes. Raises BadDataFormat (malformed) or BadRequest (unsupported body type)."""
        if not isinstance(der, (bytes, bytearray, memoryview)):
            raise TypeError("der must be bytes")
        der = bytes(der)
        if len(der) > max_size:
            raise BadDataFormat(f"message of {len(der)} bytes exceeds {max_size}")
        try:
            return cls._decode(der)
        except CmpError:
            raise
        except RecursionError:
            raise BadDataFormat("message nested too deeply") from None
        except Exception as exc:  # the decoder's contract: only CmpError leaves escape
            raise BadDataFormat(f"malformed PKIMessage: {type(exc).__name__}") from None

    @classmethod
    def _decode(cls, der: bytes) -> PKIMessage:
        # Cheap structural pass first: pyasn1 formats the whole schema into its error messages, so
        # garbage is rejected here before the (expensive to fail) typed decode.
        raw = _asn1.decode(der, _RAW_SEQUENCE, what="PKIMessage")
        if not 2 <= len(raw) <= 4:
            raise BadDataFormat("PKIMessage must have 2 to 4 components")
        # header and body are decoded from their own slices (the protected part is exactly these
        # bytes); extraCerts go straight from their DER to cryptography, never through pyasn1 types
        header_der, body_der = bytes(raw[0]), bytes(raw[1])
        body_value = _asn1.decode(body_der, LEAN_BODY_SPEC.clone(), what="PKIBody")
        header_value = _asn1.decode(header_der, LEAN_HEADER_SPEC.clone(), what="PKIHeader")
        protection, extra = _decode_tail([bytes(x) for x in list(raw)[2:]])
        body_name = body_value.getName()
        try:
            btype = BodyType.from_asn1_name(body_name)
        except KeyError:
            raise BadDataFormat(f"unknown body {body_name!r}") from None
        body_cls = BODY_TYPES.get(btype)
        if body_cls is None:
            raise BadRequest(f"unsupported body type {body_name}")
        header = PKIHeader.from_asn1(header_value)
        object.__setattr__(header, "_der", header_der)
        body = body_cls.from_asn1(body_value[body_name])
        msg = cls(header=header, body=body, protection=protection, extra_certs=extra)
        object.__setattr__(msg, "_der", der)
        object.__setattr__(msg, "_parts", (header_der, body_der))
        object.__setattr__(msg, "_protected_part", _asn1.raw_sequence_der(header_der, body_der))
        return msg

    def protected_part(self) -> bytes:
        """DER of ProtectedPart ::= SEQUENCE {header, body} - exactly the received bytes if decoded."""
        if self._protected_part is not None:
            return self._protected_part
        header_der, body_der = self._encoded_parts()
        out = _asn1.raw_sequence_der(header_der, body_der)  # == DER of ProtectedPart{header, body}
        object.__setattr__(self, "_protected_part", out)
        return out

    def _encoded_parts(self) -> tuple[bytes, bytes]:
        if self._parts is None:
            object.__setattr__(self, "_parts", (self.header.to_der(), self.body.to_der()))
        assert self._parts is not None
        return self._parts

    def with_protection(self, protection: bytes) -> PKIMessage:
        """This (unprotected) message with ``protection`` added; header and body are encoded once."""
        out = PKIMessage(header=self.header, body=self.body, extra_certs=self.extra_certs, protection=protection)
        object.__setattr__(out, "_parts", self._encoded_parts())
        object.__setattr__(out, "_protected_part", self.protected_part())
        return out

    def to_asn1(self) -> Any:
        if self._der is not None:
            return _asn1.decode(self._der, rfc9480.PKIMessage(), what="PKIMessage")
        m = rfc9480.PKIMessage()
        m["header"] = self.header.to_asn1()
        m["body"] = self.body.to_asn1()
        if self.protection is not None:
            m["protection"] = _asn1.slot(m, "protection").clone(
                univ.BitString.fromOctetString(self.protection))
        if self.extra_certs:
            ec = _asn1.slot(m, "extraCerts")
            for c in self.extra_certs:
                _asn1.put_cert(ec, None, c)
            m["extraCerts"] = ec
        return m

    def encode(self) -> bytes:
        if self._der is not None:
            return self._der
        if self._parts is None:
            der = _asn1.encode(self.to_asn1())
        else:  # SEQUENCE {header, body, [0] protection, [1] extraCerts} from the already-encoded parts
            parts = list(self._parts)
            if self.protection is not None:
                parts.append(_asn1.encode(_PROTECTION_SPEC.clone(univ.BitString.fromOctetString(self.protection))))
            if self.extra_certs:  # [1] EXPLICIT SEQUENCE OF CMPCertificate: the certificates' DER
                cmp_cert = _EXTRA_CERTS_SPEC.componentType
                parts.append(_asn1.explicit_der(_EXTRA_CERTS_SPEC, _asn1.raw_sequence_der(
                    *(_asn1.cert_der_in(c, cmp_cert) for c in self.extra_certs))))
            der = _asn1.raw_sequence_der(*parts)
        object.__setattr__(self, "_der", der)
        return der

    def replace(self, **changes: Any) -> PKIMessage:
        """A copy with changed fields (encoded from the typed fields, not the received bytes)."""
        return dataclasses.replace(self, **changes)


def decode_header_lenient(der: bytes) -> PKIHeader | None:
    """Best-effort header of a message that failed to decode (to echo nonces in an error reply)."""
    try:
        if len(der) > MAX_MESSAGE_SIZE:
            return None
        raw = _asn1.decode(der, _RAW_SEQUENCE, what="PKIMessage")
        return PKIHeader.decode(bytes(raw[0]))
    except Exception:
        return None


def decode_message(der: bytes) -> PKIMessage:
    return PKIMessage.decode(der)


BodyFactory = Callable[[Any], Body]
