#!/usr/bin/env bash
# Cost of the server's cluster mode, on this machine, in one run: the same
# load against
#   mem1    1 node, embedded in-memory store (no REDIS_URL) -- the baseline
#   redis1  1 node, sessions in Redis (REDIS_URL), socketioxide-redis adapter
#   redis3  3 nodes sharing one Redis; the load generator spreads the members
#           of every session over the three (member j of session s on node
#           (s + j) % 3), so nearly every broadcast crosses nodes via pub/sub
# Scenarios (as compare.sh names them, with shorter steps):
#   max5    highest sustainable deliveries/s, 100 sessions x 5 users
#   max50   the same, 20 sessions x 50 users
#   fanout  fixed rate, 100 sessions x 5 users x 10 msgs/s (20 000
#           deliveries/s): latency p50/p99
# Each run gets a fresh redis-server (--save '' --appendonly no, on a free
# port) and fresh server processes. Every fanout/max step reads Redis's
# INFO commandstats and INFO cpu before and after (e2e-chat-bench --redis),
# which gives Redis calls (evalsha/eval, publish, all) per send-message.
# Results: bench/CLUSTER-RESULTS.md (generated block; notes below it stay),
# scratch output in target/bench-cluster/.
#
#   bench/cluster.sh            the full run (~7 minutes after the build)
#   bench/cluster.sh --smoke    tiny sizes, ~1 minute; writes only under
#                               target/bench-cluster-smoke/
#
# Options:
#   --configs a,b,...    subset of mem1,redis1,redis3 (ratios need mem1)
#   --scenarios a,b,...  subset of max5,max50,fanout
#   --out FILE           markdown output (default bench/CLUSTER-RESULTS.md)
#   --no-build           use the binaries already in target/release
#   --prio rt|nice|none  scheduling of every process started here (default
#                        rt when root: SCHED_RR priority 10, as compare.sh)
#
# Placement (2 cores): every server process AND redis-server share core 0
# (taskset -c 0), the load generator has core 1. The server side thus has
# one core in every configuration, so the ratios show what Redis and the
# cluster cost per delivery, not how 3 nodes scale on 3 machines.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODE=full
CONFIGS="mem1,redis1,redis3"
SCENARIOS="max5,max50,fanout"
OUT=""
BUILD=1
PRIO_MODE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --configs) CONFIGS="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --prio) PRIO_MODE="$2"; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

WORK="${BENCH_WORK_DIR:-$ROOT/target/bench-cluster$( [ "$MODE" = smoke ] && echo -smoke || true)}"
mkdir -p "$WORK"
if [ -z "$OUT" ]; then
  if [ "$MODE" = smoke ]; then OUT="$WORK/CLUSTER-RESULTS-smoke.md"; else OUT="$ROOT/bench/CLUSTER-RESULTS.md"; fi
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

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
SERVER="$ROOT/target/release/e2e-chat-server"
REDIS_BIN="${REDIS_SERVER_BIN:-redis-server}"
command -v "$REDIS_BIN" >/dev/null || { echo "error: $REDIS_BIN not found (Redis >= 7 needed)" >&2; exit 1; }

if [ "$BUILD" = 1 ]; then
  echo "== building (cargo build --release: e2e-chat-server and e2e-chat-bench)"
  cargo build --release
fi
[ -x "$SERVER" ] && [ -x "$BENCH" ] || { echo "error: binaries missing in target/release" >&2; exit 1; }

# ---------------------------------------------------------------- scenarios
case "$MODE" in
  smoke)
    A_MAX5="max --sessions 20 --users 5 --start 2000 --factor 2 --step-secs 2 --max-steps 2 --refine 0 --drain 3"
    A_MAX50="max --sessions 4 --users 50 --start 2000 --factor 2 --step-secs 2 --max-steps 2 --refine 0 --drain 3"
    A_FANOUT="fanout --sessions 20 --users 5 --rate 5 --duration 3 --drain 3"
    ;;
  full)
    A_MAX5="max --sessions 100 --users 5 --start 10000 --factor 1.5 --step-secs 5 --max-steps 12 --refine 3 --drain 3"
    A_MAX50="max --sessions 20 --users 50 --start 10000 --factor 1.5 --step-secs 5 --max-steps 12 --refine 3 --drain 3"
    A_FANOUT="fanout --sessions 100 --users 5 --rate 10 --duration 15 --drain 3"
    ;;
esac
args_of() {
  case "$1" in
    max5) echo "$A_MAX5" ;;
    max50) echo "$A_MAX50" ;;
    fanout) echo "$A_FANOUT" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}
nodes_of() {
  case "$1" in
    mem1) echo 1 ;;
    redis1) echo 1 ;;
    redis3) echo 3 ;;
    *) echo "unknown configuration $1" >&2; return 1 ;;
  esac
}
IFS=',' read -r -a cfg_list <<<"$CONFIGS"
IFS=',' read -r -a scen_list <<<"$SCENARIOS"
for c in "${cfg_list[@]}"; do nodes_of "$c" >/dev/null; done
for s in "${scen_list[@]}"; do args_of "$s" >/dev/null; done

if [ "$CONFIGS" = "mem1,redis1,redis3" ] && [ "$SCENARIOS" = "max5,max50,fanout" ]; then
  rm -f "$WORK"/*.json "$WORK"/*.log "$WORK"/*.txt "$WORK"/*.md
fi

# ---------------------------------------------------------------- processes
# Only the PIDs started here are ever signalled.
PIDS=()
SERVER_PIDS=()
REDIS_PID=""
REDIS_PORT=""
# Below the kernel's ephemeral range (32768-60999), away from compare.sh's ports.
NEXT_PORT=${BENCH_PORT_BASE:-21500}

port_free() {
  ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}
free_port() {
  while ! port_free "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
  echo "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}

stop_pid() {
  local pid=$1
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local pid
  # Servers first (they tell Redis their members left), then redis-server.
  for pid in "${SERVER_PIDS[@]}"; do stop_pid "$pid"; done
  if [ -n "$REDIS_PID" ]; then stop_pid "$REDIS_PID"; fi
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
  SERVER_PIDS=()
  REDIS_PID=""
  REDIS_PORT=""
}
trap stop_all EXIT INT TERM

start_redis() { # log file
  local log=$1 try
  for try in 1 2 3; do
    REDIS_PORT=$(free_port)
    "${PRIO[@]}" taskset -c "$SERVER_CPU" "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 \
      --save '' --appendonly no --daemonize no --loglevel warning >"$log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 50); do
      if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then return 0; fi
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    echo "warning: redis-server did not come up on port $REDIS_PORT (try $try)" >&2
    stop_pid "$REDIS_PID"
    REDIS_PID=""
  done
  return 1
}

start_node() { # index, log file, extra env...; appends to SERVER_PIDS and NODE_PORTS
  local i=$1 log=$2 try port pid
  shift 2
  for try in 1 2 3; do
    port=$(free_port)
    env -u REDIS_URL -u REDIS_PREFIX -u NODE_ID HOST=127.0.0.1 PORT="$port" CLIENT_URL=http://localhost:5173 \
      MAX_SOCKETS_PER_IP=0 MAX_CONNECTIONS_PER_IP=0 HANDSHAKE_RATE_PER_IP=0 RESERVE_RATE_PER_IP=0 MAX_SESSIONS_PER_IP=0 \
      SEND_RATE_PER_SOCKET=0 JOIN_RATE_PER_MIN=0 TYPING_RATE_PER_MIN=0 KEY_RATE_PER_MIN=0 \
      MAX_CONNECTIONS=100000 METRICS_ADDR=off SHUTDOWN_DRAIN_SECS=0 "$@" \
      "${PRIO[@]}" taskset -c "$SERVER_CPU" "$SERVER" >>"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
        SERVER_PIDS+=("$pid")
        NODE_PORTS+=("$port")
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    echo "warning: node $i did not come up on port $port (try $try); log:" >&2
    tail -5 "$log" >&2
    stop_pid "$pid"
  done
  return 1
}

start_config() { # config, run name
  local cfg=$1 run=$2 n i prefix
  n=$(nodes_of "$cfg")
  NODE_PORTS=()
  local extra=()
  if [ "$cfg" != mem1 ]; then
    start_redis "$WORK/$run-redis.log" || return 1
    prefix="bench$(printf '%04x' $((RANDOM)))"
    extra=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT" REDIS_PREFIX="$prefix")
  fi
  for i in $(seq 0 $((n - 1))); do
    local node_env=("${extra[@]}")
    if [ "$cfg" != mem1 ]; then node_env+=(NODE_ID="bench-node$i"); fi
    : >"$WORK/$run-node$i.log"
    start_node "$i" "$WORK/$run-node$i.log" "${node_env[@]}" || return 1
  done
}

# ---------------------------------------------------------------- run
date -u +"%Y-%m-%d %H:%M:%S UTC" >"$WORK/date.txt"
cat /proc/loadavg >"$WORK/loadavg-start.txt"
failures=0
for scen in "${scen_list[@]}"; do
  args=$(args_of "$scen")
  for cfg in "${cfg_list[@]}"; do
    run="$cfg-$scen"
    rm -f "$WORK/$run".* "$WORK/$run"-*.log
    echo "== $scen on $cfg: e2e-chat-bench $args"
    if ! start_config "$cfg" "$run"; then
      echo "error: $cfg did not start; skipping $scen on it" >&2
      failures=$((failures + 1))
      stop_all
      continue
    fi
    servers=$(printf '127.0.0.1:%s,' "${NODE_PORTS[@]}"); servers=${servers%,}
    pids=$(printf '%s,' "${SERVER_PIDS[@]}"); pids=${pids%,}
    redis_arg=()
    if [ -n "$REDIS_PORT" ]; then redis_arg=(--redis "127.0.0.1:$REDIS_PORT"); fi
    # shellcheck disable=SC2086 # $args is a list of words
    if ! timeout 600 "${PRIO[@]}" taskset -c "$CLIENT_CPU" "$BENCH" \
        --server "$servers" --server-pid "$pids" "${redis_arg[@]}" \
        --out "$WORK/$run.json" $args \
        > >(tee "$WORK/$run.txt") 2> >(tee "$WORK/$run.log" >&2); then
      echo "error: $scen on $cfg failed" >&2
      failures=$((failures + 1))
    fi
    if [ -n "$REDIS_PORT" ]; then
      redis-cli -p "$REDIS_PORT" INFO commandstats >"$WORK/$run-redis-commandstats.txt" 2>&1 || true
      redis-cli -p "$REDIS_PORT" INFO errorstats >>"$WORK/$run-redis-commandstats.txt" 2>&1 || true
    fi
    for i in "${!SERVER_PIDS[@]}"; do
      kill -0 "${SERVER_PIDS[$i]}" 2>/dev/null || echo "node $i exited during the run" >>"$WORK/$run-events.txt"
    done
    stop_all
    sleep 1
  done
done
cat /proc/loadavg >"$WORK/loadavg-end.txt"

# ---------------------------------------------------------------- report
{
  echo "- date: $(cat "$WORK/date.txt")"
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (with uncommitted changes in src/)')"
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
  echo "- kernel: $(uname -r); $("$REDIS_BIN" --version | cut -d' ' -f1-3)"
  echo "- load average at start / end: $(cut -d' ' -f1-3 "$WORK/loadavg-start.txt") / $(cut -d' ' -f1-3 "$WORK/loadavg-end.txt")"
  echo "- mode: $MODE; servers and redis-server on core $SERVER_CPU, load generator on core $CLIENT_CPU, scheduling: $PRIO_MODE ($( [ ${#PRIO[@]} -gt 0 ] && echo "${PRIO[*]}" || echo default))"
} >"$WORK/machine.md"

MODE="$MODE" WORK="$WORK" OUT="$OUT" A_MAX5="$A_MAX5" A_MAX50="$A_MAX50" A_FANOUT="$A_FANOUT" \
  python3 - <<'PY'
import json, os, re

work, out, mode = os.environ["WORK"], os.environ["OUT"], os.environ["MODE"]
CFGS = [("mem1", "1 node, memory store (baseline)"),
        ("redis1", "1 node + Redis"),
        ("redis3", "3 nodes + Redis")]

def load(cfg, scen):
    try:
        with open(os.path.join(work, f"{cfg}-{scen}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def log_problems(cfg, scen):
    n = 0
    for name in sorted(os.listdir(work)):
        if name.startswith(f"{cfg}-{scen}-node") and name.endswith(".log"):
            with open(os.path.join(work, name), errors="replace") as f:
                n += sum(1 for l in f if re.search(r"\b(WARN|ERROR)\b", l))
    return n

def fmt(v, d=0, unit=""):
    if v is None:
        return "–"
    return f"{v:,.{d}f}{unit}"

def ratio(v, base):
    if v is None or not base:
        return "–"
    return f"{v / base:.2f}×"

def pct(v):
    return "–" if v is None else f"{v * 100:.0f}%"

def per_send(step, key):
    r = (step or {}).get("redis")
    if not r or not step.get("sent"):
        return None
    return r[key] / step["sent"]

def per_delivery(step):
    r = (step or {}).get("redis")
    if not r or not step.get("delivered"):
        return None
    return (r["script_calls"] + r["publish_calls"]) / step["delivered"]

def setup_per_join(d):
    r = (d or {}).get("setup_redis")
    if not r:
        return None
    n = d["population"]["sessions"] + d["connections"]
    # A NOSCRIPT reply (script not yet cached in this fresh Redis) is
    # followed by SCRIPT LOAD and the same call again: not counted here.
    return (r["script_calls"] - (r.get("errors") or {}).get("NOSCRIPT", 0)) / max(n, 1)

def errors_of(d):
    """Redis error replies over the setup and every step, by kind."""
    tot = {}
    if not d:
        return "–"
    parts = [d.get("setup_redis")] + [s.get("redis") for s in d.get("steps", [d.get("result") or {}])]
    seen = False
    for r in parts:
        if not r:
            continue
        seen = True
        for k, v in (r.get("errors") or {}).items():
            tot[k] = tot.get(k, 0) + v
    if not seen:
        return "–"
    return ", ".join(f"{k} {v}" for k, v in sorted(tot.items())) or "none"

def best_of(m):
    return (m or {}).get("best")

def pop_of(scen):
    for cfg, _ in CFGS:
        d = load(cfg, scen)
        if d:
            p = d["population"]
            return f"{p['sessions']} sessions × {p['users']} users, {p['payload_bytes']} B"
    return "?"

def short_pop(scen):
    for cfg, _ in CFGS:
        d = load(cfg, scen)
        if d:
            return f"{d['population']['sessions']}×{d['population']['users']}"
    return "?"

rows = {}
for cfg, _ in CFGS:
    m5, m50, fo = load(cfg, "max5"), load(cfg, "max50"), load(cfg, "fanout")
    rows[cfg] = dict(m5=m5, m50=m50, fo=fo,
                     v5=m5 and m5["sustainable_deliveries_per_s"],
                     v50=m50 and m50["sustainable_deliveries_per_s"],
                     p50=fo and fo["result"]["latency"]["p50_ms"],
                     p99=fo and fo["result"]["latency"]["p99_ms"])
base = rows["mem1"]

L = []
L.append("<!-- BEGIN GENERATED by bench/cluster.sh: edits between these markers are overwritten -->")
L.append("")
L.append("Reproduce: `bench/cluster.sh` (about 7 minutes after the build; `--smoke` for a 1-minute check of the harness).")
L.append("")
L.append("Three configurations of the same server binary, measured in the same run, each with fresh "
         "processes (and a fresh `redis-server --save '' --appendonly no`) per scenario. "
         "**All server processes and redis-server share core 0; the load generator has core 1** "
         "— identical in every configuration, so the server side always has one core and the ratios "
         "measure what Redis and the cluster cost per delivery (3 nodes on one core cannot show scaling). "
         "Ratios are against the 1-node memory-store baseline of this run.")
L.append("")
L.append("## Machine")
L.append("")
with open(os.path.join(work, "machine.md")) as f:
    L.append(f.read().rstrip())
L.append("")
L.append("## Summary")
L.append("")
L.append(f"| config | max {short_pop('max5')} deliveries/s | ratio | max {short_pop('max50')} deliveries/s | ratio | fanout p50 | fanout p99 | p99 ratio | Redis script calls / send | Redis publish / send | Redis round trips / delivery | Redis commands / send (scripts' included) | script calls / reservation or join |")
L.append("| --- " * 13 + "|")
for cfg, label in CFGS:
    r = rows[cfg]
    if not (r["m5"] or r["m50"] or r["fo"]):
        continue
    st = r["fo"] and r["fo"]["result"]
    L.append(f"| {label} | {fmt(r['v5'])} | {ratio(r['v5'], base['v5'])} | {fmt(r['v50'])} | {ratio(r['v50'], base['v50'])} "
             f"| {fmt(r['p50'], 2, ' ms')} | {fmt(r['p99'], 2, ' ms')} | {ratio(r['p99'], base['p99'])} "
             f"| {fmt(per_send(st, 'script_calls'), 2)} | {fmt(per_send(st, 'publish_calls'), 2)} | {fmt(per_delivery(st), 3)} "
             f"| {fmt(per_send(st, 'total_calls'), 1)} | {fmt(setup_per_join(r['fo']), 2)} |")
L.append("")
L.append("Redis calls per send are from the fixed-rate `fanout` step (counted by `INFO commandstats` before and after the step; "
         "the few heartbeat calls of the nodes during the step are included). Redis counts the commands a Lua script runs "
         "as well, so the commands column is Redis's work, and the script and publish columns are the nodes' round trips. "
         "The last column is over the fanout setup (reservations, then joins), without the calls that got `NOSCRIPT` "
         "(script not yet in the fresh Redis's cache; the node then loads it and calls again — see the error column below).")
L.append("")

def scen_section(scen, title):
    L.append(f"## {title}")
    L.append("")
    L.append(f"`e2e-chat-bench {os.environ['A_' + scen.upper()]}`")
    L.append("")
    if scen == "fanout":
        L.append("| config | deliveries/s | delivery ratio | p50 | p90 | p99 | p99.9 | max | order violations | errors + disconnects | server CPU (all nodes) | Redis CPU | load generator CPU | script calls / send | µs of Redis per script call | publish / send | commands / send | Redis error replies (setup + step) | WARN/ERROR log lines |")
        L.append("| --- " * 19 + "|")
        for cfg, label in CFGS:
            d = load(cfg, scen)
            if not d:
                continue
            s = d["result"]; lat = s["latency"]; rd = s.get("redis") or {}
            L.append(f"| {label} | {fmt(s['deliveries_per_s'])} | {s['delivery_ratio']:.5f} | {fmt(lat['p50_ms'], 2, ' ms')} | {fmt(lat['p90_ms'], 2, ' ms')} "
                     f"| {fmt(lat['p99_ms'], 2, ' ms')} | {fmt(lat['p999_ms'], 2, ' ms')} | {fmt(lat['max_ms'], 2, ' ms')} | {s['order_violations']} "
                     f"| {s['errors'] + d['disconnects']} | {pct(s['cpu'].get('server_cpu_share'))} | {pct(rd.get('cpu_share'))} | {pct(s['cpu']['client_cpu_share'])} "
                     f"| {fmt(per_send(s, 'script_calls'), 2)} | {fmt(rd.get('script_usec_per_call'), 0)} | {fmt(per_send(s, 'publish_calls'), 2)} | {fmt(per_send(s, 'total_calls'), 1)} "
                     f"| {errors_of(d)} | {log_problems(cfg, scen)} |")
        L.append("")
        return
    L.append("| config | sustainable deliveries/s | ratio | p99 there | server CPU there (all nodes) | Redis CPU there | load generator CPU there | script calls / send there | publish / send there | steps (asked → delivered, p99, pass) | stopped because | order violations (all steps) | errors + disconnects | Redis error replies (setup + steps) | WARN/ERROR log lines |")
    L.append("| --- " * 15 + "|")
    b = rows["mem1"]["v5" if scen == "max5" else "v50"]
    for cfg, label in CFGS:
        d = load(cfg, scen)
        if not d:
            continue
        best = best_of(d) or {}
        rd = best.get("redis") or {}
        steps = "; ".join(f"{s['target_deliveries_per_s'] / 1000:.0f}k → {s['deliveries_per_s'] / 1000:.1f}k, {s['latency']['p99_ms']:.1f} ms, {'✓' if s['pass'] else '✗'}"
                          for s in d["steps"])
        ov = sum(s["order_violations"] for s in d["steps"])
        errs = sum(s["errors"] for s in d["steps"]) + d["disconnects"]
        L.append(f"| {label} | {fmt(d['sustainable_deliveries_per_s'])} | {ratio(d['sustainable_deliveries_per_s'], b)} "
                 f"| {fmt(best.get('latency', {}).get('p99_ms'), 1, ' ms')} | {pct(best.get('cpu', {}).get('server_cpu_share'))} "
                 f"| {pct(rd.get('cpu_share'))} | {pct(best.get('cpu', {}).get('client_cpu_share'))} "
                 f"| {fmt(per_send(best, 'script_calls'), 2)} | {fmt(per_send(best, 'publish_calls'), 2)} "
                 f"| {steps} | {d['stopped_because']} | {ov} | {errs} | {errors_of(d)} | {log_problems(cfg, scen)} |")
    L.append("")

def fanout_rate():
    for cfg, _ in CFGS:
        d = load(cfg, "fanout")
        if d:
            r = d["result"]
            return f"{r['per_user_rate']:g} msgs/s per user ({r['target_deliveries_per_s']:,.0f} deliveries/s asked)"
    return "?"

scen_section("max5", f"max: {pop_of('max5')} (pass = delivery ≥ 99.9 %, p99 ≤ 50 ms, no errors)")
scen_section("max50", f"max: {pop_of('max50')} (same criteria)")
scen_section("fanout", f"fanout: {pop_of('fanout')}, {fanout_rate()}")

firsts = []
for cfg, _ in CFGS:
    for scen in ("max5", "max50", "fanout"):
        d = load(cfg, scen)
        if d and d.get("first_error"):
            firsts.append(f"- {cfg}/{scen}: `{d['first_error'][:300]}`")
        ev = os.path.join(work, f"{cfg}-{scen}-events.txt")
        if os.path.exists(ev):
            with open(ev) as f:
                firsts += [f"- {cfg}/{scen}: {l.strip()}" for l in f if l.strip()]
if firsts:
    L.append("## Errors seen by the load generator")
    L.append("")
    L += firsts
    L.append("")
L.append("<!-- END GENERATED -->")
gen = "\n".join(L) + "\n"

head = "# Cluster mode: what Redis and several nodes cost\n\n"
tail = ""
if os.path.exists(out):
    with open(out) as f:
        old = f.read()
    b, e = old.find("<!-- BEGIN GENERATED"), old.find("<!-- END GENERATED -->")
    if b >= 0 and e >= 0:
        head = old[:b]
        tail = old[e + len("<!-- END GENERATED -->\n"):]
with open(out, "w") as f:
    f.write(head + gen + tail)
PY
echo "== wrote $OUT"
if [ "$failures" -gt 0 ]; then
  echo "error: $failures runs failed" >&2
  exit 1
fi
