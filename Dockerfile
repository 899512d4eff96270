# Multi-stage build: the release binary in a slim, non-root image.
#   docker build -t linkgate:0.1.0 .
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
COPY k8s/stub-sources.sh /usr/local/bin/
RUN sh /usr/local/bin/stub-sources.sh && cargo build --release --locked && rm -rf src benches examples
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY askama.toml ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/linkgate --shell /usr/sbin/nologin linkgate \
    && mkdir -p /var/lib/linkgate && chown linkgate:linkgate /var/lib/linkgate
COPY --from=build /src/target/release/linkgate /usr/local/bin/linkgate
USER 10001:10001
ENV LINKGATE_DATA_DIR=/var/lib/linkgate LINKGATE_LOG_FORMAT=json
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/linkgate"]
CMD ["serve"]
