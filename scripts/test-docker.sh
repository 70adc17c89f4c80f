#!/usr/bin/env bash
# The Docker stage of scripts/test.sh: the real Dockerfile and
# docker-compose.yml, built and run.
#   1. a Docker engine (Debian's docker.io; dockerd is started here when none
#      answers, and stopped again at the end) and a compose: the docker CLI's
#      compose plugin when it has one, else Debian's docker-compose 1.29
#      (installed when missing), which takes the same file less its top-level
#      `name:` (compose 1.x rejects it; the project is named with -p anyway);
#   2. the base images (scripts/docker-bases.sh: the official ones, or
#      stand-ins made from Debian packages where no registry is reachable);
#   3. `docker build` of the Dockerfile as the compose file's image
#      (e2e-chat-server), with host networking;
#   4. one container of it on the host's network (--network host; HOST,
#      PORT and METRICS_ADDR moved to 127.0.0.1 and free ports, so nothing
#      listens beyond the loopback): `check-config` accepts the image's
#      settings, the image's HEALTHCHECK turns it healthy, /health and
#      /metrics answer on 127.0.0.1, it runs as uid 10001 (not root), and on
#      SIGTERM (`docker stop`) it exits 0 within SHUTDOWN_DRAIN_SECS + 2 s;
#   5. the compose cluster (project e2e-chat-ci, the balancer published on
#      127.0.0.1:<free port>, the nodes' health checked every 2 s instead of
#      30 s) and a conversation through the balancer with members on three
#      nodes over WebSocket, long-polling and an upgrade (tests/docker, the real
#      socket.io-client 4.8), then `compose down`.
# The nginx the balancer runs gets deploy/nginx.conf with two CI-only changes
# (written to a temporary file and mounted instead):
#   - Docker's port publisher connects to the balancer from the network's
#     gateway, so every client has one address and lands on one node. The
#     test clients stand in for hosts behind a front balancer and say their
#     address in X-Forwarded-For; nginx takes it from there (the realip
#     module, trusting Docker's address pools only), which is the set-up
#     README "Client addresses" describes for a balancer in front of nginx.
#   - With the stand-in (Debian 12's nginx 1.22), the `resolve` parameter of
#     the upstream servers is dropped: open-source nginx has it from 1.27.3.
# Every container, network and temporary file made here is removed on exit,
# whether the stage passes or fails.
# Usage: scripts/test-docker.sh   (as root; needs Node.js with npm)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n--> %s\n' "$*"; }
die() { echo "test-docker: $*" >&2; exit 1; }
stamp() { date +%s; }

IMAGE=e2e-chat-server
PROJECT=e2e-chat-ci
# The image's SHUTDOWN_DRAIN_SECS default, and what a clean stop may take past it.
DRAIN_SECS=1
STOP_SLACK_SECS=2

tmp=$(mktemp -d)
single=""
compose=()
dockerd_pid=""

cleanup() {
  local status=$?
  set +e
  if [ -n "$single" ]; then
    [ $status -ne 0 ] && docker logs --tail 40 "$single" 2>&1 | sed 's/^/  single| /'
    docker rm -f "$single" >/dev/null 2>&1
  fi
  if [ ${#compose[@]} -gt 0 ]; then
    [ $status -ne 0 ] && "${compose[@]}" logs --no-color --tail 60 2>&1 | sed 's/^/  /'
    "${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 \
      || echo "test-docker: compose down failed" >&2
  fi
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# --- engine and compose ---------------------------------------------------------
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || die "missing: $* (run: sudo apt-get install $*)"
  say "installing Debian packages: $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v dockerd >/dev/null && command -v docker >/dev/null || apt_install docker.io
command -v curl >/dev/null || apt_install curl
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $tmp/dockerd.log)"
  dockerd >"$tmp/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$tmp/dockerd.log" >&2; die "dockerd did not start"; }
fi

compose_file=docker-compose.yml
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  command -v docker-compose >/dev/null || apt_install docker-compose
  compose_cmd=(docker-compose)
  # Compose 1.x does not know the top-level `name:` (the -p below names the
  # project in both); everything else is the file as it is.
  sed '/^name:/d' docker-compose.yml >"$tmp/docker-compose.yml"
  compose_file=$tmp/docker-compose.yml
fi
echo "compose: $("${compose_cmd[@]}" version 2>/dev/null | head -1)"

# --- images ---------------------------------------------------------------------
say "base images"
t=$(stamp)
scripts/docker-bases.sh
echo "base images ready in $(($(stamp) - t)) s"

say "docker build -t $IMAGE . (the Dockerfile as it is)"
t=$(stamp)
build_args=(--network host)
for v in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -n "${!v:-}" ] && build_args+=(--build-arg "$v=${!v}")
done
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
docker build -q "${build_args[@]}" -t "$IMAGE" . >"$tmp/build.log" 2>&1 \
  || { tail -40 "$tmp/build.log" >&2; die "docker build failed"; }
# The image this one replaces (its dependency layer stays shared): removed,
# so that a CI machine does not gather one image per commit.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi
echo "image built in $(($(stamp) - t)) s: $(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$IMAGE")"

# --- one container --------------------------------------------------------------
say "one container: healthy, not root, exits 0 on SIGTERM"
docker run --rm --network none "$IMAGE" e2e-chat-server check-config >/dev/null \
  || die "check-config refuses the image's settings"
port=$(free_port)
metrics_port=$(free_port)
single=e2e-chat-ci-single-$$
# The image's HEALTHCHECK command (which probes HOST:PORT), run every second
# instead of every 30 s.
docker run -d --name "$single" --network host \
  -e HOST=127.0.0.1 -e PORT="$port" -e METRICS_ADDR="127.0.0.1:$metrics_port" \
  --health-interval 1s "$IMAGE" >/dev/null
health=""
for _ in $(seq 60); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$single")
  [ "$health" = healthy ] && break
  [ "$(docker inspect -f '{{.State.Running}}' "$single")" = true ] || die "the container stopped"
  sleep 0.5
done
[ "$health" = healthy ] || die "the container is $health, not healthy, after 30 s"
body=$(curl -sS --noproxy '*' --max-time 5 "http://127.0.0.1:$port/health")
case "$body" in *'"status":"ok"'*) ;; *) die "GET /health on 127.0.0.1:$port: $body" ;; esac
curl -sS --noproxy '*' --max-time 5 "http://127.0.0.1:$metrics_port/metrics" | grep -q '^# TYPE chat_sockets gauge' \
  || die "GET /metrics on 127.0.0.1:$metrics_port has no chat_sockets"
user=$(docker inspect -f '{{.Config.User}}' "$single")
uid=$(ps -o uid= -p "$(docker inspect -f '{{.State.Pid}}' "$single")" | tr -d ' ')
[ "$uid" = 10001 ] && [ "$user" != root ] && [ -n "$user" ] \
  || die "the server runs as uid $uid (image user '$user'), not 10001"
echo "healthy; /health on 127.0.0.1:$port: $body; /metrics on 127.0.0.1:$metrics_port; runs as $user (uid $uid)"
t0=$(date +%s%N)
docker stop -t 10 "$single" >/dev/null
took_ms=$((($(date +%s%N) - t0) / 1000000))
code=$(docker inspect -f '{{.State.ExitCode}}' "$single")
[ "$code" = 0 ] || die "exit status $code after SIGTERM"
[ "$took_ms" -le $(((DRAIN_SECS + STOP_SLACK_SECS) * 1000)) ] \
  || die "took ${took_ms} ms to stop after SIGTERM (drain ${DRAIN_SECS} s)"
docker logs "$single" 2>&1 | grep -q "shut down" || die "no 'shut down' log line"
echo "SIGTERM: exit 0 after ${took_ms} ms"
docker rm "$single" >/dev/null
single=""

# --- the compose cluster ----------------------------------------------------------
say "compose cluster: redis, chat1..chat3, nginx"
nginx_version=$(docker run --rm --network none nginx:1.27-alpine nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
{
  sed -n '1,/^http {/p' deploy/nginx.conf
  cat <<'EOF'
    # CI only (scripts/test-docker.sh): the client address from
    # X-Forwarded-For when the connection comes from Docker's port publisher
    # (Docker's default address pools).
    set_real_ip_from 172.16.0.0/12;
    set_real_ip_from 192.168.0.0/16;
    real_ip_header X-Forwarded-For;
EOF
  sed '1,/^http {/d' deploy/nginx.conf
} >"$tmp/nginx.conf"
if [ "$(printf '%s\n' "$nginx_version" 1.27.3 | sort -V | head -1)" != 1.27.3 ]; then
  echo "nginx $nginx_version has no 'resolve' on upstream servers: dropped for CI"
  sed -i 's/ resolve;/;/' "$tmp/nginx.conf"
fi
cat >"$tmp/ci.yml" <<EOF
# CI only (scripts/test-docker.sh): health checked every 2 s, and the
# balancer's config with the changes that script describes.
services:
  chat1: &ci-node
    healthcheck:
      interval: 2s
  chat2: *ci-node
  chat3: *ci-node
  lb:
    volumes:
      - $tmp/nginx.conf:/etc/nginx/nginx.conf:ro
EOF
lb_port=$(free_port)
export LB_ADDR=127.0.0.1 LB_PORT=$lb_port
compose=("${compose_cmd[@]}" -p "$PROJECT" --project-directory "$root" -f "$compose_file" -f "$tmp/ci.yml")
"${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
t=$(stamp)
"${compose[@]}" up -d --no-build >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; die "compose up failed"; }
for svc in chat1 chat2 chat3; do
  id=$("${compose[@]}" ps -q "$svc")
  for _ in $(seq 60); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && break
    sleep 0.5
  done
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] || die "$svc is not healthy after 30 s"
done
for _ in $(seq 60); do
  curl -sf --noproxy '*' --max-time 2 "http://127.0.0.1:$lb_port/ready" >/dev/null && break
  sleep 0.5
done
curl -sf --noproxy '*' --max-time 2 "http://127.0.0.1:$lb_port/ready" >/dev/null \
  || die "the balancer does not answer /ready on 127.0.0.1:$lb_port"
echo "cluster up in $(($(stamp) - t)) s; balancer on 127.0.0.1:$lb_port"

say "a conversation through the balancer (tests/docker, socket.io-client 4.8)"
containers=""
for svc in chat1 chat2 chat3 lb; do containers+="$svc=$("${compose[@]}" ps -q "$svc"),"; done
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$("${compose[@]}" ps -q chat1)")
(cd tests/docker && npm ci --no-audit --no-fund --loglevel=error \
  && E2E_LB_URL="http://127.0.0.1:$lb_port" E2E_CONTAINERS="${containers%,}" E2E_NETWORK="$network" \
     node --test)

say "compose down"
"${compose[@]}" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || die "compose down failed"
compose=()
echo "docker stage passed"
