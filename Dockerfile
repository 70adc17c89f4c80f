# Build with the official Rust image; run on slim Debian as a non-root user.
# scripts/test.sh runs this same build command, so CI catches a broken step,
# and scripts/test-docker.sh builds and runs this file itself (with local
# stand-ins for the two base images where no registry is reachable).
FROM rust:1-bookworm AS build
WORKDIR /src
# The dependencies first, in a layer of their own (stub sources stand in for
# the workspace's), so that a change to the server's sources rebuilds only
# the server.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' >src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' >bench/src/main.rs \
    && cargo build --release --locked \
    && rm -rf src bench/src
COPY src ./src
COPY bench ./bench
# COPY keeps the files' times, which can be older than the stubs' build.
RUN touch src/main.rs src/lib.rs
RUN cargo build --release --locked

FROM debian:bookworm-slim
# The trusted roots a rediss:// REDIS_URL is checked against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chat
COPY --from=build /src/target/release/e2e-chat-server /usr/local/bin/e2e-chat-server
USER chat
# Metrics on the container's network interface, so that a Prometheus on the
# same Docker network can scrape http://<container>:9464/metrics; the
# default (127.0.0.1) is the container's own loopback, which nothing outside
# reaches. Deliberately not EXPOSEd: never publish it (`-P` would).
ENV HOST=0.0.0.0 \
    PORT=3001 \
    METRICS_ADDR=0.0.0.0:9464 \
    NODE_ENV=production
EXPOSE 3001
# The binary probes its own /health: no curl needed in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["e2e-chat-server", "healthcheck"]
STOPSIGNAL SIGTERM
CMD ["e2e-chat-server"]
