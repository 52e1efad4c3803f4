#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with CUDA (results under ${OUT:-benchmarks/results/gpu}):
#   exact kNN search on the GPU against the CPU paths (benchmarks.gpu_search), extraction throughput of
#   InceptionV3 and VGG-16 (fp32 and bf16), the CUDA tests, and the default run's precompute end to end
#   (stage times in its manifest).
#   bash benchmarks/gpu.sh
# Packages missing there travel as wheels in .whl/ (installed to /tmp/site), the Fashion-MNIST files in
# data/datasets/FashionMNIST/raw/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}; mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi -L | tee "$out/gpu.txt"
$py -c "import torch, numpy, faiss; print('torch', torch.__version__, 'numpy', numpy.__version__, 'faiss', faiss.__version__)" | tee -a "$out/gpu.txt"
timeout 120 $py -m benchmarks.gpu_search --out "$out" 2>&1 | tail -8
timeout 50 $py -m benchmarks.extraction --out "$out" 2>&1 | tail -3
timeout 50 $py -m benchmarks.extraction --amp --out "$out/amp" 2>&1 | tail -3; mv "$out/amp/extraction.json" "$out/extraction_amp.json"; rmdir "$out/amp"
timeout 90 $py -m pytest -q -p no:cacheprovider tests/core/knn/test_torch_search.py tests/core/models/test_imagenet_scale.py -k cuda 2>&1 | tail -5 | tee "$out/cuda_test.log"
SECONDS=0
timeout ${PRECOMPUTE_TIMEOUT:-270} $py -m precompute --config precompute/configs/fmnist.toml --no-progress \
  --set=runs_dir="'data/runs-gpu'" --set=name="'fmnist-gpu'" 2>&1 | tail -30 | tee "$out/precompute.log"
echo "precompute wall: ${SECONDS} s" | tee -a "$out/precompute.log"
cp data/runs-gpu/fmnist-gpu/manifest.json "$out/manifest.json" 2>/dev/null
cp data/runs-gpu/fmnist-gpu/report.md "$out/report.md" 2>/dev/null
