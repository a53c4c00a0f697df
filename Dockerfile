# syntax=docker/dockerfile:1
# Build:  docker build -t sessiond .
# Run:    docker run -p 50051:50051 -v sessiond-data:/var/lib/sessiond \
#           -e SESSIOND_API_KEYS=<a key of 16+ characters> \
#           -e SESSIOND_ISSUER=<the URL verifiers reach this server at> sessiond

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# Cargo.toml names the criterion benches; cargo refuses a manifest whose
# targets are missing, even to build one binary.
COPY benches ./benches
# The workspace's other member, the load generator: cargo reads every
# member's manifest and looks for its targets even to build sessiond alone,
# which does not compile it.
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY bench/src ./bench/src
# BuildKit cache mounts keep the crate registry and the compiled
# dependencies between builds, so a change to sessiond's own source rebuilds
# sessiond alone. The binary is copied out of the cached target directory in
# the same step, as the mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin sessiond \
    && install -m 0755 target/release/sessiond /usr/local/bin/sessiond

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 sessiond \
    && useradd --system --uid 10001 --gid sessiond --home-dir /var/lib/sessiond --shell /usr/sbin/nologin sessiond \
    && mkdir -p /var/lib/sessiond \
    && chown sessiond:sessiond /var/lib/sessiond
COPY --from=build /usr/local/bin/sessiond /usr/local/bin/sessiond
USER sessiond:sessiond
WORKDIR /var/lib/sessiond
# Listening beyond loopback requires SESSIOND_API_KEYS and SESSIOND_ISSUER:
# without them the server refuses to start, with a message that says so.
ENV SESSIOND_LISTEN=0.0.0.0:50051 \
    SESSIOND_DATA_DIR=/var/lib/sessiond/data
VOLUME ["/var/lib/sessiond"]
EXPOSE 50051
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["sessiond", "health", "--timeout", "4s"]
ENTRYPOINT ["sessiond"]
CMD ["serve"]
