#!/usr/bin/env bash
# Installs everything the broker needs on a fresh Debian machine, idempotently:
#   - apt: softhsm2 (PKCS#11 token), opensc (pkcs11-tool), nodejs/npm, chromium and
#     chromium-driver (the browser test of the listener's pages) when missing
#   - a venv in .venv with exactly the versions of requirements/dev.lock (hash-checked), then
#     the broker (dome-token-broker) and the client distribution (clients/python) editable
#     without dependencies: the lock is the only source of third-party packages
#   - the pinned oidc-provider test peer (tests/peer, from its lockfile)
#   - the pinned buf CLI for `make lint` (tools/buf, from its lockfile)
# Never touches the system SoftHSM token directory.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # headless browser test of the listener's pages
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing apt packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml clients/python/pyproject.toml requirements/dev.lock | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "bootstrap: installing requirements/dev.lock, the broker and the client into .venv"
  log=.venv/bootstrap-pip.log
  # the distribution was called "broker" before it became dome-token-broker: drop the old one
  old_dist() { if .venv/bin/pip show -q broker >/dev/null 2>&1; then .venv/bin/pip uninstall -q -y broker; fi; }
  if ! { .venv/bin/pip install -q --upgrade pip \
      && .venv/bin/pip install -q --require-hashes -r requirements/dev.lock \
      && old_dist \
      && .venv/bin/pip install -q --no-deps -e . \
      && .venv/bin/pip install -q --no-deps -e clients/python; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "bootstrap: pip install failed (log above, kept in $log)" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if [ -f tests/peer/package-lock.json ]; then
  lockstamp=tests/peer/node_modules/.installed-$(sha256sum tests/peer/package-lock.json | cut -c1-16)
  if [ ! -e "$lockstamp" ]; then
    echo "bootstrap: installing the oidc-provider test peer (npm ci)"
    (cd tests/peer && npm ci --silent --no-audit --no-fund >/dev/null)
    touch "$lockstamp"
  fi
fi

if [ -f tools/buf/package-lock.json ]; then
  lockstamp=tools/buf/node_modules/.installed-$(sha256sum tools/buf/package-lock.json | cut -c1-16)
  if [ ! -e "$lockstamp" ]; then
    echo "bootstrap: installing the buf CLI (npm ci)"
    (cd tools/buf && npm ci --silent --no-audit --no-fund >/dev/null)
    touch "$lockstamp"
  fi
fi
