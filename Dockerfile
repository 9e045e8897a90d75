# One image with the three service binaries; compose.yaml picks the binary with `command`.
#
#   docker build -t outbox-services .
#
# Stage 1 builds only the dependencies (librdkafka and OpenSSL from source among them, several
# minutes) from the manifests, so that layer is reused until Cargo.toml or Cargo.lock change;
# stage 2 builds the workspace's own code on top of it.
FROM rust:1.95-bookworm AS deps
# librdkafka (and OpenSSL, for TLS to the broker) are built from source by rdkafka-sys.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY outbox-core/Cargo.toml outbox-core/
COPY order-api/Cargo.toml order-api/
COPY outbox-relay/Cargo.toml outbox-relay/
COPY catalog-consumer/Cargo.toml catalog-consumer/
COPY testkit/Cargo.toml testkit/
COPY system-tests/Cargo.toml system-tests/
COPY bench/Cargo.toml bench/
# Empty targets with the manifests' names, so cargo resolves and compiles every dependency.
RUN for crate in outbox-core order-api outbox-relay catalog-consumer testkit system-tests bench; do \
      mkdir -p $crate/src && echo '' > $crate/src/lib.rs; \
    done \
 && for bin in order-api outbox-relay catalog-consumer; do echo 'fn main() {}' > $bin/src/main.rs; done \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo build --release --locked -p order-api -p outbox-relay -p catalog-consumer

FROM deps AS build
COPY . .
# No query needs a live database at build time.
ENV SQLX_OFFLINE=true
# The copied sources are newer than the empty targets, so only the workspace crates rebuild.
RUN touch -c */src/lib.rs */src/main.rs \
 && cargo build --release --locked -p order-api -p outbox-relay -p catalog-consumer \
 && mkdir /out \
 && cp target/release/order-api target/release/outbox-relay target/release/catalog-consumer /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 app
COPY --from=build /out/ /usr/local/bin/
USER app
# Each binary's `healthcheck` asks its own GET /readyz (the image has no curl). compose.yaml
# sets the matching command for outbox-relay and catalog-consumer.
HEALTHCHECK --interval=5s --timeout=4s --start-period=20s --retries=5 CMD ["order-api", "healthcheck"]
CMD ["order-api"]
