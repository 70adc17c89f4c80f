#!/usr/bin/env bash
# Where each server's time per delivery goes: user space or the kernel, and
# how many system calls of each kind it makes per delivery, at the same
# fixed load (fanout) for the Rust server and the Node.js reference.
#
#   bench/kernel-share.sh                  100 x 5 at 10 msgs/s/user, and 20 x 50 at 1 msg/s/user
#   bench/kernel-share.sh --no-build       use the binaries and node_modules already there
#
# Why: both servers write each delivery to its recipient's socket with one
# send/write call of its own, so the kernel's cost per delivery is a floor
# under either server's cost. If Node spends N µs of CPU per delivery and
# the kernel alone takes K µs of the Rust server's, no Rust user-space work
# can make Rust/Node exceed N / K at saturation.
#
# As compare.sh: each server pinned to core 0, the load generator on core 1,
# SCHED_RR when root; 127.0.0.1 only. CPU times come from /proc/<pid>/stat
# (utime, stime) over a window after the set-up; system calls from
# `perf stat -e 'syscalls:sys_enter_*'` when perf can read tracepoints
# (otherwise that column is left out). Writes a markdown table to stdout and
# to target/bench-kernel/kernel-share.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

WORK="$ROOT/target/bench-kernel"
mkdir -p "$WORK"
BENCH="$ROOT/target/release/e2e-chat-bench"
RUST_SERVER="$ROOT/target/release/e2e-chat-server"
REF="$ROOT/bench/reference"
if [ "$BUILD" = 1 ]; then
  cargo build --release -p e2e-chat-server -p e2e-chat-bench
  (cd "$REF" && npm ci --no-audit --no-fund --loglevel=error)
fi
command -v node >/dev/null || { echo "node is needed for the reference server" >&2; exit 1; }
PRIO=()
if [ "$(id -u)" = 0 ] && chrt -r 10 true 2>/dev/null; then PRIO=(chrt -r 10); fi
HZ=$(getconf CLK_TCK)
PERF=0
if command -v perf >/dev/null && perf stat -e 'syscalls:sys_enter_sendto' -- true >/dev/null 2>&1; then PERF=1; fi

# Population | rate per user | window: the load (below either server's
# saturation, so that both do the same work), and the seconds measured.
LOADS=("100 5 10" "20 50 1")
WARMUP=8
WINDOW=12

PORT=${BENCH_PORT_BASE:-21300}
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT INT TERM

start_server() { # kind
  PORT=$((PORT + 1))
  case "$1" in
    rust)
      env HOST=127.0.0.1 PORT="$PORT" CLIENT_URL=http://localhost:5173 \
        MAX_SOCKETS_PER_IP=0 MAX_CONNECTIONS_PER_IP=0 HANDSHAKE_RATE_PER_IP=0 RESERVE_RATE_PER_IP=0 \
        MAX_SESSIONS_PER_IP=0 SEND_RATE_PER_SOCKET=0 MAX_CONNECTIONS=100000 METRICS_ADDR=off \
        "${PRIO[@]}" taskset -c 0 "$RUST_SERVER" >"$WORK/$1-server.log" 2>&1 &
      ;;
    node)
      (cd "$REF" && exec env HOST=127.0.0.1 PORT="$PORT" CLIENT_URL=http://localhost:5173 \
        "${PRIO[@]}" taskset -c 0 node server.js) >"$WORK/$1-server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the $1 server did not start" >&2
  return 1
}

cpu_ticks() { # pid -> "utime stime"
  awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"
}

# A value in a JSON file: file, then the keys down to it.
json_get() {
  python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    d = d[k]
print(d)' "$@"
}

# One table row: label, kind, the run's file stem, events (deliveries or
# joins) per second, the seconds measured, utime/stime ticks before and
# after, decimals for µs and for calls. Calls come from <stem>.perf;
# the row is added to kernel-share.md.
row() {
  python3 - "$@" "$WORK" "$HZ" "$PERF" >>"$WORK/kernel-share.md" <<'EOF'
import sys
label, kind, stem, per_s, secs, u0, s0, u1, s1, us_digits, call_digits, work, hz, perf = sys.argv[1:]
per_s, secs, hz = float(per_s), float(secs), float(hz)
events = per_s * secs
user = (int(u1) - int(u0)) / hz * 1e6 / events
kernel = (int(s1) - int(s0)) / hz * 1e6 / events
d = int(us_digits)
cells = [label, kind, f"{per_s:,.0f}", f"{user + kernel:.{d}f}", f"{user:.{d}f}", f"{kernel:.{d}f}",
         f"{kernel / (user + kernel):.0%}"]
if perf == "1":
    counts = {}
    for line in open(f"{work}/{kind}-{stem}.perf"):
        parts = line.strip().split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
            try:
                counts[parts[2][len("syscalls:sys_enter_"):]] = float(parts[0])
            except ValueError:
                pass
    sends = counts.get("sendto", 0) + counts.get("write", 0) + counts.get("writev", 0)
    recvs = counts.get("recvfrom", 0) + counts.get("read", 0)
    waits = counts.get("epoll_wait", 0) + counts.get("epoll_pwait", 0)
    c = int(call_digits)
    cells += [f"{sends / events:.{c}f}", f"{recvs / events:.{c}f}", f"{waits / events:.{c}f}"]
print("| " + " | ".join(cells) + " |")
EOF
}

SYSCALLS="sendto write writev recvfrom read epoll_wait epoll_pwait"
{
  echo "| load | server | deliveries/s | CPU µs per delivery | user µs | kernel µs | kernel share | $( [ $PERF = 1 ] && echo 'send calls per delivery | recv calls per delivery | epoll waits per delivery |' )"
  echo "| --- | --- | --- | --- | --- | --- | --- | $( [ $PERF = 1 ] && echo '--- | --- | --- |' )"
} >"$WORK/kernel-share.md"

for load in "${LOADS[@]}"; do
  read -r sessions users rate <<<"$load"
  duration=$((WARMUP + WINDOW + 4))
  for kind in rust node; do
    start_server "$kind"
    "${PRIO[@]}" taskset -c 1 "$BENCH" --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
      --out "$WORK/$kind-$sessions-$users.json" \
      fanout --sessions "$sessions" --users "$users" --rate "$rate" --duration "$duration" \
      >"$WORK/$kind-$sessions-$users.txt" 2>"$WORK/$kind-$sessions-$users.log" &
    bench_pid=$!
    # The set-up (reservations and joins) comes first; wait for the load.
    for _ in $(seq 1 600); do
      grep -q '^\[step' "$WORK/$kind-$sessions-$users.log" 2>/dev/null && break
      sleep 0.1
    done
    sleep "$WARMUP"
    read -r u0 s0 < <(cpu_ticks "$SERVER_PID")
    if [ $PERF = 1 ]; then
      events=$(for s in $SYSCALLS; do printf 'syscalls:sys_enter_%s,' "$s"; done)
      perf stat -x, -e "${events%,}" -p "$SERVER_PID" -o "$WORK/$kind-$sessions-$users.perf" -- sleep "$WINDOW" >/dev/null 2>&1
    else
      sleep "$WINDOW"
    fi
    read -r u1 s1 < <(cpu_ticks "$SERVER_PID")
    wait "$bench_pid" || { echo "the load generator failed on $kind" >&2; exit 1; }
    stop_server
    per_s=$(json_get "$WORK/$kind-$sessions-$users.json" result deliveries_per_s)
    row "$sessions × $users, $rate msgs/s/user" "$kind" "$sessions-$users" "$per_s" "$WINDOW" \
      "$u0" "$s0" "$u1" "$s1" 2 3
    sleep 1
  done
done
# The join storm: the whole run of `idle` (its hold is short and idle),
# per join.
STORM=10000
{
  echo
  echo "| join storm | server | joins/s | CPU µs per join | user µs | kernel µs | kernel share | $( [ $PERF = 1 ] && echo 'send calls per join | recv calls per join | epoll waits per join |' )"
  echo "| --- | --- | --- | --- | --- | --- | --- | $( [ $PERF = 1 ] && echo '--- | --- | --- |' )"
} >>"$WORK/kernel-share.md"
for kind in rust node; do
  start_server "$kind"
  read -r u0 s0 < <(cpu_ticks "$SERVER_PID")
  if [ $PERF = 1 ]; then
    events=$(for s in $SYSCALLS; do printf 'syscalls:sys_enter_%s,' "$s"; done)
    perf stat -x, -e "${events%,}" -p "$SERVER_PID" -o "$WORK/$kind-storm.perf" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  "${PRIO[@]}" taskset -c 1 "$BENCH" --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
    --out "$WORK/$kind-storm.json" idle --connections "$STORM" --hold 1 \
    >"$WORK/$kind-storm.txt" 2>"$WORK/$kind-storm.log"
  read -r u1 s1 < <(cpu_ticks "$SERVER_PID")
  if [ $PERF = 1 ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  stop_server
  # CPU over the whole run, per join: as many seconds as STORM joins take.
  per_s=$(json_get "$WORK/$kind-storm.json" storm joins_per_s)
  row "$STORM connections in sessions of 5" "$kind" storm "$per_s" \
    "$(python3 -c "print($STORM / $per_s)")" "$u0" "$s0" "$u1" "$s1" 0 1
  sleep 1
done
cat "$WORK/kernel-share.md"
