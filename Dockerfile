# syntax=docker/dockerfile:1
# walcast container image: build in the official Rust image, run in a slim Debian with only the
# binary, CA certificates and a non-root user.
#
#   docker build -t walcast .
#   docker run --rm -v $PWD/walcast.toml:/etc/walcast/walcast.toml:ro -e WALCAST_PG_PASSWORD=... \
#       -p 9187:9187 walcast run --config /etc/walcast/walcast.toml
#
# The config must set `[metrics] listen = "0.0.0.0:9187"` for the metrics port to be reachable
# from outside the container (the default is loopback only).

FROM rust:1-slim-bookworm AS build
# rdkafka builds a vendored librdkafka (configure + make) and OpenSSL (perl): C toolchain needed.
# Versions are not pinned (DL3008): bookworm's point releases would break pinned builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make perl gcc g++ libc6-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds (BuildKit).
# Profile `dist` (Cargo.toml) is release with `strip = true`: the image ships a binary without
# symbols or debug info (~21 MB instead of ~131 MB); `cargo build --release` keeps its line tables.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin walcast \
    && install -m 0755 target/dist/walcast /usr/local/bin/walcast

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 walcast \
    && useradd --system --uid 10001 --gid walcast --home-dir /var/lib/walcast --create-home --shell /usr/sbin/nologin walcast
COPY --from=build /usr/local/bin/walcast /usr/local/bin/walcast
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/walcast
EXPOSE 9187
# Docker's health check asks GET /healthz (the process serves HTTP: alive) through bash's
# /dev/tcp: bash is part of every Debian image, so no HTTP client and no extra code ship for it.
# The metrics port must be reachable on 127.0.0.1 inside the container (listen on 0.0.0.0:9187
# or 127.0.0.1:9187); another port is set with WALCAST_HEALTH_PORT. Kubernetes probes /healthz
# (liveness) and /readyz (readiness) itself (deploy/k8s) and ignores this.
ENV WALCAST_HEALTH_PORT=9187
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WALCAST_HEALTH_PORT} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 4 status <&3 && [[ $status == *' 200 '* ]]"]
ENTRYPOINT ["walcast"]
CMD ["run", "--config", "/etc/walcast/walcast.toml"]
