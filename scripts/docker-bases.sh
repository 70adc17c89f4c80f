#!/usr/bin/env bash
# Makes the images that the Dockerfile (FROM rust:1-bookworm, FROM
# debian:bookworm-slim) and docker-compose.yml (redis:7-alpine,
# nginx:1.27-alpine) name available to the local Docker engine, so that both
# files build and run unchanged:
#   - an official image already there is used as it is;
#   - otherwise `docker pull` is tried: a machine with registry access gets
#     the official images;
#   - otherwise (no registry reachable) a stand-in is made from Debian
#     packages and tagged with the official name:
#       debian:bookworm-slim  `debootstrap --variant=minbase bookworm`, imported
#       rust:1-bookworm       that + gcc, libc6-dev, pkg-config, ca-certificates,
#                             this machine's Rust toolchain (rustc --print sysroot)
#                             and its CA bundle (cargo reaches crates.io through
#                             the proxy that bundle trusts)
#       redis:7-alpine        that + Debian's redis-server 7.0 and redis-cli
#       nginx:1.27-alpine     that + Debian's nginx (1.22: no `resolve` on
#                             upstream servers, see scripts/test-docker.sh)
# A stand-in carries the label e2e-chat.stand-in, a digest of its recipe (this
# script, its base image, the toolchain); one whose recipe changed is made
# again, a current one is kept (the Docker engine is the cache between runs).
# Usage: scripts/docker-bases.sh    (as root, with a running Docker engine;
#        installs debootstrap with apt-get when it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf -- '--> %s\n' "$*"; }
die() { echo "docker-bases: $*" >&2; exit 1; }

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=e2e-chat.stand-in
# A failed pull means no registry: the next images go straight to stand-ins.
registry=unknown

# The names this script stands in for must be the ones the files use.
from_lines=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | sort -u | tr '\n' ' ')
[ "$from_lines" = "debian:bookworm-slim rust:1-bookworm " ] \
  || die "the Dockerfile's FROM images changed ($from_lines); add their stand-ins here"
for image in redis:7-alpine nginx:1.27-alpine; do
  grep -q "^ *image: $image\$" docker-compose.yml \
    || die "docker-compose.yml no longer names $image; update this script"
done

build_args=(--network host)
for v in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -n "${!v:-}" ] && build_args+=(--build-arg "$v=${!v}")
done

stand_in_label() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }
# A digest of what makes a stand-in: its recipe (the maker function and
# helpers) and what it is built from.
digest() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

# ensure NAME DIGEST MAKER: leaves NAME usable; MAKER makes the stand-in.
ensure() {
  local name=$1 want=$2 maker=$3 have
  have=$(stand_in_label "$1")
  if docker image inspect "$name" >/dev/null 2>&1 && [ -z "$have" ]; then
    say "$name: official image present"
    return
  fi
  if [ "$registry" != down ]; then
    # The first pull finds out whether a registry answers: a network that
    # drops packets must not hold CI for long. Once one pull has worked,
    # the large images get all the time they need.
    local limit=${PULL_TIMEOUT:-900}
    [ "$registry" = up ] || limit=${PULL_PROBE_TIMEOUT:-90}
    if timeout "$limit" docker pull -q "$name" >/dev/null 2>&1; then
      registry=up
      say "$name: pulled the official image"
      return
    fi
    registry=down
    say "$name: cannot be pulled (no registry reachable): using a stand-in made from Debian packages"
  fi
  if [ "$have" = "$want" ]; then
    say "$name: stand-in is current"
    return
  fi
  say "$name: making the stand-in"
  local started=$SECONDS
  "$maker" "$name" "$want"
  say "$name: stand-in made in $((SECONDS - started)) s"
}

# A context directory for `docker build`, removed on exit.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

make_debian() {
  command -v debootstrap >/dev/null || {
    say "installing Debian's debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  local root=$workdir/rootfs
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$workdir/debootstrap.log" 2>&1 \
    || { tail -20 "$workdir/debootstrap.log" >&2; die "debootstrap failed"; }
  # As the official image: its suites with updates and security fixes, and
  # no documentation installed by later packages.
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/etc/resolv.conf "$root"/etc/hostname
  tar -C "$root" --numeric-owner -c . | docker import \
    --change "LABEL $LABEL=$2" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - "$1" >/dev/null
  rm -rf "$root"
}

# build NAME DIGEST: builds $workdir/ctx/Dockerfile as NAME.
build() {
  docker build -q "${build_args[@]}" --label "$LABEL=$2" -t "$1" "$workdir/ctx" >/dev/null
  rm -rf "$workdir/ctx"
}

make_rust() {
  local ctx=$workdir/ctx sysroot
  sysroot=$(rustc --print sysroot)
  mkdir -p "$ctx/toolchain"
  # bin, lib and libexec of the toolchain cargo runs here (its docs stay out).
  for d in bin lib libexec; do
    cp -al "$sysroot/$d" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/$d" "$ctx/toolchain/"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# This machine's bundle: it trusts the proxy crates.io is reached through.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN cargo --version && rustc --version
EOF
  build "$1" "$2"
}

make_redis() {
  local ctx=$workdir/ctx
  mkdir -p "$ctx"
  cat >"$ctx/entrypoint.sh" <<'EOF'
#!/bin/sh
# The official image builds Redis with protected mode off (a container's
# port is only reachable where it is published); Debian's has it on.
if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
fi
exec "$@"
EOF
  chmod 755 "$ctx/entrypoint.sh"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data && chown redis:redis /data
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER redis
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
  build "$1" "$2"
}

make_nginx() {
  local ctx=$workdir/ctx
  mkdir -p "$ctx"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
EOF
  build "$1" "$2"
}

docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first)"
ensure debian:bookworm-slim "$(digest "$(declare -f make_debian)" "$SUITE" "$MIRROR")" make_debian
debian=$(image_id debian:bookworm-slim)
ensure rust:1-bookworm "$(digest "$(declare -f make_rust build)" "$debian" "$(rustc -vV)")" make_rust
ensure redis:7-alpine "$(digest "$(declare -f make_redis build)" "$debian")" make_redis
ensure nginx:1.27-alpine "$(digest "$(declare -f make_nginx build)" "$debian")" make_nginx
