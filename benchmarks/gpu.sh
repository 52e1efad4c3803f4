#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with CUDA (results under ${OUT:-benchmarks/results/gpu}):
#   the default run's precompute end to end (stage times in its manifest), the CUDA test of the custom-model
#   path, and extraction throughput of InceptionV3 and VGG-16 (fp32 and bf16).
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}; mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
SECONDS=0
$py -m precompute --config precompute/configs/fmnist.toml --no-progress --set=runs_dir="'data/runs-gpu'" \
  --set=name="'fmnist-gpu'" 2>&1 | tail -40 | tee "$out/precompute.log"
echo "precompute wall: ${SECONDS} s" | tee -a "$out/precompute.log"
cp data/runs-gpu/fmnist-gpu/manifest.json "$out/manifest.json" 2>/dev/null
cp data/runs-gpu/fmnist-gpu/report.md "$out/report.md" 2>/dev/null
$py -m pytest -q -p no:cacheprovider tests/test_imagenet_scale.py -k cuda 2>&1 | tail -5 | tee "$out/cuda_test.log"
$py -m benchmarks.extraction --out "$out" 2>&1 | tail -4
$py -m benchmarks.extraction --amp --out "$out/amp" 2>&1 | tail -4; mv "$out/amp/extraction.json" "$out/extraction_amp.json"
