"""End to end as a user runs it: `csm serve` (granian, TLS, 2 workers) and the CLI against it."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess

import pytest
import requests

from .served import Served, cli, free_port, user_env


def run(args, env, **kw):
    return cli(list(args), env, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e") / "csm-data"
    with Served(data, workers=2, tls=True) as srv:
        yield srv


def test_first_start_prints_url_and_root_token_location(served):
    out = served.output()
    assert f"https://127.0.0.1:{served.port}" in out
    assert str(served.data_dir / "root-token") in out
    token = (served.data_dir / "root-token").read_text().strip()
    assert token not in out  # the token itself is never printed
    # the sizing in use instead of granian's generic advice against more threads than 2 x CPUs + 1
    assert "2 workers x 8 threads on" in out
    assert "Configuration allows spawning" not in out and "[INFO] Started worker" in out


def test_secret_files_are_private(served):
    for rel in ("root-token", "tls/server.key"):
        mode = stat.S_IMODE((served.data_dir / rel).stat().st_mode)
        assert mode == 0o600, (rel, oct(mode))
    assert stat.S_IMODE(served.data_dir.stat().st_mode) == 0o700


def test_tls_is_verified_with_the_bootstrap_ca(served):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(served.url + "/v1/sys/health", timeout=5)  # system trust store: refused
    r = requests.get(served.url + "/v1/sys/health", verify=str(served.data_dir / "tls" / "ca.crt"), timeout=5)
    assert r.status_code == 200
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(served.data_dir / "tls" / "ca.crt"),
                           str(served.data_dir / "tls" / "server.crt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_token_and_policy_verbs(served, tmp_path):
    env = dict(served.env)
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps([{"path": "sys/policies", "capabilities": ["list"]}]))
    r = run(["policy", "write", "lister", str(pol)], env)
    assert r.returncode == 0, r.stderr
    assert "lister" in run(["policy", "list"], env).stdout
    created = run(["token", "create", "-p", "lister", "--ttl", "600", "--json"], env)
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["token"].startswith("csm.") and body["policies"] == ["lister"]
    env_child = dict(env, CSM_TOKEN=body["token"])
    assert run(["policy", "list"], env_child).returncode == 0
    denied = run(["policy", "read", "lister"], env_child)
    assert denied.returncode == 1 and denied.stderr.startswith("csm: error:") and len(denied.stderr.splitlines()) == 1
    assert run(["token", "renew", body["accessor"]], env).returncode == 0
    assert run(["token", "revoke", body["accessor"]], env).returncode == 0
    for _ in range(3):  # every worker refuses it at once (README "Token cache")
        assert run(["policy", "list"], env_child).returncode == 1
    assert run(["token", "lookup", "nope"], env).returncode == 1
    st = run(["status", "--json"], env)
    assert st.returncode == 0 and json.loads(st.stdout)["status"] == "ready"



def test_an_oversized_body_over_http2_gets_the_413_problem_every_time(served, tmp_path):
    """curl over HTTP/2, no Expect: 100-continue: the refusal came while the body was still
    being sent and the stream was reset (curl: (92) stream error) about half of the time."""
    big = tmp_path / "big.json"
    big.write_bytes(b'{"name": "' + b"x" * (2 << 20) + b'"}')
    token = (served.data_dir / "root-token").read_text().strip()
    for i in range(12):
        proc = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(served.data_dir / "tls" / "ca.crt"),
                               "-H", f"X-CSM-Token: {token}", "-H", "Content-Type: application/json", "-H", "Expect:",
                               "--data-binary", f"@{big}", "-w", "\n%{http_code} %{http_version}",
                               served.url + "/v1/sms/domain"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (i, proc.stderr)
        doc, status = proc.stdout.rsplit("\n", 1)
        assert status == "413 2", (i, status)
        assert json.loads(doc)["status"] == 413

def test_every_verb_has_help():
    env = dict(os.environ)
    verbs = [[], ["init"], ["serve"], ["status"], ["token"], ["token", "create"], ["token", "lookup"],
             ["token", "renew"], ["token", "revoke"], ["policy"], ["policy", "write"], ["policy", "read"],
             ["policy", "list"], ["policy", "delete"], ["audit"], ["audit", "verify"], ["tls"], ["tls", "reissue"],
             ["config", "show"]]
    for v in verbs:
        r = run([*v, "--help"], env)
        assert r.returncode == 0 and "Usage:" in r.stdout, v


def test_usage_errors_exit_2(tmp_path):
    env = user_env(tmp_path / "d")
    r = run(["serve", "--plain-http", "--host", "0.0.0.0"], env)
    assert r.returncode == 2 and "loopback" in r.stderr
    assert run(["token", "create", "--ttl", "zero"], env).returncode == 2


def test_status_of_unreachable_service_exits_3(tmp_path):
    env = user_env(tmp_path / "d")
    env["CSM_PORT"] = str(free_port())
    r = run(["status"], env)
    assert r.returncode == 3 and "cannot reach" in r.stderr


def test_restart_keeps_state_and_audit_verifies_then_detects_tampering(tmp_path):
    data = tmp_path / "csm-data"
    with Served(data, workers=2, tls=True) as srv:
        token = (data / "root-token").read_text()
        assert run(["token", "create", "--json"], srv.env).returncode == 0
    with Served(data, workers=2, tls=True) as srv2:  # second start: init is idempotent, the root token is kept
        assert (data / "root-token").read_text() == token
        assert run(["token", "lookup"], srv2.env).returncode == 0
    ok = run(["audit", "verify"], user_env(data))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    con = sqlite3.connect(data / "csm.db")
    con.execute("UPDATE audit_log SET outcome='ok', status=200 WHERE seq=(SELECT MIN(seq) FROM audit_log)")
    con.execute("UPDATE audit_log SET actor='token:forged' WHERE seq=(SELECT MAX(seq) FROM audit_log)")
    con.commit()
    con.close()
    bad = run(["audit", "verify"], user_env(data))
    assert bad.returncode == 1 and "TAMPERED" in bad.stderr


def test_a_token_created_before_that_does_not_show_is_waited_for_never_replaced(tmp_path):
    """A start that cannot see the token this data directory created (another process was
    rewriting its files: seen once in CI under load) must not create a new token and rotate
    the PIN — the deployment's keys are in the old one. It looks again for a while, then
    refuses with a clear error; the token back in place, the start goes on with it."""
    import shutil
    import threading

    data = tmp_path / "csm-data"
    env = user_env(data, {"CSM_PLAIN_HTTP": "1"})
    assert cli(["init"], env).returncode == 0
    pin_before = sorted(p.name for p in (data / "hsm").iterdir())
    tokens = data / "softhsm" / "tokens"
    hidden = tmp_path / "tokens-away"
    shutil.move(tokens, hidden)
    tokens.mkdir()
    r = cli(["init"], env, timeout=120)
    assert r.returncode != 0 and "not creating a new one" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    assert list(tokens.iterdir()) == [] and sorted(p.name for p in (data / "hsm").iterdir()) == pin_before

    def put_back() -> None:
        import time

        time.sleep(2)
        tokens.rmdir()
        shutil.move(hidden, tokens)

    t = threading.Thread(target=put_back)
    t.start()
    r = cli(["init"], env, timeout=120)
    t.join()
    assert r.returncode == 0, r.stderr
    assert "creating SoftHSM token" not in r.stdout + r.stderr
    assert sorted(p.name for p in (data / "hsm").iterdir()) == pin_before  # the PIN was not replaced
    assert cli(["audit", "verify"], env).returncode == 0  # the audit MAC key is the one of before
