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
