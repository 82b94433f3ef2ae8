"""Internal bridge between pyasn1-alt-modules values and cryptography's x509 types.

Nothing here writes DER by hand: pyasn1 encodes and decodes, cryptography parses names, general
names and extensions (through a throw-away PKCS#10 container whose signature is never checked,
because cryptography has no public parser for a bare Name or Extensions).
"""
from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Iterable
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pyasn1.codec.ber import encoder as ber_encoder
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import base, char, univ, useful
from pyasn1_alt_modules import rfc2985, rfc2986, rfc5280

from .errors import BadDataFormat, CmpError

T = TypeVar("T", bound=base.Asn1Item)

# An Ed25519 SubjectPublicKeyInfo algorithm has no parameters, so cryptography accepts the
# container without us having to supply a real key; the key is never loaded.
_ED25519 = univ.ObjectIdentifier("1.3.101.112")


def decode(der: bytes, spec: T, *, what: str = "value") -> T:
    """Strict DER decode: the whole input must be one value of ``spec``; errors → BadDataFormat."""
    try:
        value, rest = der_decoder.decode(der, asn1Spec=spec)
    except CmpError:
        raise
    except Exception as exc:  # pyasn1 raises many types on malformed input
        raise BadDataFormat(f"malformed {what}: {type(exc).__name__}") from None
    if rest:
        raise BadDataFormat(f"trailing data after {what}")
    return value  # type: ignore[no-any-return]


def encode(value: base.Asn1Item) -> bytes:
    try:
        return bytes(der_encoder.encode(value))
    except PyAsn1Error as exc:
        raise BadDataFormat(f"cannot encode {type(value).__name__}: {exc}") from None


def retag(src: Any, spec: T) -> T:
    """Copy ``src`` into a fresh value of ``spec`` (same structure, different tags).

    pyasn1 refuses to put an untagged value into an IMPLICIT/EXPLICIT tagged slot; this is the
    standard way round it (copy the components, not the bytes).
    """
    if isinstance(spec, univ.Choice):
        new = spec.clone()
        name = src.getName()
        new[name] = src.getComponent()
        return new  # type: ignore[no-any-return]
    if isinstance(spec, (univ.Sequence, univ.Set)):
        new = spec.clone()
        for name in src.componentType.keys():
            comp = src.getComponentByName(name, instantiate=False)
            if comp is not univ.noValue and comp.isValue:
                new[name] = comp
        return new  # type: ignore[no-any-return]
    if isinstance(spec, (univ.SequenceOf, univ.SetOf)):
        new = spec.clone()
        for item in src:
            new.append(item)
        return new  # type: ignore[no-any-return]
    return spec.clone(src)  # type: ignore[no-any-return]


def slot(container: Any, name: str) -> Any:
    """A fresh, empty value of the (possibly tagged) type of ``container``'s component ``name``."""
    return container.componentType[name].asn1Object.clone()


def present(container: Any, name: str) -> bool:
    comp = container.getComponentByName(name, instantiate=False)
    return comp is not univ.noValue and bool(comp.isValue)


# ---- x509 bridge via a throw-away CSR --------------------------------------------------------

def _fake_csr(subject: Any | None = None, extensions_der: bytes | None = None) -> x509.CertificateSigningRequest:
    cri = rfc2986.CertificationRequestInfo()
    cri["version"] = 0
    if subject is not None:
        cri["subject"] = subject
    else:
        cri["subject"]["rdnSequence"] = rfc5280.RDNSequence()
    cri["subjectPKInfo"]["algorithm"]["algorithm"] = _ED25519
    cri["subjectPKInfo"]["subjectPublicKey"] = univ.BitString.fromOctetString(bytes(32))
    cri["attributes"] = slot(cri, "attributes")
    if extensions_der is not None:
        attr = rfc2986.Attribute()
        attr["type"] = rfc2985.pkcs_9_at_extensionRequest
        attr["values"].append(univ.Any(extensions_der))
        cri["attributes"].append(attr)
    csr = rfc2986.CertificationRequest()
    csr["certificationRequestInfo"] = cri
    csr["signatureAlgorithm"]["algorithm"] = _ED25519
    csr["signature"] = univ.BitString.fromOctetString(b"")
    return x509.load_der_x509_csr(encode(csr))


def name_to_x509(value: Any) -> x509.Name:
    """pyasn1 Name (tagged or not) → cryptography Name (cached by DER: the same names recur)."""
    try:
        plain = retag(value, rfc5280.Name())
        return _name_from_der(encode(plain))
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed Name: {type(exc).__name__}") from None


@functools.lru_cache(maxsize=512)
def _name_from_der(der: bytes) -> x509.Name:
    return _fake_csr(subject=decode(der, rfc5280.Name(), what="Name")).subject


@functools.lru_cache(maxsize=256)
def _plain_name(der: bytes) -> Any:
    return decode(der, rfc5280.Name(), what="Name")


def name_from_x509(name: x509.Name, spec: Any = None) -> Any:
    """cryptography Name → pyasn1 Name (decoded values are cached: a server names the same CA in
    every response). The result is shared; treat it as read-only."""
    plain = _plain_name(name.public_bytes())
    return plain if spec is None else retag(plain, spec)


def name_from_der(der: bytes) -> x509.Name:
    """DER of a Name (as received) → cryptography Name, cached like :func:`name_to_x509`."""
    try:
        return _name_from_der(der)
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed Name: {type(exc).__name__}") from None


def extensions_from_der(der: bytes) -> x509.Extensions:
    """DER of Extensions (as received) → cryptography, like :func:`extensions_to_x509`."""
    try:
        return _fake_csr(extensions_der=der).extensions
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed or duplicate extensions: {type(exc).__name__}") from None


def extensions_to_x509(value: Any) -> x509.Extensions:
    try:
        plain = retag(value, rfc5280.Extensions())
        return _fake_csr(extensions_der=encode(plain)).extensions
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed or duplicate extensions: {type(exc).__name__}") from None


def extensions_from_x509(exts: Iterable[x509.Extension[x509.ExtensionType]], spec: Any = None) -> Any:
    out = rfc5280.Extensions() if spec is None else spec.clone()
    for ext in exts:
        e = rfc5280.Extension()
        e["extnID"] = univ.ObjectIdentifier(ext.oid.dotted_string)
        e["critical"] = ext.critical
        e["extnValue"] = univ.OctetString(ext.value.public_bytes())
        out.append(e)
    return out


def general_name_to_x509(value: Any) -> x509.GeneralName:
    """pyasn1 GeneralName → cryptography (cached by DER: senders and recipients recur)."""
    try:
        names = rfc5280.GeneralNames()
        names.append(value)
        return _general_name_from_der(encode(names))
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed or unsupported GeneralName: {type(exc).__name__}") from None


@functools.lru_cache(maxsize=512)
def _general_name_from_der(names_der: bytes) -> x509.GeneralName:
    ext = rfc5280.Extensions()
    e = rfc5280.Extension()
    e["extnID"] = rfc5280.id_ce_subjectAltName
    e["critical"] = False
    e["extnValue"] = univ.OctetString(names_der)
    ext.append(e)
    san = _fake_csr(extensions_der=encode(ext)).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(san.value)[0]


_RAW_SEQUENCE_OF = univ.SequenceOf(componentType=univ.Any())


_RELAXED = {"verifyConstraints": False, "matchTags": False, "matchConstraints": False}

# pyasn1's own writer of identifier and length octets (what its DER encoder uses for every TLV:
# definite, minimal lengths). Wrapping already-encoded content through it costs ~2 us instead of
# ~20 us for building and encoding a throw-away SEQUENCE OF ANY: the same bytes.
_TLV_WRITER: Final = ber_encoder.AbstractItemEncoder()
_SEQUENCE_TAG: Final = univ.Sequence.tagSet.baseTag


def _constructed(tag_: Any, content: bytes) -> bytes:
    """``content`` (DER) wrapped in a constructed TLV with tag ``tag_``, written by pyasn1."""
    w = _TLV_WRITER
    return bytes(w.encodeTag(tag_, True) + w.encodeLength(len(content), True)) + content


def raw_sequence_der(*ders: bytes) -> bytes:
    """DER of a SEQUENCE whose components are the given, already DER-encoded values (pyasn1
    writes the outer tag and length; the components are copied verbatim, as one opaque run)."""
    return _constructed(_SEQUENCE_TAG, b"".join(ders))


def explicit_der(spec: Any, inner_der: bytes) -> bytes:
    """DER of ``spec`` - an EXPLICITly tagged type - holding the value whose DER is ``inner_der``
    (pyasn1 writes each explicit tag and length; the inner value is copied verbatim)."""
    tags = spec.tagSet.superTags
    if not tags or tags[0] != spec.tagSet.baseTag:
        raise ValueError("explicit_der needs an explicitly tagged type")
    return explicit_tags_der(tags[1:], inner_der)


def explicit_tags_der(tags: Any, inner_der: bytes) -> bytes:
    """``inner_der`` wrapped in the explicit ``tags`` (innermost first), as pyasn1 encodes an
    explicitly tagged value."""
    out = inner_der
    for t in tags:
        out = _constructed(t, out)
    return out


@functools.lru_cache(maxsize=512)
def general_name_from_der(der: bytes) -> x509.GeneralName:
    """DER of one GeneralName (as received, e.g. a header's sender) → cryptography, without a
    pyasn1 pass over the name (cached by DER: senders and recipients recur)."""
    try:
        return _general_name_from_der(raw_sequence_der(der))  # GeneralNames ::= SEQUENCE OF GeneralName
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed or unsupported GeneralName: {type(exc).__name__}") from None


@functools.lru_cache(maxsize=512)
def general_name_der(gn: x509.GeneralName) -> bytes:
    """cryptography GeneralName → its DER (through pyasn1; cached)."""
    return encode(general_name_from_x509(gn))


@functools.lru_cache(maxsize=256)
def _plain_general_names(der: bytes) -> Any:
    return decode(der, rfc5280.GeneralNames(), what="GeneralName")


def general_name_from_x509(gn: x509.GeneralName, spec: Any = None) -> Any:
    """cryptography GeneralName → pyasn1 (cached like :func:`name_from_x509`; read-only)."""
    names = _plain_general_names(x509.SubjectAlternativeName([gn]).public_bytes())
    plain = names[0]
    return plain if spec is None else retag(plain, spec)


# ---- certificates, CSRs, keys -----------------------------------------------------------------

def cert_to_x509(value: Any) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(encode(retag(value, rfc5280.Certificate())))
        cert.subject, cert.issuer, cert.extensions  # noqa: B018 - parse lazily-decoded parts now
        return cert
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed certificate: {type(exc).__name__}") from None


def cert_from_der(der: bytes) -> x509.Certificate:
    """A certificate straight from its DER (no pyasn1 pass), parsed as eagerly as :func:`cert_to_x509`."""
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.subject, cert.issuer, cert.extensions  # noqa: B018 - parse lazily-decoded parts now
        return cert
    except Exception as exc:
        raise BadDataFormat(f"malformed certificate: {type(exc).__name__}") from None


def cert_from_x509(cert: x509.Certificate, spec: Any) -> Any:
    plain = decode(cert.public_bytes(serialization.Encoding.DER), rfc5280.Certificate(), what="certificate")
    return retag(plain, spec)


_CERT_TAGS = rfc5280.Certificate().tagSet


def cert_der_value(cert: x509.Certificate, spec: Any) -> Any:
    """The certificate's DER as an opaque ``Any`` carrying ``spec``'s (explicit) tags, for encoding
    only: no pyasn1 decode/re-encode of the certificate (the slow part of building a response).
    Falls back to :func:`cert_from_x509` for an implicitly tagged ``spec``."""
    tags = spec.tagSet
    if tuple(tags)[:len(_CERT_TAGS)] != tuple(_CERT_TAGS):
        return cert_from_x509(cert, spec)
    value = univ.Any(cert.public_bytes(serialization.Encoding.DER))
    for t in tuple(tags)[len(_CERT_TAGS):]:
        value = value.subtype(explicitTag=t)
    return value


def cert_der_in(cert: x509.Certificate, spec: Any) -> bytes:
    """DER of ``cert`` as a value of ``spec`` (Certificate, or CMPCertificate under explicit
    tags): the certificate's DER with pyasn1 writing the explicit tags around it - the bytes of
    ``encode(cert_der_value(cert, spec))`` without building the value. Implicitly tagged specs
    are encoded the full way."""
    tags = tuple(spec.tagSet)
    if tags[:len(_CERT_TAGS)] != tuple(_CERT_TAGS):
        return encode(cert_from_x509(cert, spec))
    return explicit_tags_der(tags[len(_CERT_TAGS):], cert.public_bytes(serialization.Encoding.DER))


def put_cert(container: Any, key: str | None, cert: x509.Certificate) -> None:
    """Store ``cert`` in the component ``key`` of ``container`` (``None``: append to a SEQUENCE OF)
    as pre-encoded DER (see :func:`cert_der_value`)."""
    relaxed = {"verifyConstraints": False, "matchTags": False, "matchConstraints": False}
    if key is None:
        container.setComponentByPosition(len(container), cert_der_value(cert, container.componentType), **relaxed)
    else:
        spec = container.componentType[key].asn1Object
        container.setComponentByName(key, cert_der_value(cert, spec), **relaxed)


def crl_to_x509(value: Any) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(encode(retag(value, rfc5280.CertificateList())))
    except Exception as exc:
        raise BadDataFormat(f"malformed CRL: {type(exc).__name__}") from None


def spki_to_key(value: Any) -> PublicKeyTypes:
    from .errors import BadCertTemplate

    der = encode(retag(value, rfc5280.SubjectPublicKeyInfo()))
    try:
        return serialization.load_der_public_key(der)
    except UnsupportedAlgorithm:
        raise BadCertTemplate("unsupported public key algorithm") from None
    except Exception as exc:
        raise BadDataFormat(f"malformed public key: {type(exc).__name__}") from None


def spki_der_to_key(der: bytes) -> PublicKeyTypes:
    """DER of a SubjectPublicKeyInfo (as received) → key, errors as :func:`spki_to_key`."""
    from .errors import BadCertTemplate

    try:
        return serialization.load_der_public_key(der)
    except UnsupportedAlgorithm:
        raise BadCertTemplate("unsupported public key algorithm") from None
    except Exception as exc:
        raise BadDataFormat(f"malformed public key: {type(exc).__name__}") from None


def key_to_spki(key: PublicKeyTypes, spec: Any = None) -> Any:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    plain = decode(der, rfc5280.SubjectPublicKeyInfo(), what="SubjectPublicKeyInfo")
    return plain if spec is None else retag(plain, spec)


# ---- scalars ------------------------------------------------------------------------------

def gentime_to_datetime(value: Any) -> _dt.datetime:
    """GeneralizedTime (or UTCTime) → aware UTC datetime; cached by type and text (pyasn1 parses
    with strptime, and under load many messages carry the same second)."""
    try:
        return _time_from_text(type(value), str(value))
    except CmpError:
        raise
    except Exception as exc:
        raise BadDataFormat(f"malformed GeneralizedTime: {type(exc).__name__}") from None


@functools.lru_cache(maxsize=256)
def _time_from_text(kind: type, text: str) -> _dt.datetime:
    try:
        d = kind(text).asDateTime
    except Exception as exc:
        raise BadDataFormat(f"malformed GeneralizedTime: {type(exc).__name__}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.astimezone(_dt.timezone.utc)  # type: ignore[no-any-return]


def gentime_from_datetime(when: _dt.datetime, spec: Any = None) -> Any:
    if when.tzinfo is None:
        raise ValueError("messageTime must be timezone-aware")
    text = when.astimezone(_dt.timezone.utc).strftime("%Y%m%d%H%M%SZ")
    return (spec if spec is not None else useful.GeneralizedTime()).clone(text)


def time_to_datetime(value: Any) -> _dt.datetime:
    """rfc5280 Time CHOICE (utcTime | generalTime) → aware datetime."""
    return gentime_to_datetime(value.getComponent())


def time_from_datetime(when: _dt.datetime, spec: Any) -> Any:
    t = spec.clone()
    utc = when.astimezone(_dt.timezone.utc)
    if 1950 <= utc.year < 2050:
        t["utcTime"] = useful.UTCTime(utc.strftime("%y%m%d%H%M%SZ"))
    else:
        t["generalTime"] = useful.GeneralizedTime(utc.strftime("%Y%m%d%H%M%SZ"))
    return t


def free_text(value: Any) -> tuple[str, ...]:
    try:
        return tuple(str(s) for s in value)
    except Exception as exc:
        raise BadDataFormat(f"malformed PKIFreeText: {type(exc).__name__}") from None


def free_text_into(texts: tuple[str, ...], spec: Any) -> Any:
    out = spec.clone()
    for t in texts:
        out.append(char.UTF8String(t))
    return out


def octets(value: Any) -> bytes:
    return bytes(value.asOctets())


def oid_str(value: Any) -> str:
    return ".".join(str(x) for x in tuple(value))
