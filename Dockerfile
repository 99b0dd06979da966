# Portcullis: one static-ish Rust binary on a small Debian base, running as a non-root user that
# may still bind 443/80 (file capability, not root).
# Build: docker build -t portcullis:local .     (docker compose builds it for you)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
COPY scripts/build-release scripts/build-release
# The same script CI runs: cargo build --release --locked, then strip.
RUN scripts/build-release

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
RUN setcap cap_net_bind_service=+ep /usr/local/bin/portcullis \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin portcullis \
 && mkdir -p /data /config \
 && chown portcullis:portcullis /data && chmod 0700 /data
USER portcullis
# Revoked sessions and the ACME cache (autocert_dir defaults to /data/autocert).
VOLUME /data
# Mount the config *directory* read-only at /config: editors replace the file on save, and a
# single-file bind mount would keep showing the old one.
ENV PORTCULLIS_CONFIG=/config/config.yaml
EXPOSE 443 80
# Probes /readyz on the config's metrics_address (healthy once the IdP has been discovered).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["portcullis", "health"]
ENTRYPOINT ["portcullis"]
