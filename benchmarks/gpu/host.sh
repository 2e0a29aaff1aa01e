#!/usr/bin/env bash
# Command 2 on the GPU test host (see benchmarks/gpu/README.md), sent with `.gpu/part2` right after
# command 1 parked part 1 in /tmp/w. Unpacks vLLM 0.26.0 and the weightless 7B-shaped checkpoint,
# then runs the side-by-side; results go to $OUT (gpu.json, gpu.md). Extra arguments go to
# `python -m benchmarks.gpu` (e.g. --sides callgate-1,vllm-N for a second run).
set -u
bash .gpu/part2/host-setup.sh /tmp/w || exit $?
export PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 \
  PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python3 -m benchmarks.gpu --model /tmp/w/model --out "${OUT:-/tmp/gpu-out}" "$@"
