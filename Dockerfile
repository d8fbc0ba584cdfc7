# The SageMaker training image: `docker run IMAGE train` runs sca-train.
#
# Built by `cargo xtask image build` (classic builder through the engine API:
# no BuildKit-only syntax such as RUN --mount). Every base is a build argument
# (pin them by digest for releases):
#   RUST_IMAGE          where the Rust toolchain comes from: any image with
#                       rustup's layout in /usr/local/rustup and /usr/local/cargo
#   CUDA_DEVEL_IMAGE    the build stage: CUDA toolkit (nvcc, headers, lib64 and
#                       lib64/stubs/libcuda.so on LIBRARY_PATH), as nvidia/cuda's
#                       devel images are
#   CUDA_RUNTIME_IMAGE  the runtime stage: the CUDA libraries of the same version,
#                       with cuDNN 9 (sca-train opens it at run time for its
#                       convolutions; without it, it uses dfdx's slower ones)
#   CUDA_COMPUTE_CAP    the GPU generation dfdx compiles its PTX for (80: Ampere,
#                       the oldest its kernels compile for with CUDA 13; the
#                       driver JIT-compiles the PTX for newer GPUs, so the image
#                       runs on A10G, L4, L40S, A100, H100 and later)
# The CUDA version must be one the GPU machine's driver accepts PTX from
# (13.0 for driver 580).
# No credentials, .git or target/ ever enter the context (.dockerignore and the
# xtask credential guard); AWS credentials come from the SageMaker role at run time.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

FROM ${RUST_IMAGE} AS rust

# ---------------------------------------------------------------- builder --
FROM ${CUDA_DEVEL_IMAGE} AS builder
ARG CUDA_COMPUTE_CAP=80
ENV DEBIAN_FRONTEND=noninteractive \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH:/opt/build-shims \
    CARGO_TERM_COLOR=never \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
# The toolchain is copied, not downloaded: it is pinned by RUST_IMAGE.
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
# C and C++ compilers (the linker driver, mimalloc; nvcc's host compiler) and
# CA certificates (crates.io), unless the base has them. There is no GPU at
# build time, but dfdx's build script asks nvidia-smi for the compute
# capability: a stand-in answers CUDA_COMPUTE_CAP.
RUN if ! command -v cc >/dev/null || ! command -v c++ >/dev/null \
       || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends build-essential ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && mkdir -p /opt/build-shims \
 && printf '#!/bin/sh\necho compute_cap\necho "$CUDA_COMPUTE_CAP"\n' > /opt/build-shims/nvidia-smi \
 && chmod 0755 /opt/build-shims/nvidia-smi \
 && cargo --version && nvcc --version | tail -n 2

WORKDIR /src

# 1. Dependencies only: the workspace manifests and lock file with stub
#    sources. This layer is rebuilt only when a manifest or Cargo.lock changes.
#    dfdx compiles some kernels at run time with NVRTC against the CUDA headers
#    it found here (/usr/local/cuda/include); runtime images carry none, so
#    they are kept for the runtime stage, and so is the toolkit's link stub of
#    the driver library (sca-train-entrypoint falls back to it on hosts
#    without a GPU).
COPY Cargo.toml Cargo.lock ./
#    The patched dfdx (vendor/dfdx/SCA-PATCH.md) is a dependency like the others.
COPY vendor vendor
COPY sca-train/Cargo.toml sca-train/Cargo.toml
COPY sca-train/spec/Cargo.toml sca-train/spec/Cargo.toml
COPY sca-train/data/Cargo.toml sca-train/data/Cargo.toml
COPY xtask/Cargo.toml xtask/Cargo.toml
COPY xtask/entry/Cargo.toml xtask/entry/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN mkdir -p sca-train/src sca-train/spec/src sca-train/data/src xtask/src xtask/entry/src tests/src \
 && echo 'fn main() {}' > sca-train/src/main.rs \
 && touch sca-train/src/lib.rs sca-train/spec/src/lib.rs sca-train/data/src/lib.rs tests/src/lib.rs xtask/src/lib.rs xtask/entry/src/lib.rs \
 && echo 'fn main() {}' > xtask/src/main.rs \
 && echo 'fn main() {}' > xtask/entry/src/main.rs \
 && cargo build --release --locked -p sca-train --features cuda \
 && cargo clean --release -p sca-train -p sca-spec -p sca-data \
 && mkdir -p /out/cuda \
 && cp -rL /usr/local/cuda/include /out/cuda/include \
 && install -D -m 0644 "$(readlink -f /usr/local/cuda/lib64/stubs/libcuda.so)" /out/cuda-stub/libcuda.so.1

# 2. The real sources of the training crates (xtask and tests keep their stubs:
#    cargo needs every workspace member, not its code). The context's files
#    carry a fixed mtime, so touch them: cargo must see them as newer than
#    the stubs. A one-line change in sca-train rebuilds only sca-train.
COPY sca-train sca-train
#    dfdx's NVRTC kernels also include its own headers from its build
#    directory, by the absolute path compiled in: kept at that path.
RUN find sca-train -type f -exec touch {} + \
 && cargo build --release --locked -p sca-train --features cuda \
 && install -D -m 0755 target/release/sca-train /out/sca-train \
 && for d in /src/target/release/build/dfdx-*/out; do \
      if [ -f "$d/cuda_utils.cuh" ]; then mkdir -p "/out/dfdx$d" && cp "$d"/*.cuh "/out/dfdx$d/"; fi; \
    done \
 && test -n "$(ls /out/dfdx)"

# ---------------------------------------------------------------- runtime --
FROM ${CUDA_RUNTIME_IMAGE}
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=builder /out/cuda/include /usr/local/cuda/include
COPY --from=builder /out/cuda-stub /opt/sca-train/cuda-stub
COPY --from=builder /out/dfdx/ /
COPY --from=builder /out/sca-train /usr/local/bin/sca-train
COPY sca-train/docker-entrypoint.sh /usr/local/bin/sca-train-entrypoint
WORKDIR /opt/ml
# Exec form, and the script execs sca-train: sca-train is PID 1 and receives
# SageMaker's SIGTERM itself. sh reads the script, so its mode does not matter.
ENTRYPOINT ["/bin/sh", "/usr/local/bin/sca-train-entrypoint"]
