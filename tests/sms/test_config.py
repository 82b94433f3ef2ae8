"""Configuration layers: flag > CSM_* env > config file > default."""
from __future__ import annotations

import pytest

from sms.config import Settings, load_settings
from sms.errors import ConfigError


def test_layers_override_in_order(tmp_path):
    cfg = tmp_path / "csm.toml"
    cfg.write_text('port = 9001\nworkers = 3\nlog_level = "DEBUG"\n')
    s = load_settings(cli={"port": 9003}, env={"CSM_PORT": "9002", "CSM_WORKERS": "4"}, config_file=cfg)
    assert s.port == 9003  # flag wins
    assert s.workers == 4  # env over file
    assert s.log_level == "DEBUG"  # file over default
    assert s.threads == Settings().threads  # default


def test_default_config_file_in_data_dir_is_read(tmp_path):
    (tmp_path / "csm.toml").write_text("port = 9100\n")
    assert load_settings(env={"CSM_DATA_DIR": str(tmp_path)}).port == 9100


@pytest.mark.parametrize("env, fragment", [
    ({"CSM_PORT": "eighty"}, "CSM_PORT"),
    ({"CSM_PLAIN_HTTP": "maybe"}, "CSM_PLAIN_HTTP"),
    ({"CSM_SERVER": "apache"}, "server"),
    ({"CSM_PLAIN_HTTP": "1", "CSM_HOST": "0.0.0.0"}, "loopback"),
])
def test_bad_values_are_clear_errors(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env=env)


def test_unknown_config_key_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(env={}, config_file=cfg)


def test_settings_hold_no_pin_or_token():
    names = {f for f in Settings.__dataclass_fields__}
    assert not any(("pin" == n or n.endswith("_pin") or n.endswith("token")) for n in names)


@pytest.mark.parametrize("spec, fragment", [
    ("/run/csm-pin", "expected tpm:"),
    ("file:relative/pin", "absolute path"),
    ("env:1BAD", "variable name"),
    ("tpm:/var/lib/csm/pin.sealed@", "empty TCTI"),
    ("vault:secret/pin", "unknown kind"),
])
def test_malformed_pin_source_is_refused_at_load(spec, fragment):
    with pytest.raises(ConfigError, match=f"hsm_pin_source: .*{fragment}"):
        load_settings(env={"CSM_HSM_PIN_SOURCE": spec})


def test_well_formed_pin_sources_load_without_touching_them(tmp_path):
    for spec in ("env:CSM_NOT_SET_ANYWHERE", f"file:{tmp_path}/missing", f"tpm:{tmp_path}/x.sealed@swtpm:port=1"):
        assert load_settings(env={"CSM_HSM_PIN_SOURCE": spec}).hsm_pin_source == spec


def test_malformed_pcr_selection_is_refused_at_load():
    with pytest.raises(ConfigError, match="hsm_tpm_pcrs"):
        load_settings(env={"CSM_HSM_TPM_PCRS": "sha256:24"})
    assert load_settings(env={"CSM_HSM_TPM_PCRS": "sha256:0,7"}).hsm_tpm_pcrs == "sha256:0,7"


def test_cli_exits_2_with_one_line_on_a_malformed_pin_source(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "CSM_DATA_DIR": str(tmp_path / "d"), "CSM_HSM_PIN_SOURCE": "file:pin"}
    for verb in (["config", "show"], ["serve"], ["init"]):
        r = subprocess.run([sys.executable, "-m", "sms.cli", *verb], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, (verb, r.stderr)
        assert r.stderr.startswith("csm: error: hsm_pin_source:") and len(r.stderr.splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_workers_default_to_one_more_than_the_usable_cpus(monkeypatch):
    import os

    assert load_settings(env={}).workers == 0
    cpus = len(os.sched_getaffinity(0))
    assert load_settings(env={}).effective_workers == min(cpus + 1, 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert load_settings(env={}).effective_workers == 8  # capped
    assert load_settings(env={"CSM_WORKERS": "5"}).effective_workers == 5  # explicit wins
    with pytest.raises(ConfigError, match="workers"):
        load_settings(env={"CSM_WORKERS": "-1"})
