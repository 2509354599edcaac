#!/usr/bin/env bash
# Installs the Debian packages that `make test` needs (the real RabbitMQ for the integration
# tests, ...). Idempotent: when everything is installed it only asks dpkg and exits at once.
# Extra package names may be given as arguments (.ci/run adds `make` and the venv module).
#
# It never starts the Debian services: the tests start their own broker as a plain process
# on loopback (tests/servers.py), so a system-wide one would only hold ports and memory.
set -euo pipefail

# ---------------------------------------------------------------------------------------
# Debian packages the test suite needs. Add new ones HERE (one per line, with the reason).
SYSTEM_PACKAGES=(
    rabbitmq-server  # AMQP broker for the integration and end-to-end tests
    chromium         # headless browser for the upload page's tests (tests/browser)
)
# ---------------------------------------------------------------------------------------

in_ci() { [[ -n "${CI:-}" && "${CI,,}" != "false" && "${CI}" != "0" ]]; }

# Outside CI a machine we cannot install on only means the server tests are skipped.
give_up() {
    echo "system-deps: $1" >&2
    if in_ci; then
        exit 1
    fi
    echo "system-deps: continuing; tests that need these packages will be skipped" >&2
    exit 0
}

wanted=("${SYSTEM_PACKAGES[@]}" "$@")

if ! command -v dpkg-query >/dev/null 2>&1; then
    give_up "not a Debian system; install by hand: ${wanted[*]}"
fi

missing=()
for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "system-deps: all present (${wanted[*]})"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    give_up "missing ${missing[*]} and not root (no password-less sudo)"
fi

# policy-rc.d answering 101 ("action forbidden") keeps the package scripts from starting
# the services they install. Only add one if the machine has none, and remove it after.
POLICY=/usr/sbin/policy-rc.d
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\n# added by restora scripts/install-system-deps.sh\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"
echo "system-deps: done"
