#!/usr/bin/env bash
# Runs every test suite of the project on a fresh machine:
#   1. installs what the tests need when it is missing (Debian's chromium and
#      redis-server, npm packages), or says exactly what is missing;
#   2. checks the formatting (cargo fmt --check, the fuzz crate included) and
#      builds the release binary exactly as the Dockerfile does;
#   3. Rust unit and integration tests (cargo test), and a check that the
#      fuzz targets still build;
#   4. the wire-compatibility suite with socket.io-client 4.8 (node --test),
#      once on the embedded store and once on the Redis store;
#   5. the multi-node suite: 3 server processes sharing one redis-server
#      (node --test in tests/cluster);
#   6. the browser suite in headless Chromium (playwright-core);
#   7. the cluster deploy files (docker-compose.yml, deploy/nginx.conf);
#   8. the Docker stage (scripts/test-docker.sh): the Dockerfile built and
#      run, and docker-compose.yml brought up for a conversation through
#      nginx across its nodes.
# Usage: scripts/test.sh            (all suites)
#        SKIP_BROWSER=1 scripts/test.sh   (no browser suite)
#        SKIP_DOCKER=1 scripts/test.sh    (no Docker stage)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

# --- prerequisites -----------------------------------------------------------
need_debs=()
command -v cargo >/dev/null || { echo "missing: a Rust toolchain (cargo); install it with rustup" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || need_debs+=(nodejs npm)
command -v redis-server >/dev/null || need_debs+=(redis-server)
# The cluster suite makes a throwaway CA for its TLS Redis.
command -v openssl >/dev/null || need_debs+=(openssl)
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
# The cluster mode's Socket.IO adapter speaks RESP3: Redis 7 or later.
redis_major=$(redis-server --version | sed -n 's/.* v=\([0-9][0-9]*\)\..*/\1/p')
[ "${redis_major:-0}" -ge 7 ] || {
  echo "redis-server is too old ($(redis-server --version)); the multi-node suite needs Redis >= 7" >&2; exit 1; }

# --- formatting ----------------------------------------------------------------
say "formatting (cargo fmt --check; the fuzz crate is outside the workspace)"
cargo fmt --version >/dev/null 2>&1 || {
  echo "missing: rustfmt (install it with: rustup component add rustfmt)" >&2; exit 1; }
cargo fmt --all --check
(cd fuzz && cargo fmt --check)

# --- build ---------------------------------------------------------------------
say "building the release binary (the Dockerfile's build step)"
docker_step=$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' Dockerfile)
[ "$docker_step" = "cargo build --release --locked" ] || {
  echo "Dockerfile build step changed ('$docker_step'); update scripts/test.sh to match" >&2; exit 1; }
$docker_step
export E2E_SERVER_BIN="$root/target/release/e2e-chat-server"
"$E2E_SERVER_BIN" --version

# --- suites --------------------------------------------------------------------
say "Rust tests (with the fault-injection hooks of the test-hooks feature)"
cargo test --locked --features test-hooks

say "fuzz targets build (running them stays out of CI: fuzz/README.md)"
(cd fuzz && cargo check --locked --all-targets)

say "wire-compatibility suite (socket.io-client 4.8)"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error && node --test)

say "wire-compatibility suite again, every server on the Redis store"
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
  || node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
(cd tests/node && E2E_REDIS_URL="redis://127.0.0.1:$redis_port" node --test)
kill $redis_pid 2>/dev/null || true
trap - EXIT

say "multi-node suite (3 nodes over Redis)"
(cd tests/cluster && npm ci --no-audit --no-fund --loglevel=error && node --test)

if [ -z "${SKIP_BROWSER:-}" ]; then
  say "browser suite (headless Chromium)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && node run.mjs)
fi

say "cluster deploy files (docker-compose.yml, deploy/nginx.conf)"
scripts/check-compose.sh

if [ -z "${SKIP_DOCKER:-}" ]; then
  say "Docker stage: the image and the compose cluster, run (scripts/test-docker.sh)"
  docker_started=$SECONDS
  scripts/test-docker.sh
  echo "Docker stage took $((SECONDS - docker_started)) s"
fi

say "all suites passed"
