"""hsm.tpm: sealing and unsealing against a real (software) TPM 2.0."""
from __future__ import annotations

import base64
import json
import logging
import secrets
from pathlib import Path

import pytest

from hsm.errors import PolicyMismatch, SealError, TpmUnavailable
from hsm.tpm import MAX_SECRET_SIZE, SealedBlob, TpmSealer, parse_pcr_selection
from tests import tpmsim

tpm = pytest.mark.tpm
timeout = pytest.mark.timeout(60)


def _secret() -> bytes:
    return b"pin-" + secrets.token_hex(12).encode()


def _all_text(exc: BaseException) -> str:
    """str() and repr() of an exception and everything it chains to."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts += [str(cur), repr(cur)]
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


# -- against swtpm -----------------------------------------------------------------------------


@tpm
@timeout
def test_sealed_secret_unseals_to_the_same_bytes(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    secret = _secret()
    blob = sealer.seal(secret)
    assert blob.pcrs is None
    assert sealer.unseal(blob) == secret
    assert sealer.unseal(SealedBlob.from_bytes(blob.to_bytes())) == secret


@tpm
@timeout
def test_sealing_twice_gives_different_blobs_for_the_same_secret(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    secret = _secret()
    a, b = sealer.seal(secret), sealer.seal(secret)
    assert a.private != b.private
    assert sealer.unseal(a) == sealer.unseal(b) == secret


@tpm
@timeout
def test_largest_secret_round_trips(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    secret = secrets.token_bytes(MAX_SECRET_SIZE)
    assert sealer.unseal(sealer.seal(secret, pcrs="sha256:0")) == secret


@tpm
@timeout
def test_pcr_bound_secret_unseals_while_the_pcrs_are_unchanged(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    secret = _secret()
    blob = sealer.seal(secret, pcrs="sha256:7,0")
    assert blob.pcrs == "sha256:0,7"
    assert sealer.unseal(blob) == secret
    tpmsim.pcr_extend(swtpm.tcti, 8)  # not selected
    assert sealer.unseal(blob) == secret


@tpm
@timeout
def test_pcr_bound_secret_refuses_after_a_selected_pcr_is_extended(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    blob = sealer.seal(_secret(), pcrs="sha256:0,7")
    tpmsim.pcr_extend(swtpm.tcti, 7)
    with pytest.raises(PolicyMismatch):
        sealer.unseal(blob)
    # a policy failure is not an authorization failure: nothing counts towards DA lockout
    for _ in range(4):
        with pytest.raises(PolicyMismatch):
            sealer.unseal(blob)
    assert tpmsim.tpm_property(swtpm.tcti, "LOCKOUT_COUNTER") == 0


@tpm
@timeout
def test_sealing_binds_to_the_values_at_sealing_time(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    tpmsim.pcr_extend(swtpm.tcti, 7)
    secret = _secret()
    blob = sealer.seal(secret, pcrs="sha1:7+sha256:7")
    assert sealer.unseal(blob) == secret
    tpmsim.pcr_extend(swtpm.tcti, 7)
    with pytest.raises(PolicyMismatch):
        sealer.unseal(blob)


@tpm
@timeout
def test_no_transient_object_is_left_loaded_after_success_or_failure(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    blobs = [sealer.seal(_secret(), pcrs="sha256:7") for _ in range(4)]  # more than the 3 slots
    for blob in blobs:
        sealer.unseal(blob)
    tpmsim.pcr_extend(swtpm.tcti, 7)
    for blob in blobs:
        with pytest.raises(PolicyMismatch):
            sealer.unseal(blob)
    assert tpmsim.loaded_transients(swtpm.tcti) == 0


@tpm
@timeout
def test_sealed_blob_survives_an_orderly_tpm_restart(swtpm_state: Path) -> None:
    secret = _secret()
    with tpmsim.swtpm(state_dir=swtpm_state) as first:
        sealer = TpmSealer(first.tcti)
        plain = sealer.seal(secret)
        bound = sealer.seal(secret, pcrs="sha256:0,7")
        tpmsim.pcr_extend(first.tcti, 7)  # PCRs reset at the next start-up
    stored_plain, stored_bound = plain.to_bytes(), bound.to_bytes()
    for _ in range(3):  # power cycles are orderly: no DA failure is ever counted
        with tpmsim.swtpm(state_dir=swtpm_state) as again:
            sealer = TpmSealer(again.tcti)
            assert sealer.unseal(SealedBlob.from_bytes(stored_plain)) == secret
            assert sealer.unseal(SealedBlob.from_bytes(stored_bound)) == secret
            assert tpmsim.tpm_property(again.tcti, "LOCKOUT_COUNTER") == 0


@tpm
@timeout
def test_blob_sealed_by_another_tpm_is_refused_as_a_seal_error(swtpm: tpmsim.Swtpm) -> None:
    with tpmsim.swtpm() as other:
        foreign = TpmSealer(other.tcti).seal(_secret())
    with pytest.raises(SealError) as info:
        TpmSealer(swtpm.tcti).unseal(foreign)
    assert not isinstance(info.value, (PolicyMismatch, TpmUnavailable))
    assert "not made by this TPM" in str(info.value)


@tpm
@timeout
def test_tampered_blob_is_refused(swtpm: tpmsim.Swtpm) -> None:
    sealer = TpmSealer(swtpm.tcti)
    blob = sealer.seal(_secret())
    private = bytearray(blob.private)
    private[-1] ^= 1
    with pytest.raises(SealError):
        sealer.unseal(SealedBlob(private=bytes(private), public=blob.public))
    assert tpmsim.loaded_transients(swtpm.tcti) == 0


@tpm
@timeout
def test_unreachable_tpm_raises_tpm_unavailable(swtpm_state: Path) -> None:
    with tpmsim.swtpm(state_dir=swtpm_state) as gone:
        blob = TpmSealer(gone.tcti).seal(_secret())
    sealer = TpmSealer(gone.tcti)  # the port is closed now
    with pytest.raises(TpmUnavailable):
        sealer.unseal(blob)
    with pytest.raises(TpmUnavailable):
        sealer.seal(_secret())
    with pytest.raises(TpmUnavailable):
        sealer.check()


@tpm
@timeout
def test_seal_and_unseal_through_the_resource_manager(tpm_abrmd: tpmsim.Abrmd) -> None:
    sealer = TpmSealer(tpm_abrmd.tcti)
    sealer.check()
    secret = _secret()
    assert sealer.unseal(sealer.seal(secret, pcrs="sha256:16")) == secret


@tpm
@timeout
def test_the_secret_appears_in_no_error_repr_or_log(swtpm: tpmsim.Swtpm, swtpm_state: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = _secret()
    sealer = TpmSealer(swtpm.tcti)
    blob = sealer.seal(secret, pcrs="sha256:7")
    tpmsim.pcr_extend(swtpm.tcti, 7)
    errors: list[BaseException] = []
    with pytest.raises(PolicyMismatch) as mismatch:
        sealer.unseal(blob)
    errors.append(mismatch.value)
    with tpmsim.swtpm(state_dir=swtpm_state) as gone:
        pass
    with pytest.raises(TpmUnavailable) as unavailable:
        TpmSealer(gone.tcti).seal(secret)
    errors.append(unavailable.value)
    with pytest.raises(ValueError) as too_long:
        sealer.seal(secret * 20)
    errors.append(too_long.value)
    texts = [_all_text(e) for e in errors] + [repr(blob), repr(sealer), blob.to_bytes().decode(), caplog.text]
    for text in texts:
        assert secret.decode() not in text
    assert secret not in blob.private and secret not in blob.public


# -- no TPM needed -----------------------------------------------------------------------------


def test_pcr_selection_is_validated_and_canonicalised() -> None:
    assert parse_pcr_selection("sha256:7,0,0") == "sha256:0,7"
    assert parse_pcr_selection(" sha256:23 + SHA1:3 ") == "sha1:3+sha256:23"
    for bad in ("", "sha256", "sha256:", "sha256:24", "sha256:-1", "md5:1", "sha256:1+sha256:2", "sha256:a"):
        with pytest.raises(ValueError):
            parse_pcr_selection(bad)


def test_seal_rejects_bad_arguments_before_touching_the_tpm() -> None:
    sealer = TpmSealer("swtpm:host=127.0.0.1,port=1")
    with pytest.raises(ValueError):
        sealer.seal(b"")
    with pytest.raises(ValueError):
        sealer.seal(b"x" * (MAX_SECRET_SIZE + 1))
    with pytest.raises(TypeError):
        sealer.seal("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sealer.seal(b"x", pcrs="sha256:99")
    with pytest.raises(ValueError):
        TpmSealer("")
    with pytest.raises(ValueError):
        TpmSealer("swtpm:x", primary="rsa-9000")


def _sample_blob_doc() -> dict[str, object]:
    # a real sealed data object public/private pair is not needed for format checks: use the
    # marshalled forms produced by a previous run (structure only; no TPM can load them)
    public = ("AE4ACAALAAAEEgAgAuNkKz4p7sz//YAxwApvCg/r5c7qL272sDIv6BWYzzEAEAAg6D0tqzuFNURy4QkC08w18/DKHwgcvTVM"
              "ShjREkLAZEQ=")
    private = base64.b64encode(b"\x00\x20" + b"\x11" * 32).decode()
    return {"format": "csm-tpm-sealed", "version": 1, "primary": "owner-ecc-p256-aes128cfb",
            "pcrs": "sha256:0,7", "public": public, "private": private}


def test_blob_serialisation_is_versioned_self_describing_json() -> None:
    doc = _sample_blob_doc()
    blob = SealedBlob.from_bytes(json.dumps(doc).encode())
    assert blob.pcrs == "sha256:0,7" and blob.primary == "owner-ecc-p256-aes128cfb" and blob.version == 1
    again = json.loads(blob.to_bytes())
    assert again == doc
    assert SealedBlob.from_bytes(blob.to_bytes()) == blob
    assert "bytes>" in repr(blob) and str(doc["public"]) not in repr(blob)


@pytest.mark.parametrize("change", [
    {"version": 2}, {"format": "other"}, {"extra": 1}, {"public": "!!notbase64"}, {"private": ""},
    {"public": base64.b64encode(b"\x00\x04abcd").decode()}, {"pcrs": "sha256:7,0"}, {"pcrs": 7},
    {"primary": "unknown"},
])
def test_corrupt_or_unknown_blobs_raise_seal_error(change: dict[str, object]) -> None:
    doc = {**_sample_blob_doc(), **change}
    with pytest.raises(SealError):
        SealedBlob.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[]", b"null", b'{"format": "csm-tpm-sealed"}'])
def test_non_blob_bytes_raise_seal_error(data: bytes) -> None:
    with pytest.raises(SealError):
        SealedBlob.from_bytes(data)
