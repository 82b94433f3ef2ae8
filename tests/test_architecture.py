"""The dependency graph is enforced: sms → ca → hsm, client_sdk imports none of them, no Flask/SQL below sms."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is part of the test extra"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_the_rest_client_and_the_cli_do_not_load_the_cmp_codec():
    """A service reading its secrets through ``client_sdk`` (and every ``csm`` CLI call) would
    otherwise pay about a second loading the CMP codec's ASN.1 modules."""
    probe = ("import sys, client_sdk, sms.cli; "
             "print(sorted(m for m in sys.modules if m.startswith(('client_sdk.cmp', 'pyasn1'))))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
