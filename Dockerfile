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
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin walcast \
    && install -m 0755 target/release/walcast /usr/local/bin/walcast

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
# No HEALTHCHECK: the image has no HTTP client to call /healthz with. Orchestrators probe
# GET /healthz (alive) and /readyz (streaming, sinks healthy) on the metrics port (deploy/k8s).
ENTRYPOINT ["walcast"]
CMD ["run", "--config", "/etc/walcast/walcast.toml"]
