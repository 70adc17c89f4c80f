#!/usr/bin/env bash
# Runs every test suite of the project on a fresh machine:
#   1. installs what the tests need when it is missing (Debian's chromium,
#      npm packages), or says exactly what is missing;
#   2. builds the release binary exactly as the Dockerfile does;
#   3. Rust unit and integration tests (cargo test);
#   4. the wire-compatibility suite with socket.io-client 4.8 (node --test);
#   5. the browser suite in headless Chromium (playwright-core).
# Usage: scripts/test.sh            (all suites)
#        SKIP_BROWSER=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

# --- prerequisites -----------------------------------------------------------
need_debs=()
command -v cargo >/dev/null || { echo "missing: a Rust toolchain (cargo); install it with rustup" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || need_debs+=(nodejs npm)
if [ -z "${SKIP_BROWSER:-}" ] && [ ! -x /usr/bin/chromium ]; then need_debs+=(chromium); fi
if [ ${#need_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${need_debs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need_debs[*]} (run: sudo apt-get install ${need_debs[*]})" >&2
    exit 1
  fi
fi

# --- build ---------------------------------------------------------------------
say "building the release binary (the Dockerfile's build step)"
docker_step=$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' Dockerfile)
[ "$docker_step" = "cargo build --release --locked" ] || {
  echo "Dockerfile build step changed ('$docker_step'); update scripts/test.sh to match" >&2; exit 1; }
$docker_step
export E2E_SERVER_BIN="$root/target/release/e2e-chat-server"
"$E2E_SERVER_BIN" --version

# --- suites --------------------------------------------------------------------
say "Rust tests"
cargo test --locked

say "wire-compatibility suite (socket.io-client 4.8)"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error && node --test)

if [ -z "${SKIP_BROWSER:-}" ]; then
  say "browser suite (headless Chromium)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && node run.mjs)
fi

say "all suites passed"
