#!/usr/bin/env bash
# The main job: install, precompute the embedded default run if it is not complete, then start the app.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m precompute --config precompute/configs/fmnist.toml
if [ -f app.py ]; then
  exec .venv/bin/python -m app_ui.launch --server.headless true "$@"  # = streamlit run app.py, imports first
else
  echo "precompute finished: data/runs/fmnist (the app lands with the app issue)"
fi
