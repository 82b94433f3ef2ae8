"""The README's Python examples run as written against a fresh `csm serve` (TLS, bootstrap CA).

Only the address changes (the README says 127.0.0.1:8443); they run from the directory holding
``csm-data``, as a user following the README would, with REQUESTS_CA_BUNDLE naming the system
bundle, as it does in many images (requests then ignores a session's own CA file)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .served import Served

ROOT = Path(__file__).resolve().parents[2]
SECRET = "readme-nf-secret-0123456789"
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("readme") / "csm-data"
    with Served(data, tls=True) as srv:
        # what the README's shell examples set up before its Python ones
        for path, body in (("/v1/domains", {"name": "billing"}),
                           ("/v1/domains/billing/secrets", {"name": "db", "values": {"user": "app", "password": "x"}}),
                           ("/v1/ca", {"name": "issuing", "type": "root", "subject": "CN=NF Issuing CA,O=Example"}),
                           ("/v1/cmp/profiles", {"name": "nf", "ca": "issuing", "cert_profile": "tls-mutual",
                                                 "default": True, "secrets": {"nf-ref": SECRET}})):
            r = srv.post(path, json=body)
            assert r.status_code == 201, (path, r.text)
        (data.parent / "issuing.pem").write_bytes(srv.get("/v1/ca/issuing/ca.pem").content)
        yield srv


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4
    assert any("client_sdk.cmp" in b for b in BLOCKS) and any("SecretsClient" in b for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_python_example_runs_as_written(served: Served, index: int) -> None:
    code = BLOCKS[index].replace("https://127.0.0.1:8443", served.url)
    env = dict(served.env, NF_SECRET=SECRET, REQUESTS_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=served.data_dir.parent, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"README example {index}:\n{code}\n{proc.stderr[-2000:]}"
