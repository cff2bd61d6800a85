# syntax=docker/dockerfile:1
#
# agenda container image.
#   docker build -t agenda:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 agenda:0.1.0          # SQLite, dev token printed
#   docker run --rm -e AGENDA_DATABASE_URL=postgres://… agenda:0.1.0 migrate
#
# The binary links only libc, libm and libgcc_s (PostgreSQL is spoken in pure
# Rust, no libpq; SQLite is bundled), so distroless "cc" is all it needs at run time.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# target/ and the cargo registry are cache mounts, so the binary is copied out
# of the cache inside the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin agenda \
 && install -D -m 0755 target/release/agenda /out/agenda \
 && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/agenda /usr/local/bin/agenda
# Writable data folder (only used with SQLite). In Kubernetes the chart mounts
# an emptyDir here so the root filesystem can stay read-only.
COPY --from=builder --chown=65532:65532 /out/data /var/lib/agenda
ENV AGENDA_DATA_DIR=/var/lib/agenda
WORKDIR /var/lib/agenda
# "nonroot" of distroless, written as numbers so Kubernetes' runAsNonRoot can
# verify it without a runAsUser override.
USER 65532:65532
# 50051: gRPC (h2c, or TLS when AGENDA_TLS_CERT/AGENDA_TLS_KEY are set); 9090: Prometheus /metrics
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/agenda"]
CMD ["serve"]
