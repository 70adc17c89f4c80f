#!/usr/bin/env bash
# Installs what the browser suite needs when it is missing (Debian's chromium,
# the npm packages from package-lock.json), builds the server unless
# E2E_SERVER_BIN points at one, and runs the suite.
set -euo pipefail
cd "$(dirname "$0")"

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_BIN" ]; then
  echo "# installing chromium from Debian's packages" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi

if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/socket.io-client ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund >&2
fi

if [ -z "${E2E_SERVER_BIN:-}" ]; then
  (cd ../.. && cargo build --quiet --bin e2e-chat-server) >&2
fi

exec node run.mjs
