#!/usr/bin/env bash
# Side-by-side benchmark of e2e-chat-server (Rust) and the Node.js reference
# server (bench/reference/), on this machine, in one run.
#
#   bench/compare.sh            quick comparison (~10 minutes in all)
#   bench/compare.sh --full     the figures for RESULTS.md (~20-25 minutes)
#   bench/compare.sh --smoke    1 000 connections, 10 s, tiny scenarios; no
#                               thresholds: only checks that the harness works
#
# Options:
#   --only rust|node       run one server only
#   --scenarios a,b,...    subset of: fanout,max5,max50,idle,history,large
#                          (results of the other scenarios from the previous
#                          run in the same work directory stay in the report)
#   --out FILE             markdown output (default bench/RESULTS.md; smoke
#                          mode writes only under the work directory)
#   --no-build             use the binaries and node_modules already there
#   --prio rt|nice|none    scheduling of servers and load generator (default
#                          rt when root: SCHED_RR priority 10, so that other
#                          work on a shared machine cannot stall them; the
#                          kernel's RT throttling still leaves others 5%)
#
# Each server gets a fresh process per scenario, pinned to core 0
# (taskset -c 0); the load generator runs on core 1. Everything listens and
# connects on 127.0.0.1 only. Every scenario is bounded in count and time.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODE=quick
ONLY=""
SCENARIOS=""
OUT=""
BUILD=1
PRIO_MODE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --smoke) MODE=smoke ;;
    --only) ONLY="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --prio) PRIO_MODE="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

WORK="${BENCH_WORK_DIR:-$ROOT/target/bench-$( [ "$MODE" = smoke ] && echo smoke || echo compare)}"
mkdir -p "$WORK"
if [ -z "$OUT" ]; then
  if [ "$MODE" = smoke ]; then OUT="$WORK/RESULTS-smoke.md"; else OUT="$ROOT/bench/RESULTS.md"; fi
fi

# Servers and client hold one descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
  echo "warning: ulimit -n is $(ulimit -n); the idle scenario needs ~10 100" >&2
fi

CORES=$(nproc)
if [ "$CORES" -ge 2 ]; then SERVER_CPU=0; CLIENT_CPU=1; else SERVER_CPU=0; CLIENT_CPU=0; fi
if [ -z "$PRIO_MODE" ]; then
  if [ "$(id -u)" = 0 ] && chrt -r 10 true 2>/dev/null; then PRIO_MODE=rt; else PRIO_MODE=none; fi
fi
case "$PRIO_MODE" in
  rt) PRIO=(chrt -r 10) ;;
  nice) PRIO=(nice -n -15) ;;
  none) PRIO=() ;;
  *) echo "--prio must be rt, nice or none" >&2; exit 2 ;;
esac

BENCH="$ROOT/target/release/e2e-chat-bench"
RUST_SERVER="$ROOT/target/release/e2e-chat-server"
REF="$ROOT/bench/reference"

servers=(rust node)
if [ -n "$ONLY" ]; then servers=("$ONLY"); fi
have_node=1
if ! command -v node >/dev/null; then
  have_node=0
  echo "warning: node not found; running the Rust server only" >&2
  servers=(rust)
fi

if [ "$BUILD" = 1 ]; then
  echo "== building (cargo build --release -p e2e-chat-server -p e2e-chat-bench)"
  cargo build --release -p e2e-chat-server -p e2e-chat-bench
  if [ "$have_node" = 1 ] && [[ " ${servers[*]} " == *" node "* ]]; then
    echo "== npm ci in bench/reference"
    (cd "$REF" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

# ---------------------------------------------------------------- scenarios
# name|bench arguments; sizes per mode.
case "$MODE" in
  smoke)
    DEFAULT_SCEN="fanout,idle,history,large"
    A_FANOUT="fanout --sessions 200 --users 5 --rate 1 --duration 10"
    A_MAX5="max --sessions 100 --users 5 --start 5000 --step-secs 3 --max-steps 3 --refine 0"
    A_MAX50="max --sessions 20 --users 50 --start 5000 --step-secs 3 --max-steps 3 --refine 0"
    A_IDLE="idle --connections 1000 --hold 2"
    A_HISTORY="history --sessions 5 --joiners 4 --levels 0,50"
    A_LARGE="large --sizes 1000000 --sessions 1 --count 2"
    ;;
  quick)
    DEFAULT_SCEN="fanout,max5,max50,idle,history,large"
    A_FANOUT="fanout --sessions 100 --users 5 --rate 10 --duration 10"
    A_MAX5="max --sessions 100 --users 5 --start 10000 --factor 1.6 --step-secs 5 --max-steps 12 --refine 2 --drain 3"
    A_MAX50="max --sessions 20 --users 50 --start 10000 --factor 1.6 --step-secs 5 --max-steps 12 --refine 2 --drain 3"
    A_IDLE="idle --connections 5000 --hold 5"
    A_HISTORY="history --sessions 20 --joiners 10 --levels 0,50,500"
    A_LARGE="large --sizes 1000000,5000000 --sessions 2 --count 5"
    ;;
  full)
    DEFAULT_SCEN="fanout,max5,max50,idle,history,large"
    A_FANOUT="fanout --sessions 100 --users 5 --rate 10 --duration 30"
    A_MAX5="max --sessions 100 --users 5 --start 10000 --factor 1.5 --step-secs 10 --max-steps 14 --refine 3"
    A_MAX50="max --sessions 20 --users 50 --start 10000 --factor 1.5 --step-secs 10 --max-steps 14 --refine 3"
    A_IDLE="idle --connections 10000 --hold 10"
    A_HISTORY="history --sessions 50 --joiners 10 --levels 0,50,500"
    A_LARGE="large --sizes 1000000,5000000 --sessions 4 --count 20"
    ;;
esac
SCEN="${SCENARIOS:-$DEFAULT_SCEN}"

# A full run starts from a clean slate; a run of a subset (--scenarios,
# --only) replaces only its own results, so the report still shows the rest.
if [ -z "$SCENARIOS" ] && [ -z "$ONLY" ]; then
  rm -f "$WORK"/*.json "$WORK"/*.log "$WORK"/*.txt "$WORK"/*.md
fi
IFS=',' read -r -a scen_list <<<"$SCEN"
for scen in "${scen_list[@]}"; do
  for kind in "${servers[@]}"; do rm -f "$WORK/$kind-$scen".*; done
done

args_of() {
  case "$1" in
    fanout) echo "$A_FANOUT" ;;
    max5) echo "$A_MAX5" ;;
    max50) echo "$A_MAX50" ;;
    idle) echo "$A_IDLE" ;;
    history) echo "$A_HISTORY" ;;
    large) echo "$A_LARGE" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}

# ---------------------------------------------------------------- servers
SERVER_PID=""
# Below the kernel's ephemeral range (32768-60999 by default), so that no
# client connection of this or another program holds the port.
PORT_BASE=${BENCH_PORT_BASE:-21100}
PORT=$PORT_BASE

launch_server() { # kind, log file; uses $PORT
  local kind=$1 log=$2
  case "$kind" in
    rust)
      env HOST=127.0.0.1 PORT="$PORT" CLIENT_URL=http://localhost:5173 \
        MAX_SOCKETS_PER_IP=0 MAX_CONNECTIONS_PER_IP=0 HANDSHAKE_RATE_PER_IP=0 RESERVE_RATE_PER_IP=0 MAX_SESSIONS_PER_IP=0 \
        SEND_RATE_PER_SOCKET=0 MAX_CONNECTIONS=100000 METRICS_ADDR="127.0.0.1:$((PORT + 1000))" \
        "${PRIO[@]}" taskset -c "$SERVER_CPU" "$RUST_SERVER" >"$log" 2>&1 &
      ;;
    node)
      (cd "$REF" && exec env HOST=127.0.0.1 PORT="$PORT" CLIENT_URL=http://localhost:5173 \
        "${PRIO[@]}" taskset -c "$SERVER_CPU" node server.js) >"$log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  stop_server
  return 1
}

start_server() { # kind, log file; a fresh port each time, a few tries
  local try
  for try in 1 2 3 4 5; do
    PORT=$((PORT + 1))
    if launch_server "$1" "$2"; then return 0; fi
    echo "warning: $1 server did not come up on port $PORT (try $try); log:" >&2
    tail -5 "$2" >&2
  done
  return 1
}

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT INT TERM

# ---------------------------------------------------------------- run
date -u +"%Y-%m-%d %H:%M:%S UTC" >"$WORK/date.txt"
cat /proc/loadavg >"$WORK/loadavg-start.txt"
failures=0
for scen in "${scen_list[@]}"; do
  args=$(args_of "$scen")
  for kind in "${servers[@]}"; do
    echo "== $scen on $kind: e2e-chat-bench $args"
    if ! start_server "$kind" "$WORK/$kind-$scen-server.log"; then
      echo "error: the $kind server did not start; skipping $scen on $kind" >&2
      failures=$((failures + 1))
      continue
    fi
    # shellcheck disable=SC2086 # $args is a list of words
    if ! timeout 900 "${PRIO[@]}" taskset -c "$CLIENT_CPU" "$BENCH" \
        --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
        --out "$WORK/$kind-$scen.json" $args \
        > >(tee "$WORK/$kind-$scen.txt") 2> >(tee "$WORK/$kind-$scen.log" >&2); then
      echo "error: $scen on $kind failed" >&2
      failures=$((failures + 1))
    fi
    stop_server
    sleep 1
  done
done
cat /proc/loadavg >"$WORK/loadavg-end.txt"

# ---------------------------------------------------------------- report
{
  echo "- date: $(cat "$WORK/date.txt")"
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (with uncommitted changes in src/)')"
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
  echo "- memory: $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
  echo "- kernel: $(uname -r)"
  echo "- node: $(node --version 2>/dev/null || echo none), socket.io $(node -p "require('$REF/node_modules/socket.io/package.json').version" 2>/dev/null || echo '?'); rustc: $(rustc --version 2>/dev/null | cut -d' ' -f2)"
  echo "- load average at start / end: $(cut -d' ' -f1-3 "$WORK/loadavg-start.txt") / $(cut -d' ' -f1-3 "$WORK/loadavg-end.txt")"
  echo "- mode: $MODE; server on core $SERVER_CPU, load generator on core $CLIENT_CPU, scheduling: $PRIO_MODE ($( [ ${#PRIO[@]} -gt 0 ] && echo "${PRIO[*]}" || echo default))"
} >"$WORK/machine.md"

python3 "$ROOT/bench/report.py" --work "$WORK" --mode "$MODE" --out "$OUT" \
  --command "bench/compare.sh $( [ "$MODE" = quick ] || echo "--$MODE" )"
echo "== wrote $OUT"
if [ "$failures" -gt 0 ]; then
  echo "error: $failures scenario runs failed" >&2
  exit 1
fi
