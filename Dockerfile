# The SageMaker training image: `docker run IMAGE train` runs sca-train.
#
# Built by `cargo xtask image build` (classic builder through the engine API:
# no BuildKit-only syntax such as RUN --mount). Pick the CUDA images with
#   --build-arg CUDA_DEVEL_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04
#   --build-arg CUDA_RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
# No credentials, .git or target/ ever enter the context (.dockerignore and the
# xtask credential guard); AWS credentials come from the SageMaker role at run time.

ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# ---------------------------------------------------------------- builder --
FROM ${CUDA_DEVEL_IMAGE} AS builder
ARG RUST_VERSION=1.95.0
ENV DEBIAN_FRONTEND=noninteractive \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    CARGO_TERM_COLOR=never
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/* \
 && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain ${RUST_VERSION}

WORKDIR /src

# 1. Dependencies only: the workspace manifests and lock file with stub
#    sources. This layer is rebuilt only when a manifest or Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
COPY sca-train/Cargo.toml sca-train/Cargo.toml
COPY sca-train/spec/Cargo.toml sca-train/spec/Cargo.toml
COPY xtask/Cargo.toml xtask/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN mkdir -p sca-train/src sca-train/spec/src xtask/src tests/src \
 && echo 'fn main() {}' > sca-train/src/main.rs \
 && touch sca-train/src/lib.rs sca-train/spec/src/lib.rs tests/src/lib.rs \
 && echo 'fn main() {}' > xtask/src/main.rs \
 && cargo build --release --locked -p sca-train --features cuda \
 && cargo clean --release -p sca-train -p sca-spec

# 2. The real sources of the training crates (xtask and tests keep their stubs:
#    cargo needs every workspace member, not its code). The context's files
#    carry a fixed mtime, so touch them: cargo must see them as newer than
#    the stubs. A one-line change in sca-train rebuilds only sca-train.
COPY sca-train sca-train
RUN find sca-train -type f -exec touch {} + \
 && cargo build --release --locked -p sca-train --features cuda \
 && install -D -m 0755 target/release/sca-train /out/sca-train

# ---------------------------------------------------------------- runtime --
FROM ${CUDA_RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/sca-train /usr/local/bin/sca-train
WORKDIR /opt/ml
# Exec form: sca-train is PID 1 and receives SageMaker's SIGTERM itself.
ENTRYPOINT ["/usr/local/bin/sca-train"]
