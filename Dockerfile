# Build with the official Rust image; run on slim Debian as a non-root user.
# scripts/test.sh runs this same build command, so CI catches a broken step.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
RUN cargo build --release --locked

FROM debian:bookworm-slim
# The trusted roots a rediss:// REDIS_URL is checked against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chat
COPY --from=build /src/target/release/e2e-chat-server /usr/local/bin/e2e-chat-server
USER chat
ENV HOST=0.0.0.0 \
    PORT=3001 \
    NODE_ENV=production
EXPOSE 3001
# The binary probes its own /health: no curl needed in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["e2e-chat-server", "healthcheck"]
STOPSIGNAL SIGTERM
CMD ["e2e-chat-server"]
