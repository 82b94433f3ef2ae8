"""A real `csm serve` in a subprocess for end-to-end tests (plain HTTP on 127.0.0.1, bounded waits).

    with Served(data_dir, workers=2, env={"CSM_HSM_TPM_TCTI": tcti}) as srv:
        srv.get("/v1/sys/ready")        # requests against srv.url with the root token
    srv.output()                        # everything the server printed (kept after stop)

``cli(...)`` runs another `csm` verb with the same environment.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

CSM = [sys.executable, "-m", "sms.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without csm/SoftHSM settings of the test process, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSM_") and k != "SOFTHSM2_CONF"}
    env["CSM_DATA_DIR"] = str(data_dir)
    env.update(extra or {})
    return env


def cli(args: list[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CSM, *args], env=dict(env), capture_output=True, text=True, timeout=timeout)


class Served:
    def __init__(self, data_dir: Path, *args: str, workers: int = 1, env: Mapping[str, str] | None = None,
                 tls: bool = False) -> None:
        """``tls=True`` serves HTTPS as a user gets it by default; requests then trust ``tls/ca.crt``."""
        self.data_dir = data_dir
        self.workers = workers
        self.port = free_port()
        base = {"CSM_PORT": str(self.port)} if tls else {"CSM_PORT": str(self.port), "CSM_PLAIN_HTTP": "1"}
        self.env = user_env(data_dir, {**base, **(env or {})})
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.args = args
        self._log_path = data_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()
        self.http.trust_env = False
        if tls:
            self.http.verify = str(data_dir / "tls" / "ca.crt")

    def start(self, ready_timeout: float = 60) -> Served:
        self._log = open(self._log_path, "w+")
        self.proc = subprocess.Popen([*CSM, "serve", "--workers", str(self.workers), *self.args], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"csm serve exited {self.proc.returncode}: {self.output()}")
            try:
                # Every worker up (granian ignores a SIGTERM that arrives while a worker is starting).
                if (self.output().count("Started worker-") >= self.workers
                        and self.http.get(self.url + "/v1/sys/ready", timeout=5).status_code == 200):
                    self.http.headers["X-CSM-Token"] = (self.data_dir / "root-token").read_text().strip()
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"csm serve not ready in {ready_timeout}s: {self.output()}")

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 15)
        return self.http.request(method, self.url + path, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def output(self) -> str:
        return self._log_path.read_text() if self._log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
        self.http.close()

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
