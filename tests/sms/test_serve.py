"""End to end as a user runs it: `csm serve` (granian, TLS, 2 workers) and the CLI against it."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

CSM = [sys.executable, "-m", "sms.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSM_") and k != "SOFTHSM2_CONF"}
    env["CSM_DATA_DIR"] = str(data_dir)
    return env


def run(args, env, **kw):
    return subprocess.run([*CSM, *args], env=env, capture_output=True, text=True, timeout=120, **kw)


class Server:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.env = user_env(data_dir)
        self.env["CSM_PORT"] = str(self.port)
        self.data_dir = data_dir
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([*CSM, "serve", "--workers", "2", *extra], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"https://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"csm serve exited {self.proc.returncode}: {self.output()}")
            try:
                r = requests.get(self.url + "/v1/sys/ready", verify=str(self.data_dir / "tls" / "ca.crt"), timeout=5)
                if r.status_code == 200:
                    return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"not ready in {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e") / "csm-data"
    srv = Server(data)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_first_start_prints_url_and_root_token_location(served):
    out = served.output()
    assert f"https://127.0.0.1:{served.port}" in out
    assert str(served.data_dir / "root-token") in out
    token = (served.data_dir / "root-token").read_text().strip()
    assert token not in out  # the token itself is never printed


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
    assert run(["policy", "list"], env_child).returncode == 1
    assert run(["token", "lookup", "nope"], env).returncode == 1
    st = run(["status", "--json"], env)
    assert st.returncode == 0 and json.loads(st.stdout)["status"] == "ready"


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
    srv = Server(data)
    try:
        srv.wait_ready()
        token = (data / "root-token").read_text()
        assert run(["token", "create", "--json"], srv.env).returncode == 0
    finally:
        srv.stop()
    srv2 = Server(data)  # second start: init is idempotent, the root token is kept
    try:
        srv2.wait_ready()
        assert (data / "root-token").read_text() == token
        assert run(["token", "lookup"], srv2.env).returncode == 0
    finally:
        srv2.stop()
    ok = run(["audit", "verify"], user_env(data))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    con = sqlite3.connect(data / "csm.db")
    con.execute("UPDATE audit_log SET outcome='ok', status=200 WHERE seq=(SELECT MIN(seq) FROM audit_log)")
    con.execute("UPDATE audit_log SET actor='token:forged' WHERE seq=(SELECT MAX(seq) FROM audit_log)")
    con.commit()
    con.close()
    bad = run(["audit", "verify"], user_env(data))
    assert bad.returncode == 1 and "TAMPERED" in bad.stderr
