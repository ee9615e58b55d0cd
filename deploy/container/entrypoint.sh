#!/usr/bin/env bash
# Build the model repository for the hardware at hand, then run tritonserver on it.
#
# Inputs (environment):
#   ESCNET_RUNTIME      auto (default: tensorrt where TensorRT and plans are there, else
#                       onnxruntime_onnx), onnxruntime_onnx, tensorrt or onnxruntime
#   ESCNET_ACCELERATOR  onnxruntime_onnx only: tensorrt (default), cuda or cpu
#   ESCNET_ONNX_DIR     the exported graphs (a mounted volume; default /artifacts/onnx)
#   ESCNET_REPOSITORY   where the repository is written (default /models)
#   ESCNET_ENGINE_CACHE the TensorRT execution provider's engine cache (default /artifacts/trt_cache)
set -euo pipefail
runtime="${ESCNET_RUNTIME:-auto}"
accelerator="${ESCNET_ACCELERATOR:-tensorrt}"
onnx_dir="${ESCNET_ONNX_DIR:-/artifacts/onnx}"
repository="${ESCNET_REPOSITORY:-/models}"
engine_cache="${ESCNET_ENGINE_CACHE:-/artifacts/trt_cache}"

if [ "$runtime" = "auto" ]; then
    if nvidia-smi -L > /dev/null 2>&1; then
        # Plans are tied to the TensorRT version and GPU they were built on: use them only when
        # every one passes its check on this machine, else the onnxruntime backend on the GPU.
        if python3 -m escnet_export.engines.build --check --repository "$repository" > /dev/null 2>&1; then
            runtime=tensorrt
        else
            runtime=onnxruntime_onnx
        fi
    else
        runtime=onnxruntime_onnx
        accelerator=cpu
    fi
fi
echo "escnet-entrypoint: runtime $runtime (accelerator $accelerator), graphs $onnx_dir -> $repository"
mkdir -p "$engine_cache"
python3 -m escnet_export.triton_serving.repository \
    --repository "$repository" --onnx-dir "$onnx_dir" --runtime "$runtime" \
    --accelerator "$accelerator" --engine-cache "$engine_cache"
if [ "$runtime" = "tensorrt" ]; then
    python3 -m escnet_export.engines.build --check --repository "$repository"
fi
# The same flags as the project's launcher (export/triton_serving/server.py, SERVER_FLAGS).
exec tritonserver --model-repository="$repository" \
    --model-control-mode=explicit --load-model='*' --strict-readiness=true --exit-on-error=true \
    --disable-auto-complete-config --log-verbose=0 "$@"
