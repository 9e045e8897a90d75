# One image with the three service binaries; compose.yaml picks the binary with `command`.
FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka-sys.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# No query needs a live database at build time.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/order-api target/release/outbox-relay target/release/catalog-consumer /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 app
COPY --from=build /out/ /usr/local/bin/
USER app
CMD ["order-api"]
