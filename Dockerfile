# Container image for kube-ambassador: the ambassador sidecar that serves the Kubernetes
# API as plain HTTP on 127.0.0.1:8001 (a drop-in for `kubectl proxy`).
#
#   docker build -t kube-ambassador:0.1.0 .
#
# Stage 1 builds a fully static binary (glibc, +crt-static); stage 2 is scratch holding
# only that binary (no shell, no package manager, no libc), running as uid/gid 65532.
# .ci/deploy-checks.sh lints this file with hadolint and checkov.

# ---------------------------------------------------------------------------- builder
FROM rust:1.95-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The glibc target, linked statically. The musl target is not installed on the project's
# machines, so this is the combination CI proves; glibc >= 2.34 has the "files" and "dns"
# NSS modules built in, so getaddrinfo works without any shared library at run time.
ENV CARGO_BUILD_TARGET=x86_64-unknown-linux-gnu \
    RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TERM_COLOR=never

WORKDIR /build

# Dependency layer: only the manifest and lock file, with stub sources, so that editing
# src/ does not rebuild the ~100 crates underneath.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources, and the build script (build.rs: packed relocations). COPY keeps the
# files' own mtimes, which can be older than the stub build above, so touch the crate
# roots to make cargo rebuild this crate for certain.
COPY build.rs ./
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && bin="target/${CARGO_BUILD_TARGET}/release/kube-ambassador" \
    && if readelf -lW "$bin" | grep 'program interpreter' >/dev/null; then \
         echo "error: $bin is dynamically linked" >&2; exit 1; \
       fi \
    && "$bin" --version \
    && cp "$bin" /kube-ambassador

# ---------------------------------------------------------------------------- runtime
# scratch, not distroless/static: the binary is static and needs no file from a base
# image (CI proves it in an empty chroot, .ci/static-root.sh): no CA bundle (roots are
# the cluster's CA only), no passwd (the user is numeric), no tzdata. The image is then
# the binary alone, about 7.8 MiB.
FROM scratch

ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="kube-ambassador" \
      org.opencontainers.image.description="Ambassador sidecar for the Kubernetes API: serves it as plain HTTP on 127.0.0.1:8001 with the pod's service-account token, re-read on rotation; a drop-in for kubectl proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /kube-ambassador /kube-ambassador

# glibc's memcpy copies anything over 2 KiB with `rep movsb` on CPUs that report FSRM. On
# AMD Zen 3 and later that instruction runs 20 to 30 times slower when the destination's
# offset within its 4 KiB page is a few bytes past the source's (sourceware BZ 30994):
# 3.5 against 90 GB/s for 16 KiB on the project's EPYC machines (`cargo run --release
# --example memcpy-rate` measures a machine). The proxy's copies of decrypted TLS records
# (rustls, then into the HTTP/2 reader) hit it, and the glibc linked in above (Debian
# 12's) takes that path. Past this threshold glibc uses its vector loop instead, as fast
# on Intel: with it, a 500-pod LIST costs the proxy 20-30% less CPU (bench/). glibc reads
# it at start-up, before main, so it has to come from outside.
ENV GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=0x40000000

# 65532, the conventional "nonroot" uid; numeric so that runAsNonRoot can verify it.
USER 65532:65532

# 8001: the proxy (loopback only by default); 8002: admin (/healthz, /readyz, /metrics)
# when started with --admin-address=0.0.0.0:8002, as the manifests do.
EXPOSE 8001 8002

# No shell or HTTP client in the image to run a check with: Kubernetes probes the admin
# port instead (manifests/).
HEALTHCHECK NONE

# Exec form: the binary is PID 1 and receives SIGTERM directly.
ENTRYPOINT ["/kube-ambassador"]
