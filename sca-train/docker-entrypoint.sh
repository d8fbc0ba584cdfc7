#!/bin/sh
# The training image's entrypoint: `docker run IMAGE train` runs sca-train.
#
# sca-train built with `--features cuda` links the CUDA driver library
# libcuda.so.1, which a GPU host's container runtime mounts into the
# container. Without one (a SageMaker CPU instance, `docker run` without
# `--gpus`) the dynamic loader would refuse to start it, so the CUDA toolkit's
# link stub stands in: its functions fail, sca-train starts, and
# SCA_DEVICE=cpu (the default) or auto trains on the CPU. The stub is added
# only when no real libcuda.so.1 can be found: it must never shadow the driver.
has_driver() {
  ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' && return 0
  old_ifs=$IFS
  IFS=:
  for dir in ${LD_LIBRARY_PATH:-}; do
    if [ -n "$dir" ] && [ -e "$dir/libcuda.so.1" ]; then
      IFS=$old_ifs
      return 0
    fi
  done
  IFS=$old_ifs
  return 1
}
if ! has_driver; then
  LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}${SCA_CUDA_STUB_DIR:-/opt/sca-train/cuda-stub}"
  export LD_LIBRARY_PATH
fi
# exec: sca-train becomes PID 1 and receives SageMaker's SIGTERM itself.
exec "${SCA_TRAIN_BIN:-/usr/local/bin/sca-train}" "$@"
