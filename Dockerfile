# Portcullis: one static-ish Rust binary on a small Debian base, running as a non-root user that
# may still bind 443/80 (file capability, not root).
# Build: docker build -t portcullis:local .     (docker compose builds it for you)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY examples examples
COPY scripts/build-release scripts/build-release
# The dependencies first, in a layer of their own (against a stub src/): an edit of src/ then
# rebuilds only Portcullis itself, not the ~200 crates under it.
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && scripts/build-release \
 && rm -rf src target/release/*portcullis* target/release/deps/*portcullis* \
      target/release/.fingerprint/portcullis-*
COPY src src
# The same script CI runs: cargo build --release --locked, then strip.
RUN scripts/build-release \
 && gzip -9 --stdout target/release/portcullis > /portcullis.gz

FROM debian:bookworm-slim
# The binary comes in compressed and is unpacked by the step that gives it its capability: a
# layer that sets a file capability holds a whole copy of the file, and the classic builder's COPY
# drops file capabilities, so this keeps one full copy in the image rather than two. The CA
# bundle (for upstreams' and IdPs' certificates; Mozilla's roots are compiled in as well) is
# Debian's, from the build image, without the openssl package that ca-certificates would bring.
COPY --from=build /portcullis.gz /tmp/portcullis.gz
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && gunzip --stdout /tmp/portcullis.gz > /usr/local/bin/portcullis && rm /tmp/portcullis.gz \
 && chmod 0755 /usr/local/bin/portcullis \
 && setcap cap_net_bind_service=+ep /usr/local/bin/portcullis \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
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
