#!/usr/bin/env bash
# The whole GPU check in one run, for a machine with an NVIDIA GPU, PyTorch and
# no Rust: sanity, the CPU-vs-GPU loss trace, and training throughput of
# sca-train beside PyTorch (fp32, and AMP bf16 as the upper anchor).
#
#   bash sca-train/bench/gpu.sh KIT OUT
#
# KIT is what `cargo xtask cuda kit` assembled (target/gpu-kit): the
# `sca-train` binary built with `--features cuda` (with `--tests`, also its
# unit tests, `sca-train-tests.gz`, whose GPU tests run first), and the two include paths
# compiled into it, which dfdx's NVRTC kernels (concat, reshape, stack) need at
# run time: `cuda-include-dir` (CUDA's headers; linked to this machine's) and
# `dfdx-include-dir` (dfdx's build directory; its headers are in
# `dfdx-include/`). OUT receives gpu.jsonl (one JSON line per measurement)
# and env.txt; `cargo xtask bench gpu OUT` turns them into BENCHMARKS.md.
#
# Knobs (environment): DEVICE (cuda; `cpu` rehearses every step without a
# GPU, with the GPU's computation (the ops on dfdx's own kernels) on the CPU:
# `cargo xtask bench gpu --dry-run`), SIZE and BATCH (512, 8), STEPS (20),
# WARMUP (3), ROUNDS (2), TRACE_STEPS (50), TRACE_SIZE (256), DEPTH and WIDTH
# (3, 16: the quickstart U-Net), PYTHON (python3), PROFILE (1: per-kernel GPU
# times of one step by Nsight Compute into ncu.txt, when ncu is there; 0: skip),
# PROFILE_PRECISION (fp32; bf16 profiles the bf16 build of the step),
# PROFILE_TIMEOUT (150 s) and IM2COL (1: one round with cuDNN off; 0: skip).
# On cuda every round also times `--precision bf16`: as it is, with bf16
# saved activations (SCA_BF16_SAVED), and with those and the buffers from the
# driver's memory pool (SCA_CUDA_BUFFERS=pool); the loss trace runs the first
# two too.
set -euo pipefail

kit=${1:?usage: gpu.sh KIT OUT}
out=${2:?usage: gpu.sh KIT OUT}
here=$(cd "$(dirname "$0")" && pwd)
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-512}
BATCH=${BATCH:-8}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-2}
TRACE_STEPS=${TRACE_STEPS:-50}
TRACE_SIZE=${TRACE_SIZE:-256}
DEPTH=${DEPTH:-3}
WIDTH=${WIDTH:-16}
PYTHON=${PYTHON:-python3}

bin="$kit/sca-train"
# On the CPU the GPU's computation is rehearsed: the ops on dfdx's own kernels.
dev_flags=(--device "$DEVICE")
[ "$DEVICE" = cuda ] || dev_flags+=(--dfdx-ops)
mkdir -p "$out"
jsonl="$out/gpu.jsonl"
env_txt="$out/env.txt"
: >"$jsonl"
: >"$env_txt"
say() { echo "gpu.sh: $*" >&2; }
fail() { echo "gpu.sh: error: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "$bin is missing or not executable: run \`cargo xtask cuda kit\` and carry target/gpu-kit"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__)')"
} >>"$env_txt"

if [ "$DEVICE" = cuda ]; then
  command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this is not a GPU machine (DEVICE=cpu rehearses without one)"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)" >>"$env_txt"
  # The CUDA libraries the binary was linked against, and the cuDNN it opens
  # at run time, live in PyTorch's `nvidia` wheels; the driver brings libcuda.so.1.
  libdirs=$("$PYTHON" - <<'EOF'
import os, nvidia
seen = []
for base in nvidia.__path__:
    for root, _dirs, files in os.walk(base):
        if any(f.startswith(("libcublas.so", "libcublasLt.so", "libnvrtc.so", "libcudnn.so")) for f in files):
            seen.append(root)
print(":".join(sorted(set(seen))))
EOF
)
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # The driver's libcuda.so.1 is usually in the loader's cache; where it is
  # only mounted (e.g. /usr/local/nvidia), add its directory.
  if ldd "$bin" | grep 'libcuda.so.1 => not found' >/dev/null; then
    drv=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl -name 'libcuda.so.1' 2>/dev/null | head -n 1)
    if [ -n "$drv" ]; then export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$drv")"; fi
  fi
  echo "LD_LIBRARY_PATH: $LD_LIBRARY_PATH" >>"$env_txt"
  missing=$(ldd "$bin" | grep 'not found' || true)
  [ -z "$missing" ] || fail "the binary's libraries are not found: $missing"
  # Make the compiled-in include path exist: a link to a CUDA include tree here.
  inc=$(cat "$kit/cuda-include-dir")
  if [ ! -f "$inc/cuda_fp16.h" ]; then
    src=""
    for cand in "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/../include" \
      /usr/local/cuda/include $(echo "$libdirs" | tr ':' '\n' | sed 's#/lib$#/include#'); do
      if [ -f "$cand/cuda_fp16.h" ]; then src=$(cd "$cand" && pwd); break; fi
    done
    [ -n "$src" ] || fail "no CUDA include directory with cuda_fp16.h found for $inc"
    mkdir -p "$(dirname "$inc")"
    rm -rf "$inc"
    ln -s "$src" "$inc"
    echo "include: $inc -> $src" >>"$env_txt"
  fi
  # dfdx's own headers for those kernels, by the build directory's absolute path.
  dfdx_inc=$(cat "$kit/dfdx-include-dir")
  if [ ! -f "$dfdx_inc/cuda_utils.cuh" ]; then
    mkdir -p "$dfdx_inc"
    cp "$kit"/dfdx-include/*.cuh "$dfdx_inc"/
    echo "dfdx include: $dfdx_inc (from the kit)" >>"$env_txt"
  fi
fi
echo "sca-train: $("$bin" --version | tr '\n' ' ')" >>"$env_txt"
cat "$env_txt" >&2

# A trace or timing line, tagged with what it is, appended to gpu.jsonl. A
# failed measurement is recorded as {"run": tag, "error": its last stderr
# lines} and the script goes on: one device run should bring back all it can.
failed=0
record() {
  local tag=$1
  shift
  local out err line
  out=$(mktemp)
  err=$(mktemp)
  if "$@" >"$out" 2>"$err"; then
    cat "$err" >&2
    line=$(tail -n 1 "$out")
    "$PYTHON" -c 'import json, sys; v = json.loads(sys.argv[2]); v["run"] = sys.argv[1]; print(json.dumps(v))' \
      "$tag" "$line" >>"$jsonl"
    say "$tag: $line"
  else
    cat "$err" >&2
    failed=1
    "$PYTHON" -c 'import json, sys; print(json.dumps({"run": sys.argv[1], "error": sys.argv[2]}))' \
      "$tag" "$(tail -n 5 "$err")" >>"$jsonl"
    say "$tag FAILED: $*"
  fi
  rm -f "$out" "$err"
}

say "sanity: the binary starts and runs one step on $DEVICE"
record sanity "$bin" bench "${dev_flags[@]}" --depth 1 --base-width 4 --size 32 --batch 2 --steps 1 --warmup 1

if [ -f "$kit/sca-train-tests.gz" ] && [ "$DEVICE" = cuda ]; then
  # The cuda build's GPU tests (`cargo xtask cuda kit --tests`): cuDNN's
  # convolutions against the host kernels, values and gradients.
  say "GPU tests: sca-train-tests gpu_ -> $out/tests.txt"
  tests_bin=$(mktemp)
  gunzip -c "$kit/sca-train-tests.gz" >"$tests_bin"
  chmod +x "$tests_bin"
  if "$tests_bin" gpu_ --test-threads 1 >"$out/tests.txt" 2>&1; then
    say "GPU tests: $(grep -m1 '^test result' "$out/tests.txt")"
  else
    failed=1
    say "GPU tests FAILED: $(grep -m1 '^test result' "$out/tests.txt" || tail -n 3 "$out/tests.txt")"
  fi
  rm -f "$tests_bin"
fi

say "loss trace: $TRACE_STEPS steps, ${TRACE_SIZE}x$TRACE_SIZE, batch $BATCH, on the CPU (host kernels) and on $DEVICE"
trace=(bench --depth "$DEPTH" --base-width "$WIDTH" --size "$TRACE_SIZE" --batch "$BATCH" --steps 0 --trace "$TRACE_STEPS")
record trace-host "$bin" "${trace[@]}" --device cpu
record trace-device "$bin" "${trace[@]}" "${dev_flags[@]}"
if [ "$DEVICE" = cuda ]; then
  # bf16 convolutions (train.precision = "bf16") against the same CPU trace,
  # and with bf16 saved activations (SCA_BF16_SAVED=bf16).
  record trace-device-bf16 "$bin" "${trace[@]}" "${dev_flags[@]}" --precision bf16
  record trace-device-bf16-saved env SCA_BF16_SAVED=bf16 "$bin" "${trace[@]}" "${dev_flags[@]}" --precision bf16
fi

say "throughput: ${SIZE}x$SIZE, batch $BATCH, $STEPS timed steps after $WARMUP, $ROUNDS rounds"
pydev=$DEVICE
for round in $(seq 1 "$ROUNDS"); do
  record "sca-train-$round" "$bin" bench "${dev_flags[@]}" --depth "$DEPTH" --base-width "$WIDTH" \
    --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP"
  if [ "$DEVICE" = cuda ]; then
    record "sca-train-bf16-$round" "$bin" bench "${dev_flags[@]}" --depth "$DEPTH" --base-width "$WIDTH" \
      --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --precision bf16
    record "sca-train-bf16-saved-$round" env SCA_BF16_SAVED=bf16 "$bin" bench "${dev_flags[@]}" --depth "$DEPTH" \
      --base-width "$WIDTH" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --precision bf16
    record "sca-train-bf16-saved-pool-$round" env SCA_BF16_SAVED=bf16 SCA_CUDA_BUFFERS=pool "$bin" bench \
      "${dev_flags[@]}" --depth "$DEPTH" --base-width "$WIDTH" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" \
      --warmup "$WARMUP" --precision bf16
  fi
  if [ "$round" = 1 ] && [ "$DEVICE" = cuda ] && [ "${IM2COL:-1}" = 1 ]; then
    # The same, on dfdx's im2col convolutions (cuDNN off): what cuDNN changed.
    record "sca-train-im2col-$round" env SCA_CUDNN=0 "$bin" bench "${dev_flags[@]}" --depth "$DEPTH" \
      --base-width "$WIDTH" --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP"
  fi
  for amp in none bf16; do
    record "pytorch-$amp-$round" "$PYTHON" "$here/unet_reference.py" --device "$pydev" --amp "$amp" \
      --depth "$DEPTH" --base-width "$WIDTH" --size "$SIZE" --batch "$BATCH" \
      --steps "$STEPS" --warmup "$WARMUP" --threads "$(nproc)"
  done
done
# Where a step's GPU time goes: every kernel's duration over two timed steps
# at the timed size, summed per kernel name by Nsight Compute (one replay
# pass: the duration metric alone). `sca-train bench` opens the profiler's
# range around its timed steps only, so the warm-up's one-off work (NVRTC,
# cuDNN's algorithm search) is not in it; the first line says so, for
# `cargo xtask bench gpu`. Bounded and never fatal: it informs the next
# optimisation, it is not a measurement the notes report.
if [ "$DEVICE" = cuda ] && [ "${PROFILE:-1}" = 1 ] && command -v ncu >/dev/null; then
  say "profile: kernel times of two steps (ncu, at most ${PROFILE_TIMEOUT:-150} s) -> $out/ncu.txt"
  {
    echo "gpu.sh: profiled range: timed steps"
    timeout "${PROFILE_TIMEOUT:-150}" ncu --profile-from-start off --metrics gpu__time_duration.sum \
      --print-summary per-kernel "$bin" bench --device cuda --depth "$DEPTH" --base-width "$WIDTH" \
      --size "$SIZE" --batch "$BATCH" --steps 2 --warmup 2 --precision "${PROFILE_PRECISION:-fp32}" 2>&1
  } >"$out/ncu.txt" || say "profile did not finish (see $out/ncu.txt); measurements unaffected"
fi
if [ "$failed" = 1 ]; then
  say "done, with failures (see the error lines in $jsonl)"
  exit 1
fi
say "done: $jsonl"
