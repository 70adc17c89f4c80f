#!/usr/bin/env bash
# Checks the cluster deploy files without starting anything:
#   - docker-compose.yml: `docker compose config -q` when the docker CLI has
#     the compose plugin (it needs no daemon), then the structure below, read
#     from compose's normalised model, or else from the file with PyYAML
#     (Debian's python3-yaml, installed when missing and run as root);
#   - that it has a redis service, three chat nodes each with REDIS_URL, a
#     NODE_ID, TRUST_PROXY and metrics on the compose network (never
#     published), and an lb service mounting deploy/nginx.conf;
#   - that deploy/nginx.conf is sticky (ip_hash), lists exactly those nodes,
#     and matches the server's documented defaults (.env.example).
# Usage: scripts/check-compose.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
  echo "docker compose config -q"
  docker compose config -q
  model=$(mktemp)
  trap 'rm -f "$model"' EXIT
  docker compose config --format json >"$model"
  source=json
else
  echo "docker compose not installed: reading docker-compose.yml with PyYAML"
  if ! python3 -c 'import yaml' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing Debian packages: python3 python3-yaml"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-yaml >/dev/null
    else
      echo "missing: python3 with PyYAML (run: sudo apt-get install python3-yaml)" >&2
      exit 1
    fi
  fi
  model=docker-compose.yml
  source=yaml
fi

python3 - "$source" "$model" <<'PY'
import json, re, sys

source, model_path = sys.argv[1], sys.argv[2]
with open(model_path) as f:
    if source == "json":
        compose = json.load(f)
    else:
        import yaml
        compose = yaml.safe_load(f)  # resolves the anchors and `<<` merges

passed, failed = 0, []

def check(ok, what):
    global passed
    if ok:
        passed += 1
        print(f"ok - {what}")
    else:
        failed.append(what)
        print(f"FAILED - {what}")

def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):  # KEY=value list form
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env

def settings(path):
    """NAME=value lines of .env.example (the documented defaults)."""
    out = {}
    for line in open(path):
        m = re.match(r"\s*([A-Z_]+)=(\S*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out

defaults = settings(".env.example")
dockerfile = open("Dockerfile").read()
image_port = re.search(r"\bPORT=(\d+)", dockerfile).group(1)
image_metrics = re.search(r"\bMETRICS_ADDR=(\S+)", dockerfile)
image_metrics = image_metrics.group(1) if image_metrics else defaults["METRICS_ADDR"]
exposed = re.findall(r"^EXPOSE\s+(.+)$", dockerfile, re.M)

services = compose.get("services") or {}
chats = sorted(n for n in services if re.fullmatch(r"chat\d+", n))
check(chats == ["chat1", "chat2", "chat3"], f"three chat services chat1..chat3 (found {chats})")
check("redis" in services, "a redis service")
check("lb" in services, "an lb service")
if "redis" not in services or "lb" not in services or not chats:
    print(f"compose: {passed} passed, {len(failed)} failed")
    sys.exit(1)

# --- redis ---------------------------------------------------------------------
redis = services["redis"]
image = redis.get("image", "")
m = re.match(r"(?:.*/)?redis:(\d+)", image)
check(m is not None and int(m.group(1)) >= 7, f"redis image is Redis >= 7 (the adapter speaks RESP3): {image}")
cmd = redis.get("command") or []
cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
check("--maxmemory " in cmd + " ", "redis sets maxmemory")
check(re.search(r"--maxmemory-policy\s+noeviction", cmd) is not None, "redis uses maxmemory-policy noeviction")
test = (redis.get("healthcheck") or {}).get("test") or []
test = " ".join(test) if isinstance(test, list) else test
check("redis-cli" in test and "ping" in test, "redis has a `redis-cli ping` healthcheck")
check(not redis.get("ports"), "redis is not published on the host")

# --- chat nodes ----------------------------------------------------------------
node_ids, images = [], set()
for name in chats:
    svc = services[name]
    env = env_of(svc)
    url = env.get("REDIS_URL") or ""
    check(re.match(r"rediss?://([^@/]*@)?redis(:\d+)?(/|$)", url) is not None,
          f"{name}: REDIS_URL points at the redis service ({url!r})")
    node_ids.append(env.get("NODE_ID"))
    check(str(env.get("TRUST_PROXY", "")).lower() == "x-forwarded-for",
          f"{name}: TRUST_PROXY=x-forwarded-for (nginx appends the client address)")
    check(not svc.get("ports"), f"{name}: not published (only through the balancer)")
    metrics = str(env.get("METRICS_ADDR") or image_metrics)
    check(not metrics.startswith("127.") and metrics != "off",
          f"{name}: METRICS_ADDR on the compose network, not the container's loopback ({metrics})")
    deps = svc.get("depends_on") or {}
    cond = deps.get("redis", {}).get("condition") if isinstance(deps, dict) else None
    check(cond == "service_healthy", f"{name}: depends on redis being healthy")
    images.add(svc.get("image"))
    check("build" in svc or svc.get("image"), f"{name}: built from the Dockerfile or given an image")
check(len(set(node_ids)) == len(chats) and None not in node_ids, f"every node has its own NODE_ID ({node_ids})")
check(len(images) == 1, f"the nodes run one image ({sorted(map(str, images))})")

metrics_port = image_metrics.rsplit(":", 1)[-1]
check(not any(metrics_port in e.split() for e in exposed),
      f"the Dockerfile does not EXPOSE the metrics port {metrics_port} (-P would publish it)")

# --- lb ------------------------------------------------------------------------
lb = services["lb"]
check(lb.get("image", "").startswith("nginx:"), f"lb runs nginx ({lb.get('image')})")
mounts = []
for v in lb.get("volumes") or []:
    if isinstance(v, dict):
        mounts.append((v.get("source", ""), v.get("target", "")))
    else:
        parts = v.split(":")
        mounts.append((parts[0], parts[1] if len(parts) > 1 else ""))
check(any(s.endswith("deploy/nginx.conf") and t == "/etc/nginx/nginx.conf" for s, t in mounts),
      f"lb mounts deploy/nginx.conf as /etc/nginx/nginx.conf ({mounts})")
targets = []
for p in lb.get("ports") or []:
    if isinstance(p, dict):
        targets.append(str(p.get("target")))
    else:
        targets.append(str(p).split(":")[-1].split("/")[0])
check(len(targets) > 0, "lb publishes a port")

# --- nginx.conf ----------------------------------------------------------------
conf = re.sub(r"#[^\n]*", "", open("deploy/nginx.conf").read())

def blocks(text, head):
    """Bodies of `head ... { body }` blocks (braces balanced)."""
    out = []
    for m in re.finditer(head + r"\s*\{", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append((m, text[m.end():i - 1]))
    return out

def seconds(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", v)
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]

def size(v):
    m = re.fullmatch(r"(\d+)([kKmMgG])?", v)
    return int(m.group(1)) * {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}[(m.group(2) or "").lower() or None]

ups = blocks(conf, r"\bupstream\s+([\w.-]+)")
check(len(ups) == 1, "nginx.conf has one upstream")
if ups:
    m, body = ups[0]
    upstream = m.group(1)
    check(re.search(r"^\s*ip_hash\s*;", body, re.M) is not None, "the upstream is sticky (ip_hash)")
    servers = re.findall(r"^\s*server\s+(\S+?)(?:\s[^;]*)?;", body, re.M)
    want = [f"{n}:{env_of(services[n]).get('PORT', image_port)}" for n in chats]
    check(sorted(servers) == want, f"the upstream lists the chat nodes on their port: {servers} == {want}")
    check(re.search(rf"proxy_pass\s+http://{re.escape(upstream)}\s*;", conf) is not None,
          f"requests are proxied to upstream {upstream}")
listens = re.findall(r"^\s*listen\s+(?:[\w.\[\]:]*:)?(\d+)", conf, re.M)
check(any(t in listens for t in targets), f"lb publishes the port nginx listens on ({targets} vs {listens})")
check(re.search(r"proxy_http_version\s+1\.1\s*;", conf) is not None, "proxy_http_version 1.1 (WebSocket upgrade)")
check(re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;", conf) is not None, "passes the Upgrade header")
check(re.search(r"map\s+\$http_upgrade\s+\$(\w+)", conf) is not None
      and re.search(r"proxy_set_header\s+Connection\s+\$\w+\s*;", conf) is not None,
      "sets Connection from a map of $http_upgrade")
check(re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for\s*;", conf, re.I) is not None,
      "appends the client address to X-Forwarded-For")
body_size = re.search(r"client_max_body_size\s+(\w+)\s*;", conf)
payload = int(defaults["MAX_PAYLOAD_BYTES"])
check(body_size is not None and size(body_size.group(1)) == payload,
      f"client_max_body_size equals MAX_PAYLOAD_BYTES ({payload})")
sio = blocks(conf, r"location\s+/socket\.io/")
check(len(sio) == 1, "a location /socket.io/")
if sio:
    body = sio[0][1]
    heartbeat = (int(defaults["PING_INTERVAL_MS"]) + int(defaults["PING_TIMEOUT_MS"])) / 1000
    for d in ("proxy_read_timeout", "proxy_send_timeout"):
        t = re.search(rf"{d}\s+(\w+)\s*;", body)
        check(t is not None and seconds(t.group(1)) > heartbeat,
              f"/socket.io/ {d} exceeds PING_INTERVAL_MS + PING_TIMEOUT_MS ({heartbeat:g} s)")
    check(re.search(r"proxy_buffering\s+off\s*;", body) is not None, "/socket.io/ has proxy_buffering off")

print(f"compose: {passed} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
PY
