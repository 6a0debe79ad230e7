# syntax=docker/dockerfile:1
# The controller's image for CI systems with a Docker engine. scripts/build-image.sh builds the
# same image without one (and is what the tests run); tests/image.rs checks that this file
# agrees with it: the build target and flags, the files, the user, the entrypoint, no shell.
#
#   docker build -t kube-aws-iam-controller .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /build
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY src src
ENV CARGO_PROFILE_RELEASE_STRIP=true \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CC_x86_64_unknown_linux_musl=musl-gcc \
    RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=/build=/build --remap-path-prefix=/usr/local/cargo=/cargo"
RUN cargo build --locked --release --target x86_64-unknown-linux-musl --bin kube-aws-iam-controller
RUN install -d -m 0755 /rootfs/etc/ssl/certs \
 && install -m 0755 target/x86_64-unknown-linux-musl/release/kube-aws-iam-controller /rootfs/kube-aws-iam-controller \
 && install -m 0644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /rootfs/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' > /rootfs/etc/group

# Nothing but the binary, CA roots and the user: no shell, no libc.
FROM scratch
COPY --from=build /rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /
LABEL org.opencontainers.image.title="kube-aws-iam-controller" \
      org.opencontainers.image.source="https://github.com/OWNER/kube-aws-iam-controller" \
      org.opencontainers.image.licenses="MIT"
# Set by CI: --label org.opencontainers.image.version=... --label org.opencontainers.image.revision=...
ENTRYPOINT ["/kube-aws-iam-controller"]
