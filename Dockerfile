# casestream container image: built in a full Rust image, run in distroless as non-root.
# Size: 46 MB, as built by scripts/check-image.sh (its distroless cc-debian12, made from the
# Debian 12 packages, 25 MB + the stripped binary 21 MB). The build stage's cache mount needs
# BuildKit (Docker 23+ by default) or podman/buildah; see docs/image-and-cluster.md.
# Works with a read-only root filesystem: the only writable path it needs is the state
# directory (a volume at /var/lib/casestream).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka builds with its own configure script; cmake is not needed.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares `[[bench]] pipeline`, and cargo refuses a manifest whose declared targets
# are missing, even for `--bin casestream`: benches/ must be here although nothing in it is
# built. (Without it: "can't find `pipeline` bench", issue 9.) tests/ needs no copy: tests are
# found by directory listing, not declared. scripts/check-image-build.sh checks this stage.
COPY benches ./benches
# target/ is a cache mount: a rebuild after a change to src/ compiles casestream alone, not its
# ~300 dependencies again (BuildKit and podman/buildah keep the mount between builds). A cache
# mount is not part of the image, so the binary is copied out of it.
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin casestream \
 && strip -o /casestream target/release/casestream \
 && mkdir -p /state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /casestream /usr/local/bin/casestream
# Owned by the runtime user, so a fresh named volume mounted here starts writable.
COPY --from=build --chown=65532:65532 /state /var/lib/casestream
# 65532 is distroless' nonroot user.
USER 65532:65532
VOLUME ["/var/lib/casestream"]
ENV CASESTREAM_STATE_DIR=/var/lib/casestream \
    CASESTREAM_ADMIN_ADDR=0.0.0.0:8080 \
    CASESTREAM_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/casestream"]
CMD ["run"]
