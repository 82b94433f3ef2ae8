"""hsm.pin: PIN sources, their spec strings, and provisioning at `csm init`."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hsm.errors import PolicyMismatch, SealError, TpmUnavailable
from hsm.pin import (
    DEFAULT_TCTI,
    EnvPin,
    FilePin,
    PinSource,
    PinUnavailable,
    TpmSealedPin,
    generate_pin,
    pin_source_from_spec,
    provision_pin,
)
from tests import tpmsim

tpm = pytest.mark.tpm
timeout = pytest.mark.timeout(60)

PIN = "s3cret-PIN-\u00e9-7f3a"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _assert_no_pin(pin: str, *objects: object) -> None:
    for obj in objects:
        texts = [str(obj), repr(obj)]
        if isinstance(obj, BaseException):
            cause = obj.__cause__ or obj.__context__
            texts += [str(cause), repr(cause)] if cause is not None else []
        for text in texts:
            assert pin not in text


# -- EnvPin ----------------------------------------------------------------------------------


def test_env_pin_reads_the_variable_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSM_TEST_PIN", PIN)
    source = EnvPin("CSM_TEST_PIN")
    assert isinstance(source, PinSource)
    assert source.get_pin() == PIN
    assert source.get_pin() == PIN  # not consumed: forked workers read it too
    assert source.spec() == "env:CSM_TEST_PIN"
    assert "CSM_TEST_PIN" in source.describe()
    _assert_no_pin(PIN, source, source.describe())


@pytest.mark.parametrize("value", [None, ""])
def test_env_pin_missing_or_empty_is_unavailable(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CSM_TEST_PIN", raising=False)
    else:
        monkeypatch.setenv("CSM_TEST_PIN", value)
    with pytest.raises(PinUnavailable) as info:
        EnvPin("CSM_TEST_PIN").get_pin()
    assert isinstance(info.value, SealError)
    assert "CSM_TEST_PIN" in str(info.value)


def test_env_pin_rejects_invalid_names() -> None:
    for name in ("", "1ABC", "A-B", "A B", "A=B"):
        with pytest.raises(ValueError):
            EnvPin(name)


# -- FilePin ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_file_pin_reads_an_owner_only_file_without_its_newline(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "pin", PIN + "\n", mode)
    source = FilePin(path)
    assert source.get_pin() == PIN
    assert source.spec() == f"file:{path}"
    _assert_no_pin(PIN, source, source.describe())


def test_file_pin_keeps_inner_whitespace_and_strips_only_one_newline(tmp_path: Path) -> None:
    assert FilePin(_write(tmp_path / "a", " a b \r\n", 0o600)).get_pin() == " a b "
    assert FilePin(_write(tmp_path / "b", "ab\n\n", 0o600)).get_pin() == "ab\n"
    assert FilePin(_write(tmp_path / "c", "ab", 0o600)).get_pin() == "ab"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_file_pin_refuses_a_file_group_or_others_can_access(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "pin", PIN + "\n", mode)
    with pytest.raises(PinUnavailable) as info:
        FilePin(path).get_pin()
    assert f"{mode:04o}" in str(info.value) and "chmod 600" in str(info.value)
    _assert_no_pin(PIN, info.value)


def test_file_pin_missing_empty_or_not_a_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(PinUnavailable):
        FilePin(tmp_path / "absent").get_pin()
    with pytest.raises(PinUnavailable):
        FilePin(_write(tmp_path / "empty", "\n", 0o600)).get_pin()
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(PinUnavailable):
        FilePin(d).get_pin()
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    binary.chmod(0o600)
    with pytest.raises(PinUnavailable):
        FilePin(binary).get_pin()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(PinUnavailable):  # refused, not blocked on
        FilePin(fifo).get_pin()


# -- spec strings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("env:CSM_PIN", EnvPin("CSM_PIN")),
    ("  file:/run/secrets/pin \n", FilePin(Path("/run/secrets/pin"))),
    ("file:/a:b@c", FilePin(Path("/a:b@c"))),
    ("tpm:/var/lib/csm/pin.sealed", TpmSealedPin(Path("/var/lib/csm/pin.sealed"), DEFAULT_TCTI)),
    ("tpm:/var/lib/csm/pin.sealed@device:/dev/tpmrm0", TpmSealedPin(Path("/var/lib/csm/pin.sealed"),
                                                                    "device:/dev/tpmrm0")),
    ("tpm:/x/p@swtpm:host=127.0.0.1,port=2321", TpmSealedPin(Path("/x/p"), "swtpm:host=127.0.0.1,port=2321")),
    ("tpm:/x/p@tabrmd:bus_type=session", TpmSealedPin(Path("/x/p"), "tabrmd:bus_type=session")),
    ("tpm:/x/p@cmd:ssh csm@host tpm2-send", TpmSealedPin(Path("/x/p"), "cmd:ssh csm@host tpm2-send")),
    ("tpm:/x/a%40b:c%25d@device", TpmSealedPin(Path("/x/a@b:c%d"), "device")),
])
def test_specs_parse_to_sources(spec: str, expected: PinSource) -> None:
    assert pin_source_from_spec(spec) == expected


@pytest.mark.parametrize("spec", [
    "", "tpm", "env:", "env:1X", "env:A-B", "file:", "file:relative/pin", "tpm:relative@device:/dev/tpmrm0",
    "tpm:/x@", "tpm:/x@:conf", "vault:/x", "/abs/path",
])
def test_malformed_specs_are_value_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        pin_source_from_spec(spec)


@pytest.mark.parametrize("source", [
    EnvPin("CSM_PIN"),
    FilePin(Path("/run/secrets/p@in")),
    TpmSealedPin(Path("/d/with@at/and%percent/pin.sealed"), "swtpm:host=127.0.0.1,port=2321"),
    TpmSealedPin(Path("/d/pin.sealed"), "cmd:tpm2-send --to a@b"),
])
def test_spec_round_trips(source: PinSource) -> None:
    assert pin_source_from_spec(source.spec()) == source


# -- provisioning without a TPM ----------------------------------------------------------------


def test_provisioning_without_a_tpm_writes_an_owner_only_file_and_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "hsm"
    source, description = provision_pin(data_dir, None, None)
    assert isinstance(source, FilePin)
    assert _mode(data_dir) == 0o700
    assert _mode(source.path) == 0o600
    pin = source.get_pin()
    assert len(pin) >= 32
    assert "PLAIN TEXT" in description and str(source.path) in description
    assert pin_source_from_spec(source.spec()) == source
    _assert_no_pin(pin, source, description, source.describe())


def test_provisioning_again_keeps_the_previous_pin_file(tmp_path: Path) -> None:
    first, _ = provision_pin(tmp_path, None)
    old_pin = first.get_pin()
    second, _ = provision_pin(tmp_path, None)
    assert second.get_pin() != old_pin
    kept = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(kept) == 1 and FilePin(kept[0]).get_pin() == old_pin
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pcr_binding_without_a_tpm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        provision_pin(tmp_path, None, "sha256:7")


def test_generated_pins_are_long_random_and_url_safe() -> None:
    pins = {generate_pin() for _ in range(50)}
    assert len(pins) == 50
    for pin in pins:
        assert len(pin) == 32 and all(c.isalnum() or c in "-_" for c in pin)


# -- with a TPM --------------------------------------------------------------------------------


@tpm
@timeout
def test_provisioning_with_a_tpm_seals_the_pin(swtpm: tpmsim.Swtpm, tmp_path: Path) -> None:
    source, description = provision_pin(tmp_path / "hsm", swtpm.tcti, None)
    assert isinstance(source, TpmSealedPin)
    assert source.blob_path.name == "user-pin.sealed" and _mode(source.blob_path) == 0o600
    assert not (tmp_path / "hsm" / "user-pin").exists()
    pin = source.get_pin()
    assert source.get_pin() == pin and len(pin) >= 32
    assert pin.encode() not in source.blob_path.read_bytes()
    assert "sealed to the TPM" in description and swtpm.tcti in description
    assert "no PCR policy" in source.describe()
    again = pin_source_from_spec(source.spec())
    assert again == source and again.get_pin() == pin
    _assert_no_pin(pin, source, description, source.describe(), source.spec())


@tpm
@timeout
def test_pcr_bound_sealed_pin_becomes_unavailable_after_the_pcr_changes(swtpm: tpmsim.Swtpm,
                                                                        tmp_path: Path) -> None:
    source, description = provision_pin(tmp_path, swtpm.tcti, "sha256:7,0")
    assert "sha256:0,7" in description and "bound to PCRs sha256:0,7" in source.describe()
    pin = source.get_pin()
    tpmsim.pcr_extend(swtpm.tcti, 0)
    with pytest.raises(PolicyMismatch) as info:
        source.get_pin()
    _assert_no_pin(pin, info.value)


@tpm
@timeout
def test_sealed_pin_survives_a_tpm_restart(swtpm_state: Path, tmp_path: Path) -> None:
    with tpmsim.swtpm(state_dir=swtpm_state) as first:
        source, _ = provision_pin(tmp_path, first.tcti, "sha256:7")
        assert isinstance(source, TpmSealedPin)
        pin = source.get_pin()
    with tpmsim.swtpm(state_dir=swtpm_state) as second:
        # the port differs after a restart; the blob does not care
        assert TpmSealedPin(source.blob_path, second.tcti).get_pin() == pin


@tpm
@timeout
def test_sealed_pin_with_unreachable_tpm_or_missing_blob(swtpm_state: Path, tmp_path: Path) -> None:
    with tpmsim.swtpm(state_dir=swtpm_state) as gone:
        source, _ = provision_pin(tmp_path, gone.tcti)
    with pytest.raises(TpmUnavailable):
        source.get_pin()
    with pytest.raises(PinUnavailable):
        TpmSealedPin(tmp_path / "absent.sealed", gone.tcti).get_pin()
    garbage = _write(tmp_path / "garbage.sealed", "not a blob", 0o600)
    with pytest.raises(SealError):
        TpmSealedPin(garbage, gone.tcti).get_pin()


@tpm
@timeout
def test_provisioning_with_an_unreachable_tpm_fails_without_writing_a_plain_pin(swtpm_state: Path,
                                                                               tmp_path: Path) -> None:
    with tpmsim.swtpm(state_dir=swtpm_state) as gone:
        pass
    with pytest.raises(TpmUnavailable):
        provision_pin(tmp_path / "hsm", gone.tcti)
    assert not [p for p in (tmp_path / "hsm").iterdir()]


def test_tpm_sealed_pin_validates_its_tcti() -> None:
    with pytest.raises(ValueError):
        TpmSealedPin(Path("/x"), "")
    assert os.fspath(TpmSealedPin("/x/y").blob_path) == "/x/y"  # type: ignore[arg-type]
