"""`csm init` / `csm serve` with the token PIN sealed to a (real, simulated) TPM 2.0."""
from __future__ import annotations

from pathlib import Path

import pytest

from hsm.pin import PLAIN_PIN_FILE, SEALED_PIN_FILE, pin_source_from_spec
from tests import tpmsim
from tests.sms.served import Served, cli, user_env

pytestmark = pytest.mark.tpm

VALUES = {"password": "served-with-a-sealed-pin"}


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _one_line_error(r, *fragments: str) -> None:
    assert r.returncode != 0, r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("csm: error:")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert all(f.lower() in errors[0].lower() for f in fragments), errors[0]
    message = errors[0][len("csm: error:"):].strip()
    assert (r.stderr + r.stdout).count(message) == 1, r.stderr  # reported once, not also logged


def test_serve_unseals_the_pin_from_the_tpm_and_refuses_a_changed_or_missing_tpm(tmp_path):
    if not tpmsim.have_swtpm():
        pytest.skip("swtpm is not installed (apt-get install swtpm swtpm-tools)")
    data = tmp_path / "csm-data"
    with tpmsim.swtpm() as tpm:
        env = {"CSM_HSM_TPM_TCTI": tpm.tcti, "CSM_HSM_TPM_PCRS": "sha256:7"}
        with Served(data, workers=2, env=env) as srv:  # first start: init seals a new PIN
            assert srv.post("/v1/domains", json={"name": "tpm"}).status_code == 201
            assert srv.post("/v1/domains/tpm/secrets", json={"name": "s", "values": VALUES}).status_code == 201
            for _ in range(4):  # both workers unsealed and logged in
                r = srv.get("/v1/domains/tpm/secrets/s")
                assert r.status_code == 200 and r.json()["values"] == VALUES
            ready = srv.get("/v1/sys/ready").json()
            assert ready["token"]["ok"] is True and ready["sealed"] is False
        assert f"sealing its PIN to the TPM at {tpm.tcti}" in srv.output()

        spec = (data / "hsm" / "pin-source").read_text().strip()
        assert spec.startswith("tpm:") and spec.endswith("@" + tpm.tcti)
        assert (data / "hsm" / SEALED_PIN_FILE).exists() and not (data / "hsm" / PLAIN_PIN_FILE).exists()
        pin = pin_source_from_spec(spec).get_pin().encode()
        assert len(pin) >= 16
        assert _files_containing(data, pin) == []  # no plaintext PIN anywhere in the data directory
        assert pin not in srv.output().encode()

        tpmsim.pcr_extend(tpm.tcti, 7)  # the measured state changed: the PIN stays sealed
        _one_line_error(cli(["serve", "--plain-http"], user_env(data, env)), "pcr")

    # The TPM is gone (swtpm stopped): nothing listens at the recorded TCTI.
    _one_line_error(cli(["serve", "--plain-http"], user_env(data)), "tpm", "cannot be reached")
