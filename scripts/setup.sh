#!/usr/bin/env bash
# csm set-up, idempotent, for a fresh Debian 12 machine (run as root).
#   scripts/setup.sh serve [csm serve options]   install everything, then run the service
#   scripts/setup.sh test  [pytest options]      install everything, then run the test suite
#   scripts/setup.sh install                     install only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
mode="${1:-install}"; shift || true

APT_PACKAGES=(softhsm2 opensc swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-dev libtss2-tcti-tabrmd0
  libtpm2-pkcs11-1 libtpm2-pkcs11-tools dbus-daemon openssl gcc libc6-dev pkg-config
  python3 python3-dev python3-venv wrk curl ca-certificates)

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing system packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup.sh: installing system packages needs root" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${CSM_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.csm-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c "import sms, hsm" 2>/dev/null; then
  step "installing csm and its dependencies into $VENV (tpm2-pytss builds from source: ~1 min)"
  "$VENV/bin/pip" install -q -e ".[test]"
  echo "$want" > "$stamp"
fi

case "$mode" in
  serve) exec "$VENV/bin/csm" serve "$@" ;;
  test)  step "running the test suite"; exec "$VENV/bin/python" -m pytest "$@" ;;
  install) step "installed: $VENV/bin/csm" ;;
  *) echo "usage: scripts/setup.sh serve|test|install [args]" >&2; exit 2 ;;
esac
